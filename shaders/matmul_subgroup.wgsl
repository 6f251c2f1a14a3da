// matmul_subgroup.wgsl: one block of C = op(A) · op(B) (+ bias) (ReLU), f32, for adapters
// with subgroups of at least 8 invocations (llvmpipe/lavapipe: exactly 8).
//
//   C[c_base + i*c_m + j] (+)= act( sum_kk opA[i, kk] * opB[kk, j] + bias[bias_base + j] )
//   opA[i, kk] = A[a_base + i*a_m + kk*a_k],   opB[kk, j] = B[b_base + kk*b_k + j*b_n]
//   for i < M, j < N, kk < K of the block. Strides express both layouts of each operand
//   (A stored [M, K]: a_m = K, a_k = 1; stored [K, M]: a_m = 1, a_k = M; likewise B).
//   With ACCUMULATE the block is added to what C holds (K split over several dispatches).
//   matmul_subgroup is batched: workgroup z runs product z, its A starting
//     a_base + (z / a_split) * a_batch + (z % a_split) * a_inner
//   (likewise B and C with b_ and c_): a two-level batch, so that z = b * H + h can read a
//   head's slice of a permuted tensor in place (attention's q, k, v). A split of 0 or 1 is
//   one level (z * a_batch); b_batch 0 with split 1 shares B.
//
// Four entry points share the 32 x 2 register block and differ in where A and B live and
// how they are indexed:
//   matmul_subgroup       A and B in storage buffers (a whole matmul is one block);
//   matmul_window         A and B in 64 KiB uniform-buffer windows, one dispatch per block;
//   conv2d_window         a conv (forward, or input gradient) as an implicit GEMM: A the
//                         weight window, B gathered from a window of images (implicit im2col);
//   conv2d_window_weight  a conv's dweight and dbias partial sums, A = dy, B = x windows.
// (The conv entry points are described below their helpers, at the end of the file.)
// Why windows: on CPU adapters a storage-buffer load runs as a loop over the SIMD lanes with
// two branches per lane (~4 ns a lane-load on lavapipe, 2 cores), a uniform-buffer load is a
// straight gather (~0.4 ns), and subgroup broadcasts are register shuffles. On lavapipe,
// 128 x 128 x 128: ~3.8 GFLOP/s from storage buffers, ~11 from windows.
//
// The block: each invocation owns rows m0 + i (m0 = workgroup_id.y * 32, i < 32) and columns
// n_j = (workgroup_id.x * 2 + j) * WG + local_id.x (j < 2). Per k, lane l of each subgroup
// loads opA[m0 + 8g + l, k] for g < 4 and subgroupBroadcast hands those 32 values to every
// lane: 6 loads for 64 multiply-adds. Accumulators are indexed only by constants (llvmpipe
// keeps dynamically indexed private arrays in memory). Lanes 0..7 must exist in every
// subgroup, hence the minimum subgroup size of 8. Rows and columns past the edge are clamped
// for loading and skipped for storing. 32 x 2 beat 16 x 1 ... 64 x 2 on the seed CNN's
// Dense shapes.
//
// Bindings (group 0):
//   0 uniform Params (below)   flags: 4 = add bias, 8 = ReLU, 32 = accumulate into C,
//                              64 = FLIP, 128 = BIAS_ROW, 256 = DBIAS_COLUMN (conv kernels)
//   1 storage read a   2 storage read b           (matmul_subgroup)
//   5 uniform a_win    6 uniform b_win            (the window and conv kernels;
//                                                  array<vec4<f32>, 4096> each)
//   3 storage read bias   4 storage read_write c  (both)
//
// Dispatch: (ceil(N / (2 * WG)), ceil(M / 32), batch) workgroups of WG invocations (WG a
// multiple of 8; batch 1 for matmul_window and conv2d_window; conv2d_window_weight: slices).
// Overridable: WG.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_base: u32,
    a_m: u32,
    a_k: u32,
    b_base: u32,
    b_k: u32,
    b_n: u32,
    c_base: u32,
    c_m: u32,
    bias_base: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    // The conv entry points only (zero for the matmuls): see their comments.
    c_in: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    pad_h: u32,
    pad_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    a_ci: u32,
    k_rows: u32,
    bias_at: u32,
    // matmul_subgroup's two-level batch (0 or 1 = one level; see the header).
    a_split: u32,
    a_inner: u32,
    b_split: u32,
    b_inner: u32,
    c_split: u32,
    c_inner: u32,
}

