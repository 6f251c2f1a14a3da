// matmul.wgsl: C = op(A) · op(B) (+ bias) (ReLU), all f32, row-major.
//
//   C[m, n] = act( sum_k opA[m, k] * opB[k, n] + bias[n] )      m < M, n < N, k < K
//   opA[m, k] = A[m*K + k]  (A stored [M, K])   or, transposed, A[k*M + m]  (A stored [K, M])
//   opB[k, n] = B[k*N + n]  (B stored [K, N])   or, transposed, B[n*K + k]  (B stored [N, K])
//
// Batched: workgroup z is the batch index b; A, B and C start at b * a_batch, b * b_batch
// and b * c_batch (b_batch 0 shares B across the batch).
//
// Covers Dense forward (X · W^T + b), dweight (dY^T · X) and dinput (dY · W).
//
// Bindings (group 0):
//   0 uniform  Params { m, n, k, flags, a_batch, b_batch, c_batch }   flags: 1 = transpose A, 2 = transpose B,
//                                                   4 = add bias, 8 = ReLU epilogue
//   1 storage read        a     : array<f32>
//   2 storage read        b     : array<f32>
//   3 storage read        bias  : array<f32>   [N] (any 4-byte buffer when flag 4 is off)
//   4 storage read_write  c     : array<f32>   [M, N]
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
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    _pad: u32,
}

const TRANSPOSE_A: u32 = 1u;
const TRANSPOSE_B: u32 = 2u;
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

@compute @workgroup_size(WG)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let transpose_a = (p.flags & TRANSPOSE_A) != 0u;
    let transpose_b = (p.flags & TRANSPOSE_B) != 0u;
    // opA[m, k] = a[m * a_m + k * a_k];  opB[k, n] = b[k * b_k + n * b_n]
    let a_m = select(p.k, 1u, transpose_a);
    let a_k = select(1u, p.m, transpose_a);
    let b_k = select(p.n, 1u, transpose_b);
    let b_n = select(1u, p.k, transpose_b);

    let m0 = wid.y * TM;
    var a_row: array<u32, MAX_TM>;  // clamped row offsets into a
    var b_col: array<u32, MAX_TN>;  // clamped column offsets into b
    let a0 = wid.z * p.a_batch;
    let b0 = wid.z * p.b_batch;
    let c0 = wid.z * p.c_batch;
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
                c[c0 + m * p.n + n] = v;
            }
        }
    }
}
