// batchnorm.wgsl: batch normalisation over axis 1 of x viewed [B, C, S] (B = batch,
// C = channels, S = spatial positions; S = 1 for [B, C]), with per-channel gain gamma [C]
// and bias beta [C], optionally followed by a ReLU (flag RELU). n = B * S values a channel.
//
//   batch_norm_partial:   for chunk j of `chunk` images, channel c, with the shift
//                         K[c] = x[0, c, 0]: part[j, c] = (sum (x - K), sum (x - K)^2)
//                         over the chunk's images b and positions s (b, then s, in order)
//   batch_norm_stats:     channel c: S1, S2 = the chunks' sums (chunks in order),
//                         m = S1 / n, mean[c] = K[c] + m, var[c] = max(S2 / n - m^2, 0)
//                         (biased; the shift keeps the difference well conditioned)
//   batch_norm_affine:    coef[c] = (scale, beta, mean, -): scale = gamma / sqrt(var + eps)
//                         (training: the batch's mean and var; evaluation: the running ones)
//   batch_norm_forward:   y[b,c,s] = act((x[b,c,s] - mean[c]) * scale[c] + beta[c])
//                         (not x * scale + (beta - mean * scale): that cancels when the
//                         mean is large against the spread)
//   batch_norm_backward_partial: with g = dy, masked to 0 where y <= 0 with RELU, and
//                         xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps):
//                         part[j, c] = (sum g, sum g * xhat) over chunk j as above
//   batch_norm_backward_params: channel c: dbeta = sum_j part[j,c].0, dgamma = sum_j
//                         part[j,c].1 (in order), and dx's coefficients coef[c] = (a, e,
//                         f, mean): a = gamma * rstd, e = -a * rstd * dgamma / n,
//                         f = -a * dbeta / n
//   batch_norm_backward_input: dx[b,c,s] = a * g + e * (x - mean) + f
//                         (= gamma rstd (g - dbeta / n - xhat dgamma / n))
// No atomics: every sum has a fixed order, so runs are bit-identical.
//
// Bindings (group 0): 0 uniform Params; 1-5 storage read; 6-8 storage read_write. Each
// entry binds 1.. up to the last it uses (the others get any buffer):
//   entry              1 x      2 src     3 src2    4 src3    5 src4    6 dst     7 dst2  8 dst3
//   partial            x                                                part
//   stats              x        part                                    mean      var
//   affine                      mean      var       gamma     beta      coef
//   forward            x                                      coef      y       -   -   coef
//   backward_partial   x        dy        y         mean      var       part
//   backward_params             part      gamma     mean      var       coef      dgamma  dbeta
//   backward_input     x        dy        y                   coef      dx      -   -   coef
//   (forward and backward_input: 9 uniform coef_u, the first 1024 coefficients as a
//   uniform buffer; with COEF_STORAGE they read the storage binding instead.)
// part [chunks, C, 2], mean and var [C], coef [C, 4]: forward (scale, beta, mean, -),
// backward (a, e, f, mean); y is read by the backward entries only with RELU.
//
// Batch norm, ReLU and a max pool of windows pool x pool every pool, fused:
//   batch_norm_pool_forward:  y[b,c,py,px] = max over the window of
//                             relu((x - mean) * scale + beta) (first maximum in row-major
//                             order wins, a NaN anywhere wins: as pool.wgsl), argmax its
//                             position iy * w + ix in the plane, stored as f32 (exact below
//                             2^24); the normalised values are never written
//   batch_norm_pool_backward_partial: as batch_norm_backward_partial, visiting only the
//                             windows' maxima: g = dy_pooled where y_pooled > 0 (the ReLU
//                             let it through), at x's argmax position; zero elsewhere
//   batch_norm_pool_backward_input: dx = a * g + e * (x - mean) + f for every value, g as
//                             above at the argmax positions, 0 elsewhere (and outside every
//                             window, at odd edges)
//
// Bindings:
//   entry                 1 x   2 src      3 src2    4 src3   5 src4   6 dst     7 dst2
//   pool_forward          x                                   coef     y pooled  argmax
//   pool_backward_partial x     dy pooled  y pooled  mean     var      part      argmax
//   pool_backward_input   x     dy pooled  y pooled           coef     dx        argmax
// (+ 8 unused, 9 coef_u as batch_norm_forward.)
//
// Dispatch: partial and backward_partial one invocation per (chunk j, channel c),
// i = j * C + c; stats, affine, backward_params one per channel; all 1-D over
// ceil(n / WG) workgroups of WG. forward and backward_input: one invocation per value,
// (ceil(C * S / WG), images, 1) workgroups a dispatch: workgroup row y is image first + y,
// x its C * S values, the channel from one f32 division (exact: an image holds fewer than
// 2^22 values; llvmpipe divides integer vectors lane by lane). Measured on lavapipe, this
// ran at ~half relu_forward's rate; a loop over a plane per workgroup (coefficients loaded
// once), a (positions, C, B) grid and a flat index with two divisions were slower.
// pool_forward: one invocation per pooled value, pool_backward_input one per window of a
// grid of ceil(h / pool) x ceil(w / pool) (the last ones may reach past the pooled planes,
// at odd edges), both (ceil(C * windows / WG), images, 1) workgroups as forward;
// pool_backward_partial as backward_partial.

