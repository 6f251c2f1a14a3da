// matmul_tiled.wgsl: block-tiled GEMM in workgroup memory for GPU adapters, batched and
// split-K, and the same tiles as implicit-GEMM convolutions (NCHW, any stride). f32.
//
//   C[b][m, n] = act( sum_{k in K} opA(b, m, k) * opB(b, k, n) + bias )   m < M, n < N
//
// MODE (override) says what opA, opB and the store of C are:
//   0 matmul:   operands addressed by strides with a two-level batch (views of a larger
//               tensor, e.g. a head of attention's permuted q, k, v, read in place):
//                 opA = a[a0 + m*a_m + k*a_k],  opB = b[b0 + k*b_k + n*b_n],
//                 C[b][m, n] at c[c0 + m*c_m + n],
//                 a0 = a_base + (b / a_split) * a_batch + (b % a_split) * a_inner
//               and likewise b0 (b_), c0 (c_). A split of 0 or 1 is one level
//               (b * a_batch); b_batch 0 shares B across the batch. Contiguous operands:
//               A [M, K] a_m = K, a_k = 1 (stored [K, M]: a_m = 1, a_k = M), likewise B,
//               c_m = N, a_batch = M*K, b_batch = N*K, c_batch = M*N.
//   1 conv2d forward, per image b: M = CO, N = OH*OW, K = CI*KH*KW,
//               opA = w[m*K + k], opB = x[b, ci, oy*S + ky - PH, ox*S + kx - PW] (0 outside),
//               k = (ci, ky, kx), n = (oy, ox); y[b] = C[b], bias per row (channel).
//   2 conv2d backward_input, per image b: M = CI, N = H*W, K = CO*KH*KW, k = (co, ky, kx),
//               opA = w[co, m, ky, kx], opB = dy[b, co, (iy + PH - ky) / S, (ix + PW - kx) / S]
//               where that divides and lands inside dy, else 0; dx[b] = C[b].
//   3 conv2d backward_weight, one batch: M = CO, N = CI*KH*KW + 1, K = B*OH*OW, k = (b, oy, ox),
//               opA = dy[b, m, oy, ox], opB = x[b, ci, oy*S + ky - PH, ox*S + kx - PW] for
//               n = (ci, ky, kx) < CI*KH*KW and 1 for the last column (so it sums dbias).
//               Split s (images s*chunk..) writes part[s] = [dweight CO*CI*KH*KW, dbias CO]
//               at c[s*c_part + ...].
//
// Split-K: workgroup z = split * batch + b; split s sums k in [s*k_chunk, min(K, (s+1)*k_chunk))
// and, with c_part != 0, writes its raw sums contiguous to c[s*c_part + (b*M + m)*N + n]
// (no epilogue); matmul_split_reduce then adds the splits in order 0, 1, ... (deterministic,
// no atomics), adds the bias, applies ReLU and stores C[b][m, n] through C's strides.
//
// Bindings (group 0):
//   0 uniform  Params (below)         flags: 1 load A m-fast (its m stride the smaller),
//                                     2 load B k-fast, 4 bias per column, 8 ReLU,
//                                     16 bias per row
//   1 storage read        a     : array<f32>   (matmul_split_reduce: the partial sums)
//   2 storage read        b     : array<f32>   (matmul_split_reduce: unused)
//   3 storage read        bias  : array<f32>   [N] or [M] (any buffer when no bias flag)
//   4 storage read_write  c     : array<f32>   (matmul: product b's [M, N] rows c_m apart)
//
// Tiling: a workgroup computes a BM x BN block of C with WG = (BM/TM) * (BN/TN) invocations.
// Each K step of BK stages A as As[k][m] and B as Bs[k][n] in workgroup memory with rows
// padded by one float (stride BM+1, BN+1: a column walk hits 32 different banks), loaded
// so that neighbouring invocations read neighbouring addresses of the operand's contiguous
// dimension. Invocation (tx, ty) holds a TM x TN register tile of rows ty + i*(BM/TM) and
// columns tx + j*(BN/TN) (so reads of As/Bs and stores of C are unit-stride across a warp),
// accumulated in a private array indexed by loops of override-constant trip counts, which
// the driver unrolls to constant indices. FIT (override) drops every bounds check when
// M % BM == N % BN == k_chunk % BK == K % BK == 0 (MODE 0 only); otherwise loads outside
// the operand read 0 and stores outside C are skipped.
//
// Dispatch: matmul_tiled (ceil(N / BN), ceil(M / BM), batch * splits) workgroups of WG;
// matmul_split_reduce grid_1d over batch*M*N invocations of 256.
// Overridable: BM, BN (<= 128), BK (<= 32), TM, TN (<= 8), WG, FIT, MODE.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    batch: u32,
    splits: u32,
    k_chunk: u32,
    c_part: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    a_base: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    pad_h: u32,
    pad_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    b_base: u32,
    a_m: u32,
    a_k: u32,
    a_split: u32,
    a_inner: u32,
    b_k: u32,
    b_n: u32,
    b_split: u32,
    b_inner: u32,
    c_base: u32,
    c_m: u32,
    c_split: u32,
    c_inner: u32,
}