const BIAS: u32 = 4u;
const RELU: u32 = 8u;
const ACCUMULATE: u32 = 32u;
const FLIP: u32 = 64u;
const BIAS_ROW: u32 = 128u;
const DBIAS_COLUMN: u32 = 256u;

override WG: u32 = 64u;
// The block's rows, 8, 16 or 32 (the matmuls use 32), and each invocation's columns: the
// 64 accumulators hold ROWS x COLS outputs.
override ROWS: u32 = 32u;
override COLS: u32 = 64u / ROWS;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<uniform> a_win: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> b_win: array<vec4<f32>, 4096>;

// Where this product's C starts (c_base, plus c_batch per batch index).
var<private> c_off: u32;

// The block: acc[2 * i + j] += opA[row i, k] * opB[k, column 2 * (i / ROWS) + j], row
// i = m0 + i % ROWS (i < 32). Lane l holds opA[row 8g + l, k] in a[g]; bg0, bg1 (g = x, y,
// z, w) are the two column values that accumulator rows 8g..8g+7 multiply (the same pair
// for every g when ROWS is 32: see column_pairs). Scalars, not two vec4s: with vec4
// arguments llvmpipe ran the matmuls at half speed.
fn block_fma(acc: ptr<function, array<f32, 64>>, a: vec4<f32>, bx0: f32, bx1: f32, by0: f32, by1: f32, bz0: f32, bz1: f32, bw0: f32, bw1: f32) {
    let s0 = subgroupBroadcast(a.x, 0u);
    (*acc)[0] = fma(s0, bx0, (*acc)[0]);
    (*acc)[1] = fma(s0, bx1, (*acc)[1]);
    let s1 = subgroupBroadcast(a.x, 1u);
    (*acc)[2] = fma(s1, bx0, (*acc)[2]);
    (*acc)[3] = fma(s1, bx1, (*acc)[3]);
    let s2 = subgroupBroadcast(a.x, 2u);
    (*acc)[4] = fma(s2, bx0, (*acc)[4]);
    (*acc)[5] = fma(s2, bx1, (*acc)[5]);
    let s3 = subgroupBroadcast(a.x, 3u);
    (*acc)[6] = fma(s3, bx0, (*acc)[6]);
    (*acc)[7] = fma(s3, bx1, (*acc)[7]);
    let s4 = subgroupBroadcast(a.x, 4u);
    (*acc)[8] = fma(s4, bx0, (*acc)[8]);
    (*acc)[9] = fma(s4, bx1, (*acc)[9]);
    let s5 = subgroupBroadcast(a.x, 5u);
    (*acc)[10] = fma(s5, bx0, (*acc)[10]);
    (*acc)[11] = fma(s5, bx1, (*acc)[11]);
    let s6 = subgroupBroadcast(a.x, 6u);
    (*acc)[12] = fma(s6, bx0, (*acc)[12]);
    (*acc)[13] = fma(s6, bx1, (*acc)[13]);
    let s7 = subgroupBroadcast(a.x, 7u);
    (*acc)[14] = fma(s7, bx0, (*acc)[14]);
    (*acc)[15] = fma(s7, bx1, (*acc)[15]);
    let s8 = subgroupBroadcast(a.y, 0u);
    (*acc)[16] = fma(s8, by0, (*acc)[16]);
    (*acc)[17] = fma(s8, by1, (*acc)[17]);
    let s9 = subgroupBroadcast(a.y, 1u);
    (*acc)[18] = fma(s9, by0, (*acc)[18]);
    (*acc)[19] = fma(s9, by1, (*acc)[19]);
    let s10 = subgroupBroadcast(a.y, 2u);
    (*acc)[20] = fma(s10, by0, (*acc)[20]);
    (*acc)[21] = fma(s10, by1, (*acc)[21]);
    let s11 = subgroupBroadcast(a.y, 3u);
    (*acc)[22] = fma(s11, by0, (*acc)[22]);
    (*acc)[23] = fma(s11, by1, (*acc)[23]);
    let s12 = subgroupBroadcast(a.y, 4u);
    (*acc)[24] = fma(s12, by0, (*acc)[24]);
    (*acc)[25] = fma(s12, by1, (*acc)[25]);
    let s13 = subgroupBroadcast(a.y, 5u);
    (*acc)[26] = fma(s13, by0, (*acc)[26]);
    (*acc)[27] = fma(s13, by1, (*acc)[27]);
    let s14 = subgroupBroadcast(a.y, 6u);
    (*acc)[28] = fma(s14, by0, (*acc)[28]);
    (*acc)[29] = fma(s14, by1, (*acc)[29]);
    let s15 = subgroupBroadcast(a.y, 7u);
    (*acc)[30] = fma(s15, by0, (*acc)[30]);
    (*acc)[31] = fma(s15, by1, (*acc)[31]);
    let s16 = subgroupBroadcast(a.z, 0u);
    (*acc)[32] = fma(s16, bz0, (*acc)[32]);
    (*acc)[33] = fma(s16, bz1, (*acc)[33]);
    let s17 = subgroupBroadcast(a.z, 1u);
    (*acc)[34] = fma(s17, bz0, (*acc)[34]);
    (*acc)[35] = fma(s17, bz1, (*acc)[35]);
    let s18 = subgroupBroadcast(a.z, 2u);
    (*acc)[36] = fma(s18, bz0, (*acc)[36]);
    (*acc)[37] = fma(s18, bz1, (*acc)[37]);
    let s19 = subgroupBroadcast(a.z, 3u);
    (*acc)[38] = fma(s19, bz0, (*acc)[38]);
    (*acc)[39] = fma(s19, bz1, (*acc)[39]);
    let s20 = subgroupBroadcast(a.z, 4u);
    (*acc)[40] = fma(s20, bz0, (*acc)[40]);
    (*acc)[41] = fma(s20, bz1, (*acc)[41]);
    let s21 = subgroupBroadcast(a.z, 5u);
    (*acc)[42] = fma(s21, bz0, (*acc)[42]);
    (*acc)[43] = fma(s21, bz1, (*acc)[43]);
    let s22 = subgroupBroadcast(a.z, 6u);
    (*acc)[44] = fma(s22, bz0, (*acc)[44]);
    (*acc)[45] = fma(s22, bz1, (*acc)[45]);
    let s23 = subgroupBroadcast(a.z, 7u);
    (*acc)[46] = fma(s23, bz0, (*acc)[46]);
    (*acc)[47] = fma(s23, bz1, (*acc)[47]);
    let s24 = subgroupBroadcast(a.w, 0u);
    (*acc)[48] = fma(s24, bw0, (*acc)[48]);
    (*acc)[49] = fma(s24, bw1, (*acc)[49]);
    let s25 = subgroupBroadcast(a.w, 1u);
    (*acc)[50] = fma(s25, bw0, (*acc)[50]);
    (*acc)[51] = fma(s25, bw1, (*acc)[51]);
    let s26 = subgroupBroadcast(a.w, 2u);
    (*acc)[52] = fma(s26, bw0, (*acc)[52]);
    (*acc)[53] = fma(s26, bw1, (*acc)[53]);
    let s27 = subgroupBroadcast(a.w, 3u);
    (*acc)[54] = fma(s27, bw0, (*acc)[54]);
    (*acc)[55] = fma(s27, bw1, (*acc)[55]);
    let s28 = subgroupBroadcast(a.w, 4u);
    (*acc)[56] = fma(s28, bw0, (*acc)[56]);
    (*acc)[57] = fma(s28, bw1, (*acc)[57]);
    let s29 = subgroupBroadcast(a.w, 5u);
    (*acc)[58] = fma(s29, bw0, (*acc)[58]);
    (*acc)[59] = fma(s29, bw1, (*acc)[59]);
    let s30 = subgroupBroadcast(a.w, 6u);
    (*acc)[60] = fma(s30, bw0, (*acc)[60]);
    (*acc)[61] = fma(s30, bw1, (*acc)[61]);
    let s31 = subgroupBroadcast(a.w, 7u);
    (*acc)[62] = fma(s31, bw0, (*acc)[62]);
    (*acc)[63] = fma(s31, bw1, (*acc)[63]);
}

