// matmul_subgroup.wgsl: C = op(A) · op(B) (+ bias) (ReLU), f32, row-major, for adapters
// with subgroups of at least 8 invocations (llvmpipe/lavapipe: exactly 8).
//
//   C[m, n] = act( sum_k opA[m, k] * opB[k, n] + bias[n] )
//   opA[m, k] = A[m*K + k], or with TRANSPOSE_A A[k*M + m];  opB[k, n] = B[k*N + n], or
//   with TRANSPOSE_B B[n*K + k].  (The same contract as matmul.wgsl.)
//
// Why a second matmul: on CPU adapters every per-invocation buffer load costs far more than
// arithmetic, and subgroup broadcasts are cheap register shuffles. Invocation n of a
// workgroup owns column n and 16 rows m0..m0+16 (m0 = workgroup_id.y * 16). Per k, lane l of
// each subgroup loads opA[m0 + l, k] and opA[m0 + 8 + l, k]; subgroupBroadcast hands those
// 16 values to every lane, so each invocation does 3 loads for 16 multiply-adds (the
// register-tile kernel needs 2 loads per 4). Lanes 0..7 must exist in every subgroup, hence
// the minimum subgroup size of 8. Rows and columns past the edge are clamped for loading and
// skipped for storing.
//
// Bindings (group 0), as matmul.wgsl:
//   0 uniform  Params { m, n, k, flags }   flags: 4 = add bias, 8 = ReLU epilogue
//   1 storage read a   2 storage read b   3 storage read bias [N]   4 storage read_write c [M, N]
//
// Dispatch: (ceil(N / WG), ceil(M / 16), 1) workgroups of WG invocations (WG a multiple of 8).
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
    let n = wid.x * WG + lid.x;
    let n_load = min(n, p.n - 1u);
    let m0 = wid.y * 16u;
    // Lanes 0..7 load rows m0 + lane and m0 + 8 + lane; other lanes' loads go unused.
    let row_lo = min(m0 + (lane & 7u), p.m - 1u);
    let row_hi = min(m0 + 8u + (lane & 7u), p.m - 1u);
    var c0 = 0.0;
    var c1 = 0.0;
    var c2 = 0.0;
    var c3 = 0.0;
    var c4 = 0.0;
    var c5 = 0.0;
    var c6 = 0.0;
    var c7 = 0.0;
    var c8 = 0.0;
    var c9 = 0.0;
    var c10 = 0.0;
    var c11 = 0.0;
    var c12 = 0.0;
    var c13 = 0.0;
    var c14 = 0.0;
    var c15 = 0.0;
    for (var k = 0u; k < p.k; k++) {
        let bv = load_b(k, n_load);
        let lo = load_a(row_lo, k);
        let hi = load_a(row_hi, k);
        c0 = fma(subgroupBroadcast(lo, 0u), bv, c0);
        c1 = fma(subgroupBroadcast(lo, 1u), bv, c1);
        c2 = fma(subgroupBroadcast(lo, 2u), bv, c2);
        c3 = fma(subgroupBroadcast(lo, 3u), bv, c3);
        c4 = fma(subgroupBroadcast(lo, 4u), bv, c4);
        c5 = fma(subgroupBroadcast(lo, 5u), bv, c5);
        c6 = fma(subgroupBroadcast(lo, 6u), bv, c6);
        c7 = fma(subgroupBroadcast(lo, 7u), bv, c7);
        c8 = fma(subgroupBroadcast(hi, 0u), bv, c8);
        c9 = fma(subgroupBroadcast(hi, 1u), bv, c9);
        c10 = fma(subgroupBroadcast(hi, 2u), bv, c10);
        c11 = fma(subgroupBroadcast(hi, 3u), bv, c11);
        c12 = fma(subgroupBroadcast(hi, 4u), bv, c12);
        c13 = fma(subgroupBroadcast(hi, 5u), bv, c13);
        c14 = fma(subgroupBroadcast(hi, 6u), bv, c14);
        c15 = fma(subgroupBroadcast(hi, 7u), bv, c15);
    }
    store(m0 + 0u, n, c0);
    store(m0 + 1u, n, c1);
    store(m0 + 2u, n, c2);
    store(m0 + 3u, n, c3);
    store(m0 + 4u, n, c4);
    store(m0 + 5u, n, c5);
    store(m0 + 6u, n, c6);
    store(m0 + 7u, n, c7);
    store(m0 + 8u, n, c8);
    store(m0 + 9u, n, c9);
    store(m0 + 10u, n, c10);
    store(m0 + 11u, n, c11);
    store(m0 + 12u, n, c12);
    store(m0 + 13u, n, c13);
    store(m0 + 14u, n, c14);
    store(m0 + 15u, n, c15);
}
