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
// Dispatch: partial and backward_partial one invocation per (chunk j, channel c),
// i = j * C + c; stats, affine, backward_params one per channel; all 1-D over
// ceil(n / WG) workgroups of WG. forward and backward_input: one invocation per value,
// (ceil(C * S / WG), images, 1) workgroups a dispatch: workgroup row y is image first + y,
// x its C * S values, the channel from one f32 division (exact: an image holds fewer than
// 2^22 values; llvmpipe divides integer vectors lane by lane). Measured on lavapipe, this
// ran at ~half relu_forward's rate; a loop over a plane per workgroup (coefficients loaded
// once), a (positions, C, B) grid and a flat index with two divisions were slower.

struct Params {
    batch: u32,
    channels: u32,
    spatial: u32,
    chunk: u32,     // images per partial sum
    chunks: u32,
    flags: u32,     // 1 = ReLU after the normalisation, 2 = coef from storage (C > 1024)
    eps: f32,
    first: u32,     // forward and backward_input: the dispatch's first image
    _pad0: u32,
    _pad3: u32,
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
