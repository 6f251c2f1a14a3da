// matmul_subgroup.wgsl: one block of C = op(A) · op(B) (+ bias) (ReLU), f32, for adapters
// with subgroups of at least 8 invocations (llvmpipe/lavapipe: exactly 8).
//
//   C[c_base + i*c_m + j] (+)= act( sum_kk opA[i, kk] * opB[kk, j] + bias[bias_base + j] )
//   opA[i, kk] = A[a_base + i*a_m + kk*a_k],   opB[kk, j] = B[b_base + kk*b_k + j*b_n]
//   for i < M, j < N, kk < K of the block. Strides express both layouts of each operand
//   (A stored [M, K]: a_m = K, a_k = 1; stored [K, M]: a_m = 1, a_k = M; likewise B).
//   With ACCUMULATE the block is added to what C holds (K split over several dispatches).
//   matmul_subgroup is batched: workgroup z = b runs product b, its A, B and C starting
//   a_batch, b_batch and c_batch elements further on (b_batch 0 shares B).
//
// Two entry points share the 32 x 2 register block and differ only in where A and B live:
//   matmul_subgroup  A and B in storage buffers (a whole matmul is one block);
//   matmul_window    A and B in 64 KiB uniform-buffer windows, one dispatch per block.
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
//   0 uniform Params (below)   flags: 4 = add bias, 8 = ReLU, 32 = accumulate into C
//   1 storage read a   2 storage read b           (matmul_subgroup)
//   5 uniform a_win    6 uniform b_win            (matmul_window; array<vec4<f32>, 4096> each)
//   3 storage read bias   4 storage read_write c  (both)
//
// Dispatch: (ceil(N / (2 * WG)), ceil(M / 32), batch) workgroups of WG invocations (WG a
// multiple of 8; batch 1 for matmul_window). Overridable: WG.

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
}

const BIAS: u32 = 4u;
const RELU: u32 = 8u;
const ACCUMULATE: u32 = 32u;

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<uniform> a_win: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> b_win: array<vec4<f32>, 4096>;

// Where this product's C starts (c_base, plus c_batch per batch index).
var<private> c_off: u32;