struct Params {
    batch: u32,
    channels: u32,
    spatial: u32,
    chunk: u32,     // images per partial sum
    chunks: u32,
    flags: u32,     // 1 = ReLU after the normalisation, 2 = coef from storage (C > 1024)
    eps: f32,
    first: u32,     // forward and backward_input: the dispatch's first image
    h: u32,         // the pool entries: x's planes h x w (h * w = spatial), windows
    w: u32,         // pool x pool every pool, pooled planes out_h x out_w
    pool: u32,
    out_h: u32,
    out_w: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const RELU: u32 = 1u;
const COEF_STORAGE: u32 = 2u;

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> src2: array<f32>;
@group(0) @binding(4) var<storage, read> src3: array<f32>;
@group(0) @binding(5) var<storage, read> src4: array<f32>;
@group(0) @binding(6) var<storage, read_write> dst: array<f32>;
@group(0) @binding(7) var<storage, read_write> dst2: array<f32>;
@group(0) @binding(8) var<storage, read_write> dst3: array<f32>;
// The coefficients again, as a uniform buffer (the elementwise entries, when C <=
// UNIFORM_CHANNELS): on CPU adapters a uniform load costs a fraction of a storage load, and
// these two passes would otherwise load 2 or 4 of them per value.
@group(0) @binding(9) var<uniform> coef_u: array<vec4<f32>, 1024>;

const UNIFORM_CHANNELS: u32 = 1024u;

fn count() -> f32 {
    return f32(p.batch) * f32(p.spatial);
}

// The chunk and channel of a partial-sum invocation, and the range of its images.
struct Part {
    c: u32,
    b0: u32,
    b1: u32,
}

fn part_of(i: u32) -> Part {
    let c = i % p.channels;
    let b0 = (i / p.channels) * p.chunk;
    return Part(c, b0, min(b0 + p.chunk, p.batch));
}

@compute @workgroup_size(WG)
fn batch_norm_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.chunks * p.channels) {
        return;
    }
    let q = part_of(gid.x);
    let k = x[q.c * p.spatial];
    var s1 = 0.0;
    var s2 = 0.0;
    for (var b = q.b0; b < q.b1; b++) {
        let plane = (b * p.channels + q.c) * p.spatial;
        for (var s = 0u; s < p.spatial; s++) {
            let d = x[plane + s] - k;
            s1 += d;
            s2 = fma(d, d, s2);
        }
    }
    dst[2u * gid.x] = s1;
    dst[2u * gid.x + 1u] = s2;
}