// C[col_at + m*c_m] (+)= act(v + bias[bias_base + n]) for row m, column n inside the block;
// col_at is column n's offset in C (c_off + n for the matmuls). With BIAS_ROW the bias is
// per row (bias_base + m); with DBIAS_COLUMN the last column (the conv weight gradient's
// dbias) goes to bias_at + m instead.
fn store_one(m: u32, n: u32, col_at: u32, v: f32) {
    if (m < p.m && n < p.n) {
        var at = col_at + m * p.c_m;
        if ((p.flags & DBIAS_COLUMN) != 0u && n == p.n - 1u) {
            at = c_off + p.bias_at + m;
        }
        var x = v;
        if ((p.flags & ACCUMULATE) != 0u) {
            x += c[at];
        }
        if ((p.flags & BIAS) != 0u) {
            x += bias[p.bias_base + select(n, m, (p.flags & BIAS_ROW) != 0u)];
        }
        if ((p.flags & RELU) != 0u) {
            x = max(x, 0.0);
        }
        c[at] = x;
    }
}

// Accumulator acc[2 * i + j] into C: row m0 + i % ROWS, column c = 2 * (i / ROWS) + j of
// the invocation (n[c], at offset at[c] in C). Spelled out by the caller so that every
// accumulator index, and with ROWS every column index, is a constant.
fn store_acc(m0: u32, n: array<u32, 8>, at: array<u32, 8>, i: u32, j: u32, v: f32) {
    let c = 2u * (i / ROWS) + j;
    store_one(m0 + i % ROWS, n[c], at[c], v);
}