// The 32 x 2 block: acc[2 * i + j] += opA[m0 + i, k] * opB[k, n_j]. Lane l holds
// opA[m0 + 8g + l, k] in a[g]; b0, b1 are this invocation's opB[k, n_0], opB[k, n_1].
fn block_fma(acc: ptr<function, array<f32, 64>>, a: vec4<f32>, b0: f32, b1: f32) {
    let s0 = subgroupBroadcast(a.x, 0u);
    (*acc)[0] = fma(s0, b0, (*acc)[0]);
    (*acc)[1] = fma(s0, b1, (*acc)[1]);
    let s1 = subgroupBroadcast(a.x, 1u);
    (*acc)[2] = fma(s1, b0, (*acc)[2]);
    (*acc)[3] = fma(s1, b1, (*acc)[3]);
    let s2 = subgroupBroadcast(a.x, 2u);
    (*acc)[4] = fma(s2, b0, (*acc)[4]);
    (*acc)[5] = fma(s2, b1, (*acc)[5]);
    let s3 = subgroupBroadcast(a.x, 3u);
    (*acc)[6] = fma(s3, b0, (*acc)[6]);
    (*acc)[7] = fma(s3, b1, (*acc)[7]);
    let s4 = subgroupBroadcast(a.x, 4u);
    (*acc)[8] = fma(s4, b0, (*acc)[8]);
    (*acc)[9] = fma(s4, b1, (*acc)[9]);
    let s5 = subgroupBroadcast(a.x, 5u);
    (*acc)[10] = fma(s5, b0, (*acc)[10]);
    (*acc)[11] = fma(s5, b1, (*acc)[11]);
    let s6 = subgroupBroadcast(a.x, 6u);
    (*acc)[12] = fma(s6, b0, (*acc)[12]);
    (*acc)[13] = fma(s6, b1, (*acc)[13]);
    let s7 = subgroupBroadcast(a.x, 7u);
    (*acc)[14] = fma(s7, b0, (*acc)[14]);
    (*acc)[15] = fma(s7, b1, (*acc)[15]);
    let s8 = subgroupBroadcast(a.y, 0u);
    (*acc)[16] = fma(s8, b0, (*acc)[16]);
    (*acc)[17] = fma(s8, b1, (*acc)[17]);
    let s9 = subgroupBroadcast(a.y, 1u);
    (*acc)[18] = fma(s9, b0, (*acc)[18]);
    (*acc)[19] = fma(s9, b1, (*acc)[19]);
    let s10 = subgroupBroadcast(a.y, 2u);
    (*acc)[20] = fma(s10, b0, (*acc)[20]);
    (*acc)[21] = fma(s10, b1, (*acc)[21]);
    let s11 = subgroupBroadcast(a.y, 3u);
    (*acc)[22] = fma(s11, b0, (*acc)[22]);
    (*acc)[23] = fma(s11, b1, (*acc)[23]);
    let s12 = subgroupBroadcast(a.y, 4u);
    (*acc)[24] = fma(s12, b0, (*acc)[24]);
    (*acc)[25] = fma(s12, b1, (*acc)[25]);
    let s13 = subgroupBroadcast(a.y, 5u);
    (*acc)[26] = fma(s13, b0, (*acc)[26]);
    (*acc)[27] = fma(s13, b1, (*acc)[27]);
    let s14 = subgroupBroadcast(a.y, 6u);
    (*acc)[28] = fma(s14, b0, (*acc)[28]);
    (*acc)[29] = fma(s14, b1, (*acc)[29]);
    let s15 = subgroupBroadcast(a.y, 7u);
    (*acc)[30] = fma(s15, b0, (*acc)[30]);
    (*acc)[31] = fma(s15, b1, (*acc)[31]);
    let s16 = subgroupBroadcast(a.z, 0u);
    (*acc)[32] = fma(s16, b0, (*acc)[32]);
    (*acc)[33] = fma(s16, b1, (*acc)[33]);
    let s17 = subgroupBroadcast(a.z, 1u);
    (*acc)[34] = fma(s17, b0, (*acc)[34]);
    (*acc)[35] = fma(s17, b1, (*acc)[35]);
    let s18 = subgroupBroadcast(a.z, 2u);
    (*acc)[36] = fma(s18, b0, (*acc)[36]);
    (*acc)[37] = fma(s18, b1, (*acc)[37]);
    let s19 = subgroupBroadcast(a.z, 3u);
    (*acc)[38] = fma(s19, b0, (*acc)[38]);
    (*acc)[39] = fma(s19, b1, (*acc)[39]);
    let s20 = subgroupBroadcast(a.z, 4u);
    (*acc)[40] = fma(s20, b0, (*acc)[40]);
    (*acc)[41] = fma(s20, b1, (*acc)[41]);
    let s21 = subgroupBroadcast(a.z, 5u);
    (*acc)[42] = fma(s21, b0, (*acc)[42]);
    (*acc)[43] = fma(s21, b1, (*acc)[43]);
    let s22 = subgroupBroadcast(a.z, 6u);
    (*acc)[44] = fma(s22, b0, (*acc)[44]);
    (*acc)[45] = fma(s22, b1, (*acc)[45]);
    let s23 = subgroupBroadcast(a.z, 7u);
    (*acc)[46] = fma(s23, b0, (*acc)[46]);
    (*acc)[47] = fma(s23, b1, (*acc)[47]);
    let s24 = subgroupBroadcast(a.w, 0u);
    (*acc)[48] = fma(s24, b0, (*acc)[48]);
    (*acc)[49] = fma(s24, b1, (*acc)[49]);
    let s25 = subgroupBroadcast(a.w, 1u);
    (*acc)[50] = fma(s25, b0, (*acc)[50]);
    (*acc)[51] = fma(s25, b1, (*acc)[51]);
    let s26 = subgroupBroadcast(a.w, 2u);
    (*acc)[52] = fma(s26, b0, (*acc)[52]);
    (*acc)[53] = fma(s26, b1, (*acc)[53]);
    let s27 = subgroupBroadcast(a.w, 3u);
    (*acc)[54] = fma(s27, b0, (*acc)[54]);
    (*acc)[55] = fma(s27, b1, (*acc)[55]);
    let s28 = subgroupBroadcast(a.w, 4u);
    (*acc)[56] = fma(s28, b0, (*acc)[56]);
    (*acc)[57] = fma(s28, b1, (*acc)[57]);
    let s29 = subgroupBroadcast(a.w, 5u);
    (*acc)[58] = fma(s29, b0, (*acc)[58]);
    (*acc)[59] = fma(s29, b1, (*acc)[59]);
    let s30 = subgroupBroadcast(a.w, 6u);
    (*acc)[60] = fma(s30, b0, (*acc)[60]);
    (*acc)[61] = fma(s30, b1, (*acc)[61]);
    let s31 = subgroupBroadcast(a.w, 7u);
    (*acc)[62] = fma(s31, b0, (*acc)[62]);
    (*acc)[63] = fma(s31, b1, (*acc)[63]);
}

// C[c_base + m*c_m + n] (+)= act(v + bias), inside the block only.
fn store_one(m: u32, n: u32, v: f32) {
    if (m < p.m && n < p.n) {
        let at = c_off + m * p.c_m + n;
        var x = v;
        if ((p.flags & ACCUMULATE) != 0u) {
            x += c[at];
        }
        if ((p.flags & BIAS) != 0u) {
            x += bias[p.bias_base + n];
        }
        if ((p.flags & RELU) != 0u) {
            x = max(x, 0.0);
        }
        c[at] = x;
    }
}

