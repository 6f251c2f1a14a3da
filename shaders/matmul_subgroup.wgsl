// matmul_subgroup.wgsl: C = op(A) · op(B) (+ bias) (ReLU), f32, row-major, for adapters
// with subgroups of at least 8 invocations (llvmpipe/lavapipe: exactly 8).
//
//   C[m, n] = act( sum_k opA[m, k] * opB[k, n] + bias[n] )
//   opA[m, k] = A[m*K + k], or with TRANSPOSE_A A[k*M + m];  opB[k, n] = B[k*N + n], or
//   with TRANSPOSE_B B[n*K + k].  (The same contract as matmul.wgsl.)
//
// Why a second matmul: on CPU adapters every per-invocation buffer load costs far more than
// arithmetic, and subgroup broadcasts are cheap register shuffles. Each invocation owns a
// 32 x 2 block of C: rows m0 + i (m0 = workgroup_id.y * 32, i < 32) and columns
// n_j = (workgroup_id.x * 2 + j) * WG + local_id.x (j < 2). Per k, lane l of each subgroup
// loads opA[m0 + 8g + l, k] for g < 4, and subgroupBroadcast hands those 32 values to every
// lane: 6 loads for 64 multiply-adds (the 4 x 4 register-tile kernel needs 8 per 16). The
// 64 accumulators are spelled out, not a private array: llvmpipe keeps dynamically indexed
// private arrays in memory. Lanes 0..7 must exist in every subgroup, hence the minimum
// subgroup size of 8. Rows and columns past the edge are clamped for loading and skipped for
// storing. On lavapipe (2 cores) 32 x 2 beat 16 x 1, 16 x 2, 16 x 4, 32 x 1, 32 x 3, 32 x 4,
// 48 x 2 and 64 x 2 on the seed CNN's Dense shapes (~4 GFLOP/s against ~1 to 3).
//
// Bindings (group 0), as matmul.wgsl:
//   0 uniform  Params { m, n, k, flags }   flags: 4 = add bias, 8 = ReLU epilogue
//   1 storage read a   2 storage read b   3 storage read bias [N]   4 storage read_write c [M, N]
//
// Dispatch: (ceil(N / (2 * WG)), ceil(M / 32), 1) workgroups of WG invocations (WG a multiple of 8).
// Overridable: WG, TRANSPOSE_A, TRANSPOSE_B.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
}

const BIAS: u32 = 4u;
const RELU: u32 = 8u;

override WG: u32 = 64u;
override TRANSPOSE_A: bool = false;
override TRANSPOSE_B: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(m: u32, k: u32) -> f32 {
    if (TRANSPOSE_A) {
        return a[k * p.m + m];
    }
    return a[m * p.k + k];
}

fn load_b(k: u32, n: u32) -> f32 {
    if (TRANSPOSE_B) {
        return b[n * p.k + k];
    }
    return b[k * p.n + n];
}

fn store(m: u32, n: u32, value: f32) {
    if (m < p.m && n < p.n) {
        var v = value;
        if ((p.flags & BIAS) != 0u) {
            v += bias[n];
        }
        if ((p.flags & RELU) != 0u) {
            v = max(v, 0.0);
        }
        c[m * p.n + n] = v;
    }
}