// Stores the block: the invocation's columns n[c] at offsets at[c] in C (c < COLS).
fn store_block(acc: ptr<function, array<f32, 64>>, m0: u32, n: array<u32, 8>, at: array<u32, 8>) {
    store_acc(m0, n, at, 0u, 0u, (*acc)[0]);
    store_acc(m0, n, at, 0u, 1u, (*acc)[1]);
    store_acc(m0, n, at, 1u, 0u, (*acc)[2]);
    store_acc(m0, n, at, 1u, 1u, (*acc)[3]);
    store_acc(m0, n, at, 2u, 0u, (*acc)[4]);
    store_acc(m0, n, at, 2u, 1u, (*acc)[5]);
    store_acc(m0, n, at, 3u, 0u, (*acc)[6]);
    store_acc(m0, n, at, 3u, 1u, (*acc)[7]);
    store_acc(m0, n, at, 4u, 0u, (*acc)[8]);
    store_acc(m0, n, at, 4u, 1u, (*acc)[9]);
    store_acc(m0, n, at, 5u, 0u, (*acc)[10]);
    store_acc(m0, n, at, 5u, 1u, (*acc)[11]);
    store_acc(m0, n, at, 6u, 0u, (*acc)[12]);
    store_acc(m0, n, at, 6u, 1u, (*acc)[13]);
    store_acc(m0, n, at, 7u, 0u, (*acc)[14]);
    store_acc(m0, n, at, 7u, 1u, (*acc)[15]);
    store_acc(m0, n, at, 8u, 0u, (*acc)[16]);
    store_acc(m0, n, at, 8u, 1u, (*acc)[17]);
    store_acc(m0, n, at, 9u, 0u, (*acc)[18]);
    store_acc(m0, n, at, 9u, 1u, (*acc)[19]);
    store_acc(m0, n, at, 10u, 0u, (*acc)[20]);
    store_acc(m0, n, at, 10u, 1u, (*acc)[21]);
    store_acc(m0, n, at, 11u, 0u, (*acc)[22]);
    store_acc(m0, n, at, 11u, 1u, (*acc)[23]);
    store_acc(m0, n, at, 12u, 0u, (*acc)[24]);
    store_acc(m0, n, at, 12u, 1u, (*acc)[25]);
    store_acc(m0, n, at, 13u, 0u, (*acc)[26]);
    store_acc(m0, n, at, 13u, 1u, (*acc)[27]);
    store_acc(m0, n, at, 14u, 0u, (*acc)[28]);
    store_acc(m0, n, at, 14u, 1u, (*acc)[29]);
    store_acc(m0, n, at, 15u, 0u, (*acc)[30]);
    store_acc(m0, n, at, 15u, 1u, (*acc)[31]);
    store_acc(m0, n, at, 16u, 0u, (*acc)[32]);
    store_acc(m0, n, at, 16u, 1u, (*acc)[33]);
    store_acc(m0, n, at, 17u, 0u, (*acc)[34]);
    store_acc(m0, n, at, 17u, 1u, (*acc)[35]);
    store_acc(m0, n, at, 18u, 0u, (*acc)[36]);
    store_acc(m0, n, at, 18u, 1u, (*acc)[37]);
    store_acc(m0, n, at, 19u, 0u, (*acc)[38]);
    store_acc(m0, n, at, 19u, 1u, (*acc)[39]);
    store_acc(m0, n, at, 20u, 0u, (*acc)[40]);
    store_acc(m0, n, at, 20u, 1u, (*acc)[41]);
    store_acc(m0, n, at, 21u, 0u, (*acc)[42]);
    store_acc(m0, n, at, 21u, 1u, (*acc)[43]);
    store_acc(m0, n, at, 22u, 0u, (*acc)[44]);
    store_acc(m0, n, at, 22u, 1u, (*acc)[45]);
    store_acc(m0, n, at, 23u, 0u, (*acc)[46]);
    store_acc(m0, n, at, 23u, 1u, (*acc)[47]);
    store_acc(m0, n, at, 24u, 0u, (*acc)[48]);
    store_acc(m0, n, at, 24u, 1u, (*acc)[49]);
    store_acc(m0, n, at, 25u, 0u, (*acc)[50]);
    store_acc(m0, n, at, 25u, 1u, (*acc)[51]);
    store_acc(m0, n, at, 26u, 0u, (*acc)[52]);
    store_acc(m0, n, at, 26u, 1u, (*acc)[53]);
    store_acc(m0, n, at, 27u, 0u, (*acc)[54]);
    store_acc(m0, n, at, 27u, 1u, (*acc)[55]);
    store_acc(m0, n, at, 28u, 0u, (*acc)[56]);
    store_acc(m0, n, at, 28u, 1u, (*acc)[57]);
    store_acc(m0, n, at, 29u, 0u, (*acc)[58]);
    store_acc(m0, n, at, 29u, 1u, (*acc)[59]);
    store_acc(m0, n, at, 30u, 0u, (*acc)[60]);
    store_acc(m0, n, at, 30u, 1u, (*acc)[61]);
    store_acc(m0, n, at, 31u, 0u, (*acc)[62]);
    store_acc(m0, n, at, 31u, 1u, (*acc)[63]);
}

