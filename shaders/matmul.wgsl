// matmul.wgsl: C = op(A) · op(B) (+ bias) (ReLU), all f32, operands addressed by strides.
//
//   C[c0 + m*c_m + n] = act( sum_k opA[m, k] * opB[k, n] + bias[n] )      m < M, n < N, k < K
//   opA[m, k] = A[a0 + m*a_m + k*a_k],   opB[k, n] = B[b0 + k*b_k + n*b_n]
//   Strides express both layouts of each operand (A stored [M, K]: a_m = K, a_k = 1; stored
//   [K, M]: a_m = 1, a_k = M; likewise B) and views of a larger tensor (a head of attention's
//   permuted q, k, v read in place).
//
// Batched: workgroup z runs product z, a two-level batch:
//   a0 = a_base + (z / a_split) * a_batch + (z % a_split) * a_inner
// and likewise b0 (b_), c0 (c_). A split of 0 or 1 is one level (z * a_batch); b_batch 0
// with split 1 shares B across the batch.
//
// Covers Dense forward (X · W^T + b), dweight (dY^T · X) and dinput (dY · W).
//
// Bindings (group 0):
//   0 uniform  Params (below)   flags: 4 = add bias, 8 = ReLU epilogue
//   1 storage read        a     : array<f32>
//   2 storage read        b     : array<f32>
//   3 storage read        bias  : array<f32>   [N] (any 4-byte buffer when flag 4 is off)
//   4 storage read_write  c     : array<f32>   (product z's [M, N] rows c_m apart)
//
// Register tiling without workgroup memory or barriers (barriers are costly on CPU
// adapters such as lavapipe, where invocations of a workgroup run as coroutines):
// each invocation accumulates a TM x TN block of C in registers. Its TM rows are
// m = workgroup_id.y * TM + i (the same for every invocation of a workgroup, so the A loads
// are uniform), its TN columns are n = (workgroup_id.x * TN + j) * WG + local_id.x, so for
// fixed j neighbouring invocations read neighbouring columns of B.
// Out-of-range rows and columns are clamped for loading and skipped for storing, so the
// inner loop has no branches.
//
// Dispatch: (ceil(N / (WG * TN)), ceil(M / TM), batch) workgroups of WG invocations.
// Overridable: WG (workgroup size), TM <= 8, TN <= 4.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_base: u32,
    a_m: u32,
    a_k: u32,
    a_batch: u32,
    a_split: u32,
    a_inner: u32,
    b_base: u32,
    b_k: u32,
    b_n: u32,
    b_batch: u32,
    b_split: u32,
    b_inner: u32,
    c_base: u32,
    c_m: u32,
    c_batch: u32,
    c_split: u32,
    c_inner: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const BIAS: u32 = 4u;
const RELU: u32 = 8u;

const MAX_TM: u32 = 8u;
const MAX_TN: u32 = 4u;

override WG: u32 = 64u;
override TM: u32 = 4u;
override TN: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Offset of product z in a two-level batch: (z / split) * outer + (z % split) * inner.
fn batch_at(z: u32, split: u32, outer: u32, inner: u32) -> u32 {
    let s = max(split, 1u);
    return (z / s) * outer + (z % s) * inner;
}

@compute @workgroup_size(WG)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let a_m = p.a_m;
    let a_k = p.a_k;
    let b_k = p.b_k;
    let b_n = p.b_n;

    let m0 = wid.y * TM;
    var a_row: array<u32, MAX_TM>;  // clamped row offsets into a
    var b_col: array<u32, MAX_TN>;  // clamped column offsets into b
    let a0 = p.a_base + batch_at(wid.z, p.a_split, p.a_batch, p.a_inner);
    let b0 = p.b_base + batch_at(wid.z, p.b_split, p.b_batch, p.b_inner);
    let c0 = p.c_base + batch_at(wid.z, p.c_split, p.c_batch, p.c_inner);
    for (var i = 0u; i < TM; i++) {
        a_row[i] = a0 + min(m0 + i, p.m - 1u) * a_m;
    }
    for (var j = 0u; j < TN; j++) {
        let n = (wid.x * TN + j) * WG + lid.x;
        b_col[j] = b0 + min(n, p.n - 1u) * b_n;
    }

    var acc: array<f32, 32>;  // MAX_TM * MAX_TN, row i at acc[i * MAX_TN]
    for (var k = 0u; k < p.k; k++) {
        var bv: array<f32, MAX_TN>;
        for (var j = 0u; j < TN; j++) {
            bv[j] = b[k * b_k + b_col[j]];
        }
        for (var i = 0u; i < TM; i++) {
            let av = a[a_row[i] + k * a_k];
            for (var j = 0u; j < TN; j++) {
                acc[i * MAX_TN + j] = fma(av, bv[j], acc[i * MAX_TN + j]);
            }
        }
    }

    for (var i = 0u; i < TM; i++) {
        let m = m0 + i;
        for (var j = 0u; j < TN; j++) {
            let n = (wid.x * TN + j) * WG + lid.x;
            if (m < p.m && n < p.n) {
                var v = acc[i * MAX_TN + j];
                if ((p.flags & BIAS) != 0u) {
                    v += bias[n];
                }
                if ((p.flags & RELU) != 0u) {
                    v = max(v, 0.0);
                }
                c[c0 + m * p.c_m + n] = v;
            }
        }
    }
}