const A_M_FAST: u32 = 1u;
const B_K_FAST: u32 = 2u;
const BIAS: u32 = 4u;
const RELU: u32 = 8u;
const BIAS_ROW: u32 = 16u;

const MAX_T: u32 = 8u;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override TM: u32 = 4u;
override TN: u32 = 4u;
override WG: u32 = 256u;
override FIT: bool = false;
override MODE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> As: array<f32, BK * (BM + 1u)>;
var<workgroup> Bs: array<f32, BK * (BN + 1u)>;

// Offset of product z in a two-level batch: (z / split) * outer + (z % split) * inner.
fn batch_at(z: u32, split: u32, outer: u32, inner: u32) -> u32 {
    let s = max(split, 1u);
    return (z / s) * outer + (z % s) * inner;
}

// x[img, ci, iy, ix] for a conv tap, 0 outside the image (padding).
fn x_tap(img: u32, ci: u32, oy: u32, ox: u32, ky: u32, kx: u32) -> f32 {
    let iy = i32(oy * p.stride + ky) - i32(p.pad_h);
    let ix = i32(ox * p.stride + kx) - i32(p.pad_w);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return b[((img * p.c_in + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

// opA(m, k) of the product whose A starts at a0; k_end bounds this split's share of K.
fn load_a(a0: u32, m: u32, k: u32, k_end: u32) -> f32 {
    if (!FIT && (m >= p.m || k >= k_end)) {
        return 0.0;
    }
    if (MODE == 2u) {
        let kk = p.kh * p.kw;
        let co = k / kk;
        return a[(co * p.c_in + m) * kk + (k - co * kk)];
    }
    if (MODE == 3u) {
        let ohw = p.out_h * p.out_w;
        let img = k / ohw;
        return a[(img * p.c_out + m) * ohw + (k - img * ohw)];
    }
    return a[a0 + m * p.a_m + k * p.a_k];
}

// opB(k, n) of product bi, whose B (MODE 0) starts at b0.
fn load_b(bi: u32, b0: u32, k: u32, n: u32, k_end: u32) -> f32 {
    if (!FIT && (n >= p.n || k >= k_end)) {
        return 0.0;
    }
    if (MODE == 1u) {
        let kk = p.kh * p.kw;
        let ci = k / kk;
        let r = k - ci * kk;
        let oy = n / p.out_w;
        return x_tap(bi, ci, oy, n - oy * p.out_w, r / p.kw, r % p.kw);
    }
    if (MODE == 2u) {
        let kk = p.kh * p.kw;
        let co = k / kk;
        let r = k - co * kk;
        let ky = r / p.kw;
        let kx = r - ky * p.kw;
        let iy = n / p.w;
        let ix = n - iy * p.w;
        let ty = i32(iy + p.pad_h) - i32(ky);
        let tx = i32(ix + p.pad_w) - i32(kx);
        if (ty < 0 || tx < 0) {
            return 0.0;
        }
        let oy = u32(ty) / p.stride;
        let ox = u32(tx) / p.stride;
        if (oy * p.stride != u32(ty) || ox * p.stride != u32(tx) || oy >= p.out_h || ox >= p.out_w) {
            return 0.0;
        }
        return b[((bi * p.c_out + co) * p.out_h + oy) * p.out_w + ox];
    }
    if (MODE == 3u) {
        let kk = p.kh * p.kw;
        let taps = p.c_in * kk;
        if (n == taps) {
            return 1.0;
        }
        let ohw = p.out_h * p.out_w;
        let img = k / ohw;
        let q = k - img * ohw;
        let oy = q / p.out_w;
        let ci = n / kk;
        let r = n - ci * kk;
        return x_tap(img, ci, oy, q - oy * p.out_w, r / p.kw, r % p.kw);
    }
    return b[b0 + k * p.b_k + n * p.b_n];
}

// C[bi][m, n] at c0 (its product's start), or split's partial sum.
fn store_c(bi: u32, c0: u32, split: u32, m: u32, n: u32, acc: f32) {
    if (!FIT && (m >= p.m || n >= p.n)) {
        return;
    }
    if (MODE == 3u) {
        let taps = p.c_in * p.kh * p.kw;
        let row = split * p.c_part;
        if (n < taps) {
            c[row + m * taps + n] = acc;
        } else {
            c[row + p.c_out * taps + m] = acc;
        }
        return;
    }
    if (p.c_part != 0u) {
        c[split * p.c_part + (bi * p.m + m) * p.n + n] = acc;
        return;
    }
    var v = acc;
    if ((p.flags & BIAS) != 0u) {
        v += bias[n];
    }
    if ((p.flags & BIAS_ROW) != 0u) {
        v += bias[m];
    }
    if ((p.flags & RELU) != 0u) {
        v = max(v, 0.0);
    }
    c[c0 + m * p.c_m + n] = v;
}

@compute @workgroup_size(WG)
fn matmul_tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let bi = wid.z % p.batch;
    let split = wid.z / p.batch;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let cols = BN / TN;  // invocations across a block row
    let rows = BM / TM;
    let tx = lid % cols;
    let ty = lid / cols;
    let a_m_fast = (p.flags & A_M_FAST) != 0u;
    let b_k_fast = (p.flags & B_K_FAST) != 0u;
    let a0 = p.a_base + batch_at(bi, p.a_split, p.a_batch, p.a_inner);
    let b0 = p.b_base + batch_at(bi, p.b_split, p.b_batch, p.b_inner);
    let c0 = p.c_base + batch_at(bi, p.c_split, p.c_batch, p.c_inner);

    var acc: array<f32, 64>;  // MAX_T * MAX_T, row i at acc[i * MAX_T]
    for (var i = 0u; i < TM * MAX_T; i++) {
        acc[i] = 0.0;
    }
    var ar: array<f32, MAX_T>;
    var br: array<f32, MAX_T>;

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var e = lid; e < BM * BK; e += WG) {
            // Neighbouring invocations take neighbouring elements of A's contiguous dimension.
            var mm = e / BK;
            var kk = e % BK;
            if (a_m_fast) {
                mm = e % BM;
                kk = e / BM;
            }
            As[kk * (BM + 1u) + mm] = load_a(a0, m0 + mm, k0 + kk, k_end);
        }
        for (var e = lid; e < BN * BK; e += WG) {
            var nn = e % BN;
            var kk = e / BN;
            if (b_k_fast) {
                nn = e / BK;
                kk = e % BK;
            }
            Bs[kk * (BN + 1u) + nn] = load_b(bi, b0, k0 + kk, n0 + nn, k_end);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < TM; i++) {
                ar[i] = As[kk * (BM + 1u) + ty + i * rows];
            }
            for (var j = 0u; j < TN; j++) {
                br[j] = Bs[kk * (BN + 1u) + tx + j * cols];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * MAX_T + j] = fma(ar[i], br[j], acc[i * MAX_T + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store_c(bi, c0, split, m0 + ty + i * rows, n0 + tx + j * cols, acc[i * MAX_T + j]);
        }
    }
}

// C[b][m, n] = act( sum_{s < splits} part[s * c_part + i] + bias ) for i = (b*M + m)*N + n
// < batch * M * N, summed in split order and stored at c[c0 + m*c_m + n] (c0 as in
// matmul_tiled). part is binding 1 (a).
@compute @workgroup_size(256)
fn matmul_split_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let total = p.batch * p.m * p.n;
    if (i >= total) {
        return;
    }
    var v = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        v += a[s * p.c_part + i];
    }
    let row = i / p.n;  // bi * M + m
    let n = i - row * p.n;
    let bi = row / p.m;
    let m = row - bi * p.m;
    if ((p.flags & BIAS) != 0u) {
        v += bias[n];
    }
    if ((p.flags & BIAS_ROW) != 0u) {
        v += bias[m];
    }
    if ((p.flags & RELU) != 0u) {
        v = max(v, 0.0);
    }
    c[p.c_base + batch_at(bi, p.c_split, p.c_batch, p.c_inner) + m * p.c_m + n] = v;
}