@compute @workgroup_size(WG)
fn batch_norm_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels) {
        return;
    }
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = 0u; j < p.chunks; j++) {
        let at = 2u * (j * p.channels + c);
        s1 += src[at];
        s2 += src[at + 1u];
    }
    let n = count();
    let m = s1 / n;
    dst[c] = x[c * p.spatial] + m;
    dst2[c] = max(s2 / n - m * m, 0.0);
}

@compute @workgroup_size(WG)
fn batch_norm_affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels) {
        return;
    }
    // 1 / sqrt, not inverseSqrt: llvmpipe approximates that to ~4e-4.
    let scale = src3[c] / sqrt(src2[c] + p.eps);
    dst[4u * c] = scale;
    dst[4u * c + 1u] = src4[c];
    dst[4u * c + 2u] = src[c];
}

// a / b for a < 2^22 through f32 (exact with this margin): llvmpipe divides integer
// vectors lane by lane.
fn div_small(a: u32, b: u32) -> u32 {
    return u32((f32(a) + 0.5) / f32(b));
}

// The elementwise passes' value: index `at` into x [B, C, S] and its channel, or
// at = 0xffffffff past the image. Workgroup row y is image first_image + y, x runs over
// the image's C * S values.
fn element(gid: vec3<u32>) -> vec2<u32> {
    let image = p.channels * p.spatial;
    if (gid.x >= image) {
        return vec2<u32>(0xffffffffu, 0u);
    }
    return vec2<u32>((p.first + gid.y) * image + gid.x, div_small(gid.x, p.spatial));
}

// Channel c's coefficients: coef_u, or with COEF_STORAGE the storage binding src4.
fn coef_of(c: u32) -> vec4<f32> {
    if ((p.flags & COEF_STORAGE) != 0u) {
        let k = 4u * c;
        return vec4<f32>(src4[k], src4[k + 1u], src4[k + 2u], src4[k + 3u]);
    }
    return coef_u[min(c, UNIFORM_CHANNELS - 1u)];
}

@compute @workgroup_size(WG)
fn batch_norm_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = element(gid);
    if (e.x != 0xffffffffu) {
        let k = coef_of(e.y);
        var v = fma(x[e.x] - k.z, k.x, k.y);
        if ((p.flags & RELU) != 0u) {
            v = max(v, 0.0);
        }
        dst[e.x] = v;
    }
}

// dy at `at` (src), zero where the fused ReLU's output y (src2) is not positive.
fn grad_at(at: u32) -> f32 {
    let g = src[at];
    if ((p.flags & RELU) != 0u) {
        return select(0.0, g, src2[at] > 0.0);
    }
    return g;
}

@compute @workgroup_size(WG)
fn batch_norm_backward_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.chunks * p.channels) {
        return;
    }
    let q = part_of(gid.x);
    let m = src3[q.c];
    let r = 1.0 / sqrt(src4[q.c] + p.eps);
    var sg = 0.0;
    var sgx = 0.0;
    for (var b = q.b0; b < q.b1; b++) {
        let plane = (b * p.channels + q.c) * p.spatial;
        for (var s = 0u; s < p.spatial; s++) {
            let g = grad_at(plane + s);
            sg += g;
            sgx = fma(g, (x[plane + s] - m) * r, sgx);
        }
    }
    dst[2u * gid.x] = sg;
    dst[2u * gid.x + 1u] = sgx;
}

@compute @workgroup_size(WG)
fn batch_norm_backward_params(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels) {
        return;
    }
    var dbeta = 0.0;
    var dgamma = 0.0;
    for (var j = 0u; j < p.chunks; j++) {
        let at = 2u * (j * p.channels + c);
        dbeta += src[at];
        dgamma += src[at + 1u];
    }
    dst2[c] = dgamma;
    dst3[c] = dbeta;
    let n = count();
    let r = 1.0 / sqrt(src4[c] + p.eps);
    let a = src2[c] * r;
    dst[4u * c] = a;
    dst[4u * c + 1u] = -a * r * dgamma / n;
    dst[4u * c + 2u] = -a * dbeta / n;
    dst[4u * c + 3u] = src3[c];
}