// Stores the 32 x 2 block: rows m0 + i, columns n0 and n1. Spelled out so that every
// accumulator index is a constant.
fn store_block(acc: ptr<function, array<f32, 64>>, m0: u32, n0: u32, n1: u32) {
    store_one(m0 + 0u, n0, (*acc)[0]);
    store_one(m0 + 0u, n1, (*acc)[1]);
    store_one(m0 + 1u, n0, (*acc)[2]);
    store_one(m0 + 1u, n1, (*acc)[3]);
    store_one(m0 + 2u, n0, (*acc)[4]);
    store_one(m0 + 2u, n1, (*acc)[5]);
    store_one(m0 + 3u, n0, (*acc)[6]);
    store_one(m0 + 3u, n1, (*acc)[7]);
    store_one(m0 + 4u, n0, (*acc)[8]);
    store_one(m0 + 4u, n1, (*acc)[9]);
    store_one(m0 + 5u, n0, (*acc)[10]);
    store_one(m0 + 5u, n1, (*acc)[11]);
    store_one(m0 + 6u, n0, (*acc)[12]);
    store_one(m0 + 6u, n1, (*acc)[13]);
    store_one(m0 + 7u, n0, (*acc)[14]);
    store_one(m0 + 7u, n1, (*acc)[15]);
    store_one(m0 + 8u, n0, (*acc)[16]);
    store_one(m0 + 8u, n1, (*acc)[17]);
    store_one(m0 + 9u, n0, (*acc)[18]);
    store_one(m0 + 9u, n1, (*acc)[19]);
    store_one(m0 + 10u, n0, (*acc)[20]);
    store_one(m0 + 10u, n1, (*acc)[21]);
    store_one(m0 + 11u, n0, (*acc)[22]);
    store_one(m0 + 11u, n1, (*acc)[23]);
    store_one(m0 + 12u, n0, (*acc)[24]);
    store_one(m0 + 12u, n1, (*acc)[25]);
    store_one(m0 + 13u, n0, (*acc)[26]);
    store_one(m0 + 13u, n1, (*acc)[27]);
    store_one(m0 + 14u, n0, (*acc)[28]);
    store_one(m0 + 14u, n1, (*acc)[29]);
    store_one(m0 + 15u, n0, (*acc)[30]);
    store_one(m0 + 15u, n1, (*acc)[31]);
    store_one(m0 + 16u, n0, (*acc)[32]);
    store_one(m0 + 16u, n1, (*acc)[33]);
    store_one(m0 + 17u, n0, (*acc)[34]);
    store_one(m0 + 17u, n1, (*acc)[35]);
    store_one(m0 + 18u, n0, (*acc)[36]);
    store_one(m0 + 18u, n1, (*acc)[37]);
    store_one(m0 + 19u, n0, (*acc)[38]);
    store_one(m0 + 19u, n1, (*acc)[39]);
    store_one(m0 + 20u, n0, (*acc)[40]);
    store_one(m0 + 20u, n1, (*acc)[41]);
    store_one(m0 + 21u, n0, (*acc)[42]);
    store_one(m0 + 21u, n1, (*acc)[43]);
    store_one(m0 + 22u, n0, (*acc)[44]);
    store_one(m0 + 22u, n1, (*acc)[45]);
    store_one(m0 + 23u, n0, (*acc)[46]);
    store_one(m0 + 23u, n1, (*acc)[47]);
    store_one(m0 + 24u, n0, (*acc)[48]);
    store_one(m0 + 24u, n1, (*acc)[49]);
    store_one(m0 + 25u, n0, (*acc)[50]);
    store_one(m0 + 25u, n1, (*acc)[51]);
    store_one(m0 + 26u, n0, (*acc)[52]);
    store_one(m0 + 26u, n1, (*acc)[53]);
    store_one(m0 + 27u, n0, (*acc)[54]);
    store_one(m0 + 27u, n1, (*acc)[55]);
    store_one(m0 + 28u, n0, (*acc)[56]);
    store_one(m0 + 28u, n1, (*acc)[57]);
    store_one(m0 + 29u, n0, (*acc)[58]);
    store_one(m0 + 29u, n1, (*acc)[59]);
    store_one(m0 + 30u, n0, (*acc)[60]);
    store_one(m0 + 30u, n1, (*acc)[61]);
    store_one(m0 + 31u, n0, (*acc)[62]);
    store_one(m0 + 31u, n1, (*acc)[63]);
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

fn block_origin(lid: vec3<u32>, wid: vec3<u32>, lane: u32) -> Origin {
    let m0 = wid.y * 32u;
    let n0 = (wid.x * 2u) * WG + lid.x;
    let cols = min(vec2<u32>(n0, n0 + WG), vec2<u32>(p.n - 1u));
    let rows = min(vec4<u32>(m0 + (lane & 7u)) + vec4<u32>(0u, 8u, 16u, 24u), vec4<u32>(p.m - 1u));
    let a0 = p.a_base + wid.z * p.a_batch;
    let b0 = p.b_base + wid.z * p.b_batch;
    c_off = p.c_base + wid.z * p.c_batch;
    return Origin(m0, n0, vec2<u32>(b0) + cols * p.b_n, vec4<u32>(a0) + rows * p.a_m);
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
        block_fma(&acc, vec4<f32>(a[ak.x], a[ak.y], a[ak.z], a[ak.w]), b[bk.x], b[bk.y]);
    }
    store_block(&acc, o.m0, o.n0, o.n0 + WG);
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
        block_fma(&acc, av, win_b(bk.x), win_b(bk.y));
    }
    store_block(&acc, o.m0, o.n0, o.n0 + WG);
}