// Where this invocation's block starts: its first row m0 and column n0 (the second column
// is n0 + WG), the offsets of opB[0, n0] and opB[0, n0 + WG] (clamped), and of opA[r, 0] for
// the rows r = m0 + 8g + lane that this lane loads (lanes 0..7; other lanes' loads go
// unused). Both entry points step these by k * a_k and k * b_k.
struct Origin {
    m0: u32,
    n0: u32,
    b_at: vec2<u32>,
    a_at: vec4<u32>,
}

// Offset of product z in a two-level batch: (z / split) * outer + (z % split) * inner.
fn batch_at(z: u32, split: u32, outer: u32, inner: u32) -> u32 {
    let s = max(split, 1u);
    return (z / s) * outer + (z % s) * inner;
}

fn block_origin(lid: vec3<u32>, wid: vec3<u32>, lane: u32) -> Origin {
    let m0 = wid.y * 32u;
    let n0 = (wid.x * 2u) * WG + lid.x;
    let cols = min(vec2<u32>(n0, n0 + WG), vec2<u32>(p.n - 1u));
    let rows = min(vec4<u32>(m0 + (lane & 7u)) + vec4<u32>(0u, 8u, 16u, 24u), vec4<u32>(p.m - 1u));
    let a0 = p.a_base + batch_at(wid.z, p.a_split, p.a_batch, p.a_inner);
    let b0 = p.b_base + batch_at(wid.z, p.b_split, p.b_batch, p.b_inner);
    c_off = p.c_base + batch_at(wid.z, p.c_split, p.c_batch, p.c_inner);
    return Origin(m0, n0, vec2<u32>(b0) + cols * p.b_n, vec4<u32>(a0) + rows * p.a_m);
}

// The matmuls' two columns n0 and n0 + WG (or their offsets), as store_block takes them.
fn two_columns(n0: u32) -> array<u32, 8> {
    return array<u32, 8>(n0, n0 + WG, 0u, 0u, 0u, 0u, 0u, 0u);
}

@compute @workgroup_size(WG)
fn matmul_subgroup(@builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let o = block_origin(lid, wid, lane);
    var acc: array<f32, 64>;
    for (var k = 0u; k < p.k; k++) {
        let ak = o.a_at + vec4<u32>(k * p.a_k);
        let bk = o.b_at + vec2<u32>(k * p.b_k);
        let b0 = b[bk.x];
        let b1 = b[bk.y];
        let av = vec4<f32>(a[ak.x], a[ak.y], a[ak.z], a[ak.w]);
        block_fma(&acc, av, b0, b1, b0, b1, b0, b1, b0, b1);
    }
    store_block(&acc, o.m0, two_columns(o.n0), two_columns(c_off + o.n0));
}