@compute @workgroup_size(WG)
fn batch_norm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = element(gid);
    if (e.x != 0xffffffffu) {
        let k = coef_of(e.y);
        dst[e.x] = fma(k.x, grad_at(e.x), fma(k.y, x[e.x] - k.w, k.z));
    }
}

// ---- Batch norm, ReLU and max pool fused (documented in the header) ----

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Window q of an image's C * (rows * cols) windows: (channel, window row, window column),
// or channel = 0xffffffff past them.
fn window_of(q: u32, rows: u32, cols: u32) -> vec3<u32> {
    if (q >= p.channels * rows * cols) {
        return vec3<u32>(0xffffffffu, 0u, 0u);
    }
    let c = div_small(q, rows * cols);
    let r = q - c * rows * cols;
    let wy = div_small(r, cols);
    return vec3<u32>(c, wy, r - wy * cols);
}

@compute @workgroup_size(WG)
fn batch_norm_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let win = window_of(gid.x, p.out_h, p.out_w);
    if (win.x == 0xffffffffu) {
        return;
    }
    let k = coef_of(win.x);
    let img = p.first + gid.y;
    let base = (img * p.channels + win.x) * p.spatial;
    var best = 0.0;
    var best_at = 0u;
    for (var ky = 0u; ky < p.pool; ky++) {
        for (var kx = 0u; kx < p.pool; kx++) {
            let at = (win.y * p.pool + ky) * p.w + win.z * p.pool + kx;
            let v = max(fma(x[base + at] - k.z, k.x, k.y), 0.0);
            if ((ky == 0u && kx == 0u) || (!is_nan(best) && (is_nan(v) || v > best))) {
                best = v;
                best_at = at;
            }
        }
    }
    let o = (img * p.channels + win.x) * p.out_h * p.out_w + win.y * p.out_w + win.z;
    dst[o] = best;
    dst2[o] = f32(best_at);
}

@compute @workgroup_size(WG)
fn batch_norm_pool_backward_partial(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.chunks * p.channels) {
        return;
    }
    let q = part_of(gid.x);
    let m = src3[q.c];
    let r = 1.0 / sqrt(src4[q.c] + p.eps);
    let pooled = p.out_h * p.out_w;
    var sg = 0.0;
    var sgx = 0.0;
    for (var b = q.b0; b < q.b1; b++) {
        let plane = b * p.channels + q.c;
        for (var o = plane * pooled; o < (plane + 1u) * pooled; o++) {
            let g = select(0.0, src[o], src2[o] > 0.0);
            sg += g;
            sgx = fma(g, (x[plane * p.spatial + u32(dst2[o])] - m) * r, sgx);
        }
    }
    dst[2u * gid.x] = sg;
    dst[2u * gid.x + 1u] = sgx;
}

@compute @workgroup_size(WG)
fn batch_norm_pool_backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let rows = (p.h + p.pool - 1u) / p.pool;
    let cols = (p.w + p.pool - 1u) / p.pool;
    let win = window_of(gid.x, rows, cols);
    if (win.x == 0xffffffffu) {
        return;
    }
    let k = coef_of(win.x);
    let img = p.first + gid.y;
    let plane = img * p.channels + win.x;
    // The window's gradient and argmax, if it is one of the pooled windows.
    var g = 0.0;
    var g_at = 0xffffffffu;
    if (win.y < p.out_h && win.z < p.out_w) {
        let o = plane * p.out_h * p.out_w + win.y * p.out_w + win.z;
        g = select(0.0, src[o], src2[o] > 0.0);
        g_at = u32(dst2[o]);
    }
    let base = plane * p.spatial;
    for (var ky = 0u; ky < p.pool; ky++) {
        for (var kx = 0u; kx < p.pool; kx++) {
            let iy = win.y * p.pool + ky;
            let ix = win.z * p.pool + kx;
            if (iy < p.h && ix < p.w) {
                let at = iy * p.w + ix;
                let gi = select(0.0, g, at == g_at);
                dst[base + at] = fma(k.x, gi, fma(k.y, x[base + at] - k.w, k.z));
            }
        }
    }
}