@compute @workgroup_size(WG)
fn matmul_subgroup(@builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * 32u;
    let n0 = (wid.x * 2u) * WG + lid.x;
    let n1 = n0 + WG;
    let n0_load = min(n0, p.n - 1u);
    let n1_load = min(n1, p.n - 1u);
    // Lanes 0..7 load rows m0 + 8g + lane; other lanes' loads go unused.
    let row0 = min(m0 + 0u + (lane & 7u), p.m - 1u);
    let row1 = min(m0 + 8u + (lane & 7u), p.m - 1u);
    let row2 = min(m0 + 16u + (lane & 7u), p.m - 1u);
    let row3 = min(m0 + 24u + (lane & 7u), p.m - 1u);
    var c0_0 = 0.0;
    var c0_1 = 0.0;
    var c1_0 = 0.0;
    var c1_1 = 0.0;
    var c2_0 = 0.0;
    var c2_1 = 0.0;
    var c3_0 = 0.0;
    var c3_1 = 0.0;
    var c4_0 = 0.0;
    var c4_1 = 0.0;
    var c5_0 = 0.0;
    var c5_1 = 0.0;
    var c6_0 = 0.0;
    var c6_1 = 0.0;
    var c7_0 = 0.0;
    var c7_1 = 0.0;
    var c8_0 = 0.0;
    var c8_1 = 0.0;
    var c9_0 = 0.0;
    var c9_1 = 0.0;
    var c10_0 = 0.0;
    var c10_1 = 0.0;
    var c11_0 = 0.0;
    var c11_1 = 0.0;
    var c12_0 = 0.0;
    var c12_1 = 0.0;
    var c13_0 = 0.0;
    var c13_1 = 0.0;
    var c14_0 = 0.0;
    var c14_1 = 0.0;
    var c15_0 = 0.0;
    var c15_1 = 0.0;
    var c16_0 = 0.0;
    var c16_1 = 0.0;
    var c17_0 = 0.0;
    var c17_1 = 0.0;
    var c18_0 = 0.0;
    var c18_1 = 0.0;
    var c19_0 = 0.0;
    var c19_1 = 0.0;
    var c20_0 = 0.0;
    var c20_1 = 0.0;
    var c21_0 = 0.0;
    var c21_1 = 0.0;
    var c22_0 = 0.0;
    var c22_1 = 0.0;
    var c23_0 = 0.0;
    var c23_1 = 0.0;
    var c24_0 = 0.0;
    var c24_1 = 0.0;
    var c25_0 = 0.0;
    var c25_1 = 0.0;
    var c26_0 = 0.0;
    var c26_1 = 0.0;
    var c27_0 = 0.0;
    var c27_1 = 0.0;
    var c28_0 = 0.0;
    var c28_1 = 0.0;
    var c29_0 = 0.0;
    var c29_1 = 0.0;
    var c30_0 = 0.0;
    var c30_1 = 0.0;
    var c31_0 = 0.0;
    var c31_1 = 0.0;
    for (var k = 0u; k < p.k; k++) {
        let b0 = load_b(k, n0_load);
        let b1 = load_b(k, n1_load);
        let a0 = load_a(row0, k);
        let a1 = load_a(row1, k);
        let a2 = load_a(row2, k);
        let a3 = load_a(row3, k);
        let s0 = subgroupBroadcast(a0, 0u);
        c0_0 = fma(s0, b0, c0_0);
        c0_1 = fma(s0, b1, c0_1);
        let s1 = subgroupBroadcast(a0, 1u);
        c1_0 = fma(s1, b0, c1_0);
        c1_1 = fma(s1, b1, c1_1);
        let s2 = subgroupBroadcast(a0, 2u);
        c2_0 = fma(s2, b0, c2_0);
        c2_1 = fma(s2, b1, c2_1);
        let s3 = subgroupBroadcast(a0, 3u);
        c3_0 = fma(s3, b0, c3_0);
        c3_1 = fma(s3, b1, c3_1);
        let s4 = subgroupBroadcast(a0, 4u);
        c4_0 = fma(s4, b0, c4_0);
        c4_1 = fma(s4, b1, c4_1);
        let s5 = subgroupBroadcast(a0, 5u);
        c5_0 = fma(s5, b0, c5_0);
        c5_1 = fma(s5, b1, c5_1);
        let s6 = subgroupBroadcast(a0, 6u);
        c6_0 = fma(s6, b0, c6_0);
        c6_1 = fma(s6, b1, c6_1);
        let s7 = subgroupBroadcast(a0, 7u);
        c7_0 = fma(s7, b0, c7_0);
        c7_1 = fma(s7, b1, c7_1);
        let s8 = subgroupBroadcast(a1, 0u);
        c8_0 = fma(s8, b0, c8_0);
        c8_1 = fma(s8, b1, c8_1);
        let s9 = subgroupBroadcast(a1, 1u);
        c9_0 = fma(s9, b0, c9_0);
        c9_1 = fma(s9, b1, c9_1);
        let s10 = subgroupBroadcast(a1, 2u);
        c10_0 = fma(s10, b0, c10_0);
        c10_1 = fma(s10, b1, c10_1);
        let s11 = subgroupBroadcast(a1, 3u);
        c11_0 = fma(s11, b0, c11_0);
        c11_1 = fma(s11, b1, c11_1);
        let s12 = subgroupBroadcast(a1, 4u);
        c12_0 = fma(s12, b0, c12_0);
        c12_1 = fma(s12, b1, c12_1);
        let s13 = subgroupBroadcast(a1, 5u);
        c13_0 = fma(s13, b0, c13_0);
        c13_1 = fma(s13, b1, c13_1);
        let s14 = subgroupBroadcast(a1, 6u);
        c14_0 = fma(s14, b0, c14_0);
        c14_1 = fma(s14, b1, c14_1);
        let s15 = subgroupBroadcast(a1, 7u);
        c15_0 = fma(s15, b0, c15_0);
        c15_1 = fma(s15, b1, c15_1);
        let s16 = subgroupBroadcast(a2, 0u);
        c16_0 = fma(s16, b0, c16_0);
        c16_1 = fma(s16, b1, c16_1);
        let s17 = subgroupBroadcast(a2, 1u);
        c17_0 = fma(s17, b0, c17_0);
        c17_1 = fma(s17, b1, c17_1);
        let s18 = subgroupBroadcast(a2, 2u);
        c18_0 = fma(s18, b0, c18_0);
        c18_1 = fma(s18, b1, c18_1);
        let s19 = subgroupBroadcast(a2, 3u);
        c19_0 = fma(s19, b0, c19_0);
        c19_1 = fma(s19, b1, c19_1);
        let s20 = subgroupBroadcast(a2, 4u);
        c20_0 = fma(s20, b0, c20_0);
        c20_1 = fma(s20, b1, c20_1);
        let s21 = subgroupBroadcast(a2, 5u);
        c21_0 = fma(s21, b0, c21_0);
        c21_1 = fma(s21, b1, c21_1);
        let s22 = subgroupBroadcast(a2, 6u);
        c22_0 = fma(s22, b0, c22_0);
        c22_1 = fma(s22, b1, c22_1);
        let s23 = subgroupBroadcast(a2, 7u);
        c23_0 = fma(s23, b0, c23_0);
        c23_1 = fma(s23, b1, c23_1);
        let s24 = subgroupBroadcast(a3, 0u);
        c24_0 = fma(s24, b0, c24_0);
        c24_1 = fma(s24, b1, c24_1);
        let s25 = subgroupBroadcast(a3, 1u);
        c25_0 = fma(s25, b0, c25_0);
        c25_1 = fma(s25, b1, c25_1);
        let s26 = subgroupBroadcast(a3, 2u);
        c26_0 = fma(s26, b0, c26_0);
        c26_1 = fma(s26, b1, c26_1);
        let s27 = subgroupBroadcast(a3, 3u);
        c27_0 = fma(s27, b0, c27_0);
        c27_1 = fma(s27, b1, c27_1);
        let s28 = subgroupBroadcast(a3, 4u);
        c28_0 = fma(s28, b0, c28_0);
        c28_1 = fma(s28, b1, c28_1);
        let s29 = subgroupBroadcast(a3, 5u);
        c29_0 = fma(s29, b0, c29_0);
        c29_1 = fma(s29, b1, c29_1);
        let s30 = subgroupBroadcast(a3, 6u);
        c30_0 = fma(s30, b0, c30_0);
        c30_1 = fma(s30, b1, c30_1);
        let s31 = subgroupBroadcast(a3, 7u);
        c31_0 = fma(s31, b0, c31_0);
        c31_1 = fma(s31, b1, c31_1);
    }
    store(m0 + 0u, n0, c0_0);
    store(m0 + 0u, n1, c0_1);
    store(m0 + 1u, n0, c1_0);
    store(m0 + 1u, n1, c1_1);
    store(m0 + 2u, n0, c2_0);
    store(m0 + 2u, n1, c2_1);
    store(m0 + 3u, n0, c3_0);
    store(m0 + 3u, n1, c3_1);
    store(m0 + 4u, n0, c4_0);
    store(m0 + 4u, n1, c4_1);
    store(m0 + 5u, n0, c5_0);
    store(m0 + 5u, n1, c5_1);
    store(m0 + 6u, n0, c6_0);
    store(m0 + 6u, n1, c6_1);
    store(m0 + 7u, n0, c7_0);
    store(m0 + 7u, n1, c7_1);
    store(m0 + 8u, n0, c8_0);
    store(m0 + 8u, n1, c8_1);
    store(m0 + 9u, n0, c9_0);
    store(m0 + 9u, n1, c9_1);
    store(m0 + 10u, n0, c10_0);
    store(m0 + 10u, n1, c10_1);
    store(m0 + 11u, n0, c11_0);
    store(m0 + 11u, n1, c11_1);
    store(m0 + 12u, n0, c12_0);
    store(m0 + 12u, n1, c12_1);
    store(m0 + 13u, n0, c13_0);
    store(m0 + 13u, n1, c13_1);
    store(m0 + 14u, n0, c14_0);
    store(m0 + 14u, n1, c14_1);
    store(m0 + 15u, n0, c15_0);
    store(m0 + 15u, n1, c15_1);
    store(m0 + 16u, n0, c16_0);
    store(m0 + 16u, n1, c16_1);
    store(m0 + 17u, n0, c17_0);
    store(m0 + 17u, n1, c17_1);
    store(m0 + 18u, n0, c18_0);
    store(m0 + 18u, n1, c18_1);
    store(m0 + 19u, n0, c19_0);
    store(m0 + 19u, n1, c19_1);
    store(m0 + 20u, n0, c20_0);
    store(m0 + 20u, n1, c20_1);
    store(m0 + 21u, n0, c21_0);
    store(m0 + 21u, n1, c21_1);
    store(m0 + 22u, n0, c22_0);
    store(m0 + 22u, n1, c22_1);
    store(m0 + 23u, n0, c23_0);
    store(m0 + 23u, n1, c23_1);
    store(m0 + 24u, n0, c24_0);
    store(m0 + 24u, n1, c24_1);
    store(m0 + 25u, n0, c25_0);
    store(m0 + 25u, n1, c25_1);
    store(m0 + 26u, n0, c26_0);
    store(m0 + 26u, n1, c26_1);
    store(m0 + 27u, n0, c27_0);
    store(m0 + 27u, n1, c27_1);
    store(m0 + 28u, n0, c28_0);
    store(m0 + 28u, n1, c28_1);
    store(m0 + 29u, n0, c29_0);
    store(m0 + 29u, n1, c29_1);
    store(m0 + 30u, n0, c30_0);
    store(m0 + 30u, n1, c30_1);
    store(m0 + 31u, n0, c31_0);
    store(m0 + 31u, n1, c31_1);
}