fn win_a(i: u32) -> f32 {
    return a_win[i >> 2u][i & 3u];
}

fn win_b(i: u32) -> f32 {
    return b_win[i >> 2u][i & 3u];
}

@compute @workgroup_size(WG)
fn matmul_window(@builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let o = block_origin(lid, wid, lane);
    var acc: array<f32, 64>;
    for (var k = 0u; k < p.k; k++) {
        let ak = o.a_at + vec4<u32>(k * p.a_k);
        let bk = o.b_at + vec2<u32>(k * p.b_k);
        let av = vec4<f32>(win_a(ak.x), win_a(ak.y), win_a(ak.z), win_a(ak.w));
        let b0 = win_b(bk.x);
        let b1 = win_b(bk.y);
        block_fma(&acc, av, b0, b1, b0, b1, b0, b1, b0, b1);
    }
    store_block(&acc, o.m0, two_columns(o.n0), two_columns(c_off + o.n0));
}

// ---- Convolutions as implicit GEMMs on the same block, operands in uniform windows ----
//
// conv2d_window: a stride-S conv of one run of images held by the B window, as the GEMM
//   C[m, (img, oy, ox)] = act(sum_{ci, t} opA[m, (ci, t)] * opB[(ci, t), (img, oy, ox)] + bias[m])
//   M = output channels, N = images * OH * OW, K = c_in * KH * KW (t = ky * KW + kx);
//   opA[m, (ci, t)] = A[a_base + m * a_m + ci * a_ci + t'], t' = t, or KH*KW - 1 - t with FLIP;
//   opB[(ci, t), (img, oy, ox)] = B[b_base + img * b_batch + (ci * h + iy) * w + ix],
//     iy = oy * stride + ky - pad_h, ix = ox * stride + kx - pad_w, zero outside h x w;
//   C[c_base + img * c_batch + m * c_m + oy * out_w + ox], c_m = OH * OW (NCHW).
//   The forward: A = w [CO, CI, KH, KW] (a_m = CI*KH*KW, a_ci = KH*KW), B = x. The input
//   gradient (stride 1) is the same kernel: a conv of dy (B, h x w = OH x OW) with the
//   weight transposed and flipped (FLIP, a_m = KH*KW, a_ci = CI*KH*KW: rows are input
//   channels) and padding KH-1-pad_h, KW-1-pad_w, giving dx [B, CI, H, W].
//   Bias per row (BIAS | BIAS_ROW), ReLU as the matmuls.
//
// conv2d_window_weight: partial sums of dweight and dbias over slice z of the positions
//   C[m, n] = sum_{(img, oy, ox) of the slice} opA[m, (img, oy, ox)] * opB[(img, oy, ox), n]
//   M = CO, N = c_in * KH * KW + 1, positions taken by output rows r = img * OH + oy in
//   [z * k_rows, min(z * k_rows + k_rows, k)) (k = images * OH);
//   opA = dy: A[a_base + img * a_batch + m * a_m + oy * out_w + ox] (a_m = OH * OW);
//   opB[(img, oy, ox), n = (ci, ky, kx)] = x as conv2d_window's opB; the last column n = N-1
//   is 1 (its sums are dbias, DBIAS_COLUMN);
//   C[c_base + z * c_batch + m * c_m + n] (c_m = c_in*KH*KW), dbias at c_base + z * c_batch
//   + bias_at + m: one partial row [CO*CI*KH*KW + CO] per slice, as conv2d.wgsl lays them out.
//
// The conv entry points take the block's shape from the overrides: ROWS rows (8, 16 or 32,
// so that few rows go to waste when M is small) by COLS = 64 / ROWS columns an invocation,
// columns n0 + c * WG (c < COLS), n0 = workgroup_id.x * COLS * WG + local_id.x.
//
// Dispatch: (ceil(N / (COLS * WG)), ceil(M / ROWS), 1) for conv2d_window, (.., .., slices)
// for conv2d_window_weight; a_win is A, b_win is B, c and bias storage.

// The rows lane `lane` loads: m0 + lane + 8g for the row groups g < ROWS / 8, repeated
// when ROWS < 32 (group g holds the rows of group g % (ROWS / 8)), clamped.
fn lane_rows(m0: u32, lane: u32) -> vec4<u32> {
    let g = vec4<u32>(0u, 8u, 16u, 24u) % vec4<u32>(ROWS);
    return min(vec4<u32>(m0 + (lane & 7u)) + g, vec4<u32>(p.m - 1u));
}

// opA at the lane's row offsets ak in the A window, each distinct row loaded once.
fn load_rows(ak: vec4<u32>) -> vec4<f32> {
    if (ROWS == 8u) {
        return vec4<f32>(win_a(ak.x));
    }
    if (ROWS == 16u) {
        return vec2<f32>(win_a(ak.x), win_a(ak.y)).xyxy;
    }
    return vec4<f32>(win_a(ak.x), win_a(ak.y), win_a(ak.z), win_a(ak.w));
}

// block_fma's column operands from the invocation's column values lo (columns 0..3) and
// hi (4..7): row group g multiplies columns 2q and 2q + 1, q = 8g / ROWS.
fn column_pairs(lo: vec4<f32>, hi: vec4<f32>) -> array<vec4<f32>, 2> {
    if (ROWS == 8u) {
        return array<vec4<f32>, 2>(vec4<f32>(lo.xz, hi.xz), vec4<f32>(lo.yw, hi.yw));
    }
    if (ROWS == 16u) {
        return array<vec4<f32>, 2>(lo.xxzz, lo.yyww);
    }
    return array<vec4<f32>, 2>(lo.xxxx, lo.yyyy);
}

// block_fma with the column pairs of column_pairs: row group g multiplies (bp[0][g], bp[1][g]).
fn block_pairs(acc: ptr<function, array<f32, 64>>, a: vec4<f32>, bp: array<vec4<f32>, 2>) {
    let b0 = bp[0];
    let b1 = bp[1];
    block_fma(acc, a, b0.x, b1.x, b0.y, b1.y, b0.z, b1.z, b0.w, b1.w);
}

fn eight(lo: vec4<u32>, hi: vec4<u32>) -> array<u32, 8> {
    return array<u32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);
}

// The invocation's columns c < 8 (only c < COLS are used): n0 + c * WG, n0 =
// workgroup_id.x * COLS * WG + local_id.x; lo holds c < 4, hi the others.
fn conv_columns(lid: vec3<u32>, wid: vec3<u32>) -> array<vec4<u32>, 2> {
    let lo = vec4<u32>(wid.x * COLS * WG + lid.x) + vec4<u32>(0u, 1u, 2u, 3u) * WG;
    return array<vec4<u32>, 2>(lo, lo + vec4<u32>(4u * WG));
}

// opB of four columns: B at rows iy, columns ix of the planes starting at `plane`, zero
// outside the h x w plane.
fn conv_taps(plane: vec4<u32>, iy: vec4<i32>, ix: vec4<i32>) -> vec4<f32> {
    let hw = vec2<i32>(i32(p.h), i32(p.w));
    let ok = (iy >= vec4<i32>(0)) & (iy < vec4<i32>(hw.x)) & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(hw.y));
    let at = plane + vec4<u32>(clamp(iy, vec4<i32>(0), vec4<i32>(hw.x - 1))) * p.w
        + vec4<u32>(clamp(ix, vec4<i32>(0), vec4<i32>(hw.y - 1)));
    let v = vec4<f32>(win_b(at.x), win_b(at.y), win_b(at.z), win_b(at.w));
    return select(vec4<f32>(0.0), v, ok);
}

// conv2d_window's columns (image, output pixel) of four columns n, clamped: their offset in
// C, their B planes (input channel 0) and first input row and column.
struct OutColumns {
    at: vec4<u32>,
    plane: vec4<u32>,
    iy: vec4<i32>,
    ix: vec4<i32>,
}

fn out_columns(n: vec4<u32>) -> OutColumns {
    let pixels = p.out_h * p.out_w;
    let nc = min(n, vec4<u32>(p.n - 1u));
    let img = nc / pixels;
    let pix = nc - img * pixels;
    let oy = pix / p.out_w;
    let ox = pix - oy * p.out_w;
    return OutColumns(
        vec4<u32>(c_off) + img * p.c_batch + pix,
        vec4<u32>(p.b_base) + img * p.b_batch,
        vec4<i32>(oy * p.stride) - vec4<i32>(i32(p.pad_h)),
        vec4<i32>(ox * p.stride) - vec4<i32>(i32(p.pad_w)),
    );
}

@compute @workgroup_size(WG)
fn conv2d_window(@builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * ROWS;
    let a_at = vec4<u32>(p.a_base) + lane_rows(m0, lane) * p.a_m;
    c_off = p.c_base;
    let n = conv_columns(lid, wid);
    let lo = out_columns(n[0]);
    let hi = out_columns(n[1]);
    let taps = p.kh * p.kw;
    let flip = (p.flags & FLIP) != 0u;
    var acc: array<f32, 64>;
    for (var ci = 0u; ci < p.c_in; ci++) {
        let plane = vec4<u32>(ci * p.h * p.w);
        let a_ci = a_at + vec4<u32>(ci * p.a_ci);
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let dy = vec4<i32>(i32(ky));
                let dx = vec4<i32>(i32(kx));
                let b_lo = conv_taps(lo.plane + plane, lo.iy + dy, lo.ix + dx);
                var b_hi = vec4<f32>(0.0);
                if (COLS > 4u) {
                    b_hi = conv_taps(hi.plane + plane, hi.iy + dy, hi.ix + dx);
                }
                let t = ky * p.kw + kx;
                let ak = a_ci + vec4<u32>(select(t, taps - 1u - t, flip));
                block_pairs(&acc, load_rows(ak), column_pairs(b_lo, b_hi));
            }
        }
    }
    store_block(&acc, m0, eight(n[0], n[1]), eight(lo.at, hi.at));
}

// conv2d_window_weight's columns, taps n = (ci, ky, kx) of four columns (clamped into the
// taps): their B planes and row and column offsets; `ones` marks the dbias column.
struct TapColumns {
    plane: vec4<u32>,
    dy: vec4<i32>,
    dx: vec4<i32>,
    ones: vec4<bool>,
}

fn tap_columns(n: vec4<u32>) -> TapColumns {
    let taps = p.kh * p.kw;
    let nc = min(n, vec4<u32>(p.n - 1u));
    let tc = min(nc, vec4<u32>(p.n - 2u));
    let ci = tc / taps;
    let t = tc - ci * taps;
    let ky = t / p.kw;
    let kx = t - ky * p.kw;
    return TapColumns(
        vec4<u32>(p.b_base) + ci * (p.h * p.w),
        vec4<i32>(ky) - vec4<i32>(i32(p.pad_h)),
        vec4<i32>(kx) - vec4<i32>(i32(p.pad_w)),
        nc == vec4<u32>(p.n - 1u),
    );
}

@compute @workgroup_size(WG)
fn conv2d_window_weight(@builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * ROWS;
    let a_rows = vec4<u32>(p.a_base) + lane_rows(m0, lane) * p.a_m;
    let n = conv_columns(lid, wid);
    let lo = tap_columns(n[0]);
    let hi = tap_columns(n[1]);
    let r0 = wid.z * p.k_rows;
    let r1 = min(r0 + p.k_rows, p.k);
    var acc: array<f32, 64>;
    for (var r = r0; r < r1; r++) {
        let img = r / p.out_h;
        let oy = r - img * p.out_h;
        let a_row = a_rows + vec4<u32>(img * p.a_batch + oy * p.out_w);
        let plane = vec4<u32>(img * p.b_batch);
        let iy = vec4<i32>(i32(oy * p.stride));
        for (var ox = 0u; ox < p.out_w; ox++) {
            let ix = vec4<i32>(i32(ox * p.stride));
            let b_lo = select(conv_taps(lo.plane + plane, iy + lo.dy, ix + lo.dx), vec4<f32>(1.0), lo.ones);
            var b_hi = vec4<f32>(0.0);
            if (COLS > 4u) {
                b_hi = select(conv_taps(hi.plane + plane, iy + hi.dy, ix + hi.dx), vec4<f32>(1.0), hi.ones);
            }
            block_pairs(&acc, load_rows(a_row + vec4<u32>(ox)), column_pairs(b_lo, b_hi));
        }
    }
    c_off = p.c_base + wid.z * p.c_batch;
    store_block(&acc, m0, eight(n[0], n[1]), eight(vec4<u32>(c_off) + n[0], vec4<u32>(c_off) + n[1]));
}
