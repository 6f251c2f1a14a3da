// conv2d_subgroup.wgsl: conv2d forward (NCHW, stride 1, as conv2d.wgsl's conv2d_forward)
// for adapters with subgroups of at least 8 invocations.
//
//   conv2d_forward_subgroup: y[b,co,oy,ox] = act(bias[co] + sum_{ci,ky,kx}
//                                 x[b,ci,oy+ky-PH,ox+kx-PW] * w[co,ci,ky,kx])
//   conv2d_backward_weight_subgroup: the partial sums of conv2d.wgsl's conv2d_backward_weight,
//                            part[chunk, ((co*CI + ci)*KH + ky)*KW + kx] and part[chunk, NW + co].
//
// backward_weight: invocation co = workgroup_id.y * 8 + local id owns, for one input channel
// ci and one group of 9 taps (t = tap group * 9 + j over the KH*KW taps), 9 partial sums over
// the chunk's output positions. Positions go in groups of 8: lane l loads the 9 input taps of
// position p0 + l, then for each of the 8 positions every lane multiplies its own dy by the 9
// broadcast taps: 17 loads per 72 multiply-adds. The invocations of tap group 0 and ci 0 also
// sum dy into the dbias partial. Dispatch: (CHUNKS * CI * ceil(KH*KW / 9), ceil(CO / 8), 1)
// workgroups of 8 invocations.
//
// Invocation q = (b * OH + oy) * OW + ox owns one output pixel for 8 output channels
// co0..co0+8 (co0 = workgroup_id.y * 8). Per tap it loads the input pixel once and, on lane
// l, the weight of channel co0 + l; subgroupBroadcast hands the 8 weights to every lane:
// 2 loads per 8 multiply-adds instead of 2 per 1. Out-of-image taps read as zero.
//
// With the override WINDOW the forward reads x, w and bias from uniform-buffer windows
// (binding 5-7) instead of storage buffers: on CPU adapters a uniform load costs a tenth of
// a storage load (see matmul_subgroup.wgsl). One dispatch then covers `batch` images from
// image batch0 on, whose pixels start at x_base in the x window; w and bias start at
// w_base and bias_base in theirs. Without WINDOW, batch0 = x_base = w_base = bias_base = 0.
//
// Bindings (group 0), as conv2d.wgsl:
//   0 uniform  Params (as conv2d.wgsl)      1 storage read x [B,CI,H,W]
//   2 storage read w [CO,CI,KH,KW]          3 storage read bias [CO]
//   4 storage read_write y [B,CO,OH,OW]
//   5, 6, 7 uniform x_win, w_win, bias_win (array<vec4<f32>, 4096> each; forward only)
//   8 storage read_write argmax [B,CO,PH,PW] u32 (conv2d_relu_pool_subgroup only; y is then
//     the pooled output [B,CO,PH,PW])
//   9, 10, 11 uniform g_win, pooled_win, at_win: the pool's gradient, output and argmax
//     (conv2d_relu_pool_backward_weight only, with 5 x_win; y is then part)
//   backward_weight: 1 x, 2 dy [B,CO,OH,OW], 3 unused, 4 part [CHUNKS, NW + CO]
//
// Dispatch (forward): (ceil(B*OH*OW / 64), ceil(CO / 8), 1) workgroups of 64 invocations;
// conv2d_relu_pool_subgroup: (ceil(B*PH*PW / 64), ceil(CO / 8), 1).

struct Params {
    batch: u32,
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
    flags: u32,       // 1 = add bias, 2 = ReLU
    chunk: u32,
    chunks: u32,
    batch0: u32,      // conv2d_forward_subgroup with WINDOW: first image of the dispatch
    x_base: u32,      // ... and where its x, w and bias start in their windows
    w_base: u32,
    bias_base: u32,
    pool: u32,        // conv2d_relu_pool_subgroup: window PK, stride S, pooled PH x PW
    stride: u32,
    pool_h: u32,
    pool_w: u32,
    g_base: u32,      // conv2d_relu_pool_backward_weight: window bases of g, pooled, argmax,
    y_base: u32,
    at_base: u32,
    slices: u32,      // ... position slices per dispatch, first partial-sum row
    part_row0: u32,
    _pad0: u32,
}

const BIAS: u32 = 1u;
const RELU: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;  // backward_weight: dy
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> x_win: array<vec4<f32>, 4096>;
@group(0) @binding(6) var<uniform> w_win: array<vec4<f32>, 4096>;
@group(0) @binding(7) var<uniform> bias_win: array<vec4<f32>, 4096>;
@group(0) @binding(8) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(9) var<uniform> g_win: array<vec4<f32>, 4096>;
@group(0) @binding(10) var<uniform> pooled_win: array<vec4<f32>, 4096>;
@group(0) @binding(11) var<uniform> at_win: array<vec4<u32>, 4096>;

override WINDOW: bool = false;

fn load_x(i: u32) -> f32 {
    if (WINDOW) {
        return x_win[i >> 2u][i & 3u];
    }
    return x[i];
}

fn load_w(i: u32) -> f32 {
    if (WINDOW) {
        return w_win[i >> 2u][i & 3u];
    }
    return w[i];
}

fn load_bias(i: u32) -> f32 {
    if (WINDOW) {
        return bias_win[i >> 2u][i & 3u];
    }
    return bias[i];
}

fn finish(acc: f32, co: u32, at: u32) {
    if (co < p.c_out) {
        var v = acc;
        if ((p.flags & BIAS) != 0u) {
            v += load_bias(p.bias_base + co);
        }
        if ((p.flags & RELU) != 0u) {
            v = max(v, 0.0);
        }
        y[at] = v;
    }
}

// The conv sums (before bias) of output pixel (oy, ox) of image bi of this dispatch for
// channels co0..co0+8; lane l supplies the weights of channel my_co = co0 + l. Every lane
// of the subgroup must call it (broadcasts), even those past the end.
fn conv8(bi: u32, oy: u32, ox: u32, my_co: u32) -> array<f32, 8> {
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    for (var ci = 0u; ci < p.c_in; ci++) {
        let x_plane = p.x_base + (bi * p.c_in + ci) * p.h * p.w;
        let w_plane = p.w_base + (my_co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = i32(oy + ky) - i32(p.pad_h);
            let row_ok = iy >= 0 && iy < i32(p.h);
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = i32(ox + kx) - i32(p.pad_w);
                let inside = row_ok && ix >= 0 && ix < i32(p.w);
                // Every lane takes part in the broadcasts, so no lane may skip the loads.
                let at = x_plane + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix, 0, i32(p.w) - 1));
                let xv = select(0.0, load_x(at), inside);
                let wv = load_w(w_plane + ky * p.kw + kx);
                a0 = fma(xv, subgroupBroadcast(wv, 0u), a0);
                a1 = fma(xv, subgroupBroadcast(wv, 1u), a1);
                a2 = fma(xv, subgroupBroadcast(wv, 2u), a2);
                a3 = fma(xv, subgroupBroadcast(wv, 3u), a3);
                a4 = fma(xv, subgroupBroadcast(wv, 4u), a4);
                a5 = fma(xv, subgroupBroadcast(wv, 5u), a5);
                a6 = fma(xv, subgroupBroadcast(wv, 6u), a6);
                a7 = fma(xv, subgroupBroadcast(wv, 7u), a7);
            }
        }
    }
    return array<f32, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
}

@compute @workgroup_size(64)
fn conv2d_forward_subgroup(@builtin(global_invocation_id) gid: vec3<u32>,
                           @builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(subgroup_invocation_id) lane: u32) {
    let pixels = p.out_h * p.out_w;
    let q = gid.x;
    let valid = q < p.batch * pixels;
    let qc = min(q, p.batch * pixels - 1u);
    let ox = qc % p.out_w;
    let oy = (qc / p.out_w) % p.out_h;
    let bi = qc / pixels;  // image of this dispatch; p.batch0 + bi of the batch
    let co0 = wid.y * 8u;
    let a = conv8(bi, oy, ox, min(co0 + (lane & 7u), p.c_out - 1u));
    if (valid) {
        let base = ((p.batch0 + bi) * p.c_out + co0) * pixels + oy * p.out_w + ox;
        finish(a[0], co0 + 0u, base + 0u * pixels);
        finish(a[1], co0 + 1u, base + 1u * pixels);
        finish(a[2], co0 + 2u, base + 2u * pixels);
        finish(a[3], co0 + 3u, base + 3u * pixels);
        finish(a[4], co0 + 4u, base + 4u * pixels);
        finish(a[5], co0 + 5u, base + 5u * pixels);
        finish(a[6], co0 + 6u, base + 6u * pixels);
        finish(a[7], co0 + 7u, base + 7u * pixels);
    }
}

// From the bits: `v != v` is folded to false by some drivers (lavapipe) that assume no NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// relu(conv + bias) of channel co at conv position `at` into the running max of its window
// (first maximum wins, a NaN anywhere wins: as pool.wgsl).
fn keep_max(conv: f32, co: u32, at: u32, first: bool, best: ptr<function, f32>, best_at: ptr<function, u32>) {
    let v = max(conv + load_bias(p.bias_base + min(co, p.c_out - 1u)), 0.0);
    if (first || (!is_nan(*best) && (is_nan(v) || v > *best))) {
        *best = v;
        *best_at = at;
    }
}

fn store_pooled(co: u32, i: u32, v: f32, at: u32) {
    if (co < p.c_out) {
        y[i] = v;
        argmax[i] = at;
    }
}

// conv2d_relu_pool_subgroup (WINDOW only): max_pool2d_forward(relu(conv2d + bias)) without
// the conv output: invocation q = (bi * PH + py) * PW + px owns pooled pixel (py, px) of 8
// channels, computes the conv at each of its PK x PK window positions, and writes the max
// to y [B,CO,PH,PW] and its position oy * OW + ox in the conv output plane to argmax
// (first maximum in row-major order wins, a NaN anywhere wins: as pool.wgsl).
@compute @workgroup_size(64)
fn conv2d_relu_pool_subgroup(@builtin(global_invocation_id) gid: vec3<u32>,
                             @builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(subgroup_invocation_id) lane: u32) {
    let pooled = p.pool_h * p.pool_w;
    let q = gid.x;
    let valid = q < p.batch * pooled;
    let qc = min(q, p.batch * pooled - 1u);
    let px = qc % p.pool_w;
    let py = (qc / p.pool_w) % p.pool_h;
    let bi = qc / pooled;
    let co0 = wid.y * 8u;
    let my_co = min(co0 + (lane & 7u), p.c_out - 1u);
    var best0 = 0.0;
    var at0 = 0u;
    var best1 = 0.0;
    var at1 = 0u;
    var best2 = 0.0;
    var at2 = 0u;
    var best3 = 0.0;
    var at3 = 0u;
    var best4 = 0.0;
    var at4 = 0u;
    var best5 = 0.0;
    var at5 = 0u;
    var best6 = 0.0;
    var at6 = 0u;
    var best7 = 0.0;
    var at7 = 0u;
    for (var ky = 0u; ky < p.pool; ky++) {
        for (var kx = 0u; kx < p.pool; kx++) {
            let oy = py * p.stride + ky;
            let ox = px * p.stride + kx;
            let a = conv8(bi, oy, ox, my_co);
            let first = ky == 0u && kx == 0u;
            let at = oy * p.out_w + ox;
            keep_max(a[0], co0 + 0u, at, first, &best0, &at0);
            keep_max(a[1], co0 + 1u, at, first, &best1, &at1);
            keep_max(a[2], co0 + 2u, at, first, &best2, &at2);
            keep_max(a[3], co0 + 3u, at, first, &best3, &at3);
            keep_max(a[4], co0 + 4u, at, first, &best4, &at4);
            keep_max(a[5], co0 + 5u, at, first, &best5, &at5);
            keep_max(a[6], co0 + 6u, at, first, &best6, &at6);
            keep_max(a[7], co0 + 7u, at, first, &best7, &at7);
        }
    }
    if (valid) {
        let base = ((p.batch0 + bi) * p.c_out + co0) * pooled + py * p.pool_w + px;
        store_pooled(co0 + 0u, base + 0u * pooled, best0, at0);
        store_pooled(co0 + 1u, base + 1u * pooled, best1, at1);
        store_pooled(co0 + 2u, base + 2u * pooled, best2, at2);
        store_pooled(co0 + 3u, base + 3u * pooled, best3, at3);
        store_pooled(co0 + 4u, base + 4u * pooled, best4, at4);
        store_pooled(co0 + 5u, base + 5u * pooled, best5, at5);
        store_pooled(co0 + 6u, base + 6u * pooled, best6, at6);
        store_pooled(co0 + 7u, base + 7u * pooled, best7, at7);
    }
}

// Partial-sum row `row` of part (binding 4): dweight [CO, CI, KH, KW] then dbias [CO]. One
// invocation's 9 taps (tap group tg: taps tg * 9 + j that exist) for (co, ci), and the dbias
// of co from the invocations of tap group 0 and ci 0.
fn store_part(row: u32, co: u32, ci: u32, tg: u32, s: array<f32, 9>, sum_g: f32) {
    let taps = p.kh * p.kw;
    let n_w = p.c_out * p.c_in * taps;
    let row_at = row * (n_w + p.c_out);
    let at = row_at + (co * p.c_in + ci) * taps + tg * 9u;
    for (var j = 0u; j < 9u; j++) {
        if (tg * 9u + j < taps) {
            y[at + j] = s[j];
        }
    }
    if (tg == 0u && ci == 0u) {
        y[row_at + n_w + co] = sum_g;
    }
}

@compute @workgroup_size(8)
fn conv2d_backward_weight_subgroup(@builtin(local_invocation_id) lid: vec3<u32>,
                                   @builtin(workgroup_id) wid: vec3<u32>,
                                   @builtin(subgroup_invocation_id) lane: u32) {
    let taps = p.kh * p.kw;
    let tap_groups = (taps + 8u) / 9u;
    let tg = wid.x % tap_groups;
    let ci = (wid.x / tap_groups) % p.c_in;
    let chunk = wid.x / (tap_groups * p.c_in);
    let co = wid.y * 8u + lid.x;
    let co_load = min(co, p.c_out - 1u);
    let pixels = p.out_h * p.out_w;
    let b_first = chunk * p.chunk;
    let count = (min(b_first + p.chunk, p.batch) - b_first) * pixels;
    // This lane's taps (clamped; the extra ones are never stored).
    let t0 = min(tg * 9u + 0u, taps - 1u);
    let t1 = min(tg * 9u + 1u, taps - 1u);
    let t2 = min(tg * 9u + 2u, taps - 1u);
    let t3 = min(tg * 9u + 3u, taps - 1u);
    let t4 = min(tg * 9u + 4u, taps - 1u);
    let t5 = min(tg * 9u + 5u, taps - 1u);
    let t6 = min(tg * 9u + 6u, taps - 1u);
    let t7 = min(tg * 9u + 7u, taps - 1u);
    let t8 = min(tg * 9u + 8u, taps - 1u);
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var s3 = 0.0;
    var s4 = 0.0;
    var s5 = 0.0;
    var s6 = 0.0;
    var s7 = 0.0;
    var s8 = 0.0;
    var sum_dy = 0.0;
    for (var p0 = 0u; p0 < count; p0 += 8u) {
        // Lane l's position: the input taps it loads, the dy offset it shares.
        let pos = p0 + (lane & 7u);
        let pos_ok = pos < count;
        let pc = min(pos, count - 1u);
        let bi = b_first + pc / pixels;
        let oy = (pc % pixels) / p.out_w;
        let ox = pc % p.out_w;
        let x_plane = (bi * p.c_in + ci) * p.h * p.w;
        let iy0 = i32(oy + t0 / p.kw) - i32(p.pad_h);
        let ix0 = i32(ox + t0 % p.kw) - i32(p.pad_w);
        let in0 = pos_ok && iy0 >= 0 && iy0 < i32(p.h) && ix0 >= 0 && ix0 < i32(p.w);
        let x0 = select(0.0, x[x_plane + u32(clamp(iy0, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix0, 0, i32(p.w) - 1))], in0);
        let iy1 = i32(oy + t1 / p.kw) - i32(p.pad_h);
        let ix1 = i32(ox + t1 % p.kw) - i32(p.pad_w);
        let in1 = pos_ok && iy1 >= 0 && iy1 < i32(p.h) && ix1 >= 0 && ix1 < i32(p.w);
        let x1 = select(0.0, x[x_plane + u32(clamp(iy1, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix1, 0, i32(p.w) - 1))], in1);
        let iy2 = i32(oy + t2 / p.kw) - i32(p.pad_h);
        let ix2 = i32(ox + t2 % p.kw) - i32(p.pad_w);
        let in2 = pos_ok && iy2 >= 0 && iy2 < i32(p.h) && ix2 >= 0 && ix2 < i32(p.w);
        let x2 = select(0.0, x[x_plane + u32(clamp(iy2, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix2, 0, i32(p.w) - 1))], in2);
        let iy3 = i32(oy + t3 / p.kw) - i32(p.pad_h);
        let ix3 = i32(ox + t3 % p.kw) - i32(p.pad_w);
        let in3 = pos_ok && iy3 >= 0 && iy3 < i32(p.h) && ix3 >= 0 && ix3 < i32(p.w);
        let x3 = select(0.0, x[x_plane + u32(clamp(iy3, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix3, 0, i32(p.w) - 1))], in3);
        let iy4 = i32(oy + t4 / p.kw) - i32(p.pad_h);
        let ix4 = i32(ox + t4 % p.kw) - i32(p.pad_w);
        let in4 = pos_ok && iy4 >= 0 && iy4 < i32(p.h) && ix4 >= 0 && ix4 < i32(p.w);
        let x4 = select(0.0, x[x_plane + u32(clamp(iy4, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix4, 0, i32(p.w) - 1))], in4);
        let iy5 = i32(oy + t5 / p.kw) - i32(p.pad_h);
        let ix5 = i32(ox + t5 % p.kw) - i32(p.pad_w);
        let in5 = pos_ok && iy5 >= 0 && iy5 < i32(p.h) && ix5 >= 0 && ix5 < i32(p.w);
        let x5 = select(0.0, x[x_plane + u32(clamp(iy5, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix5, 0, i32(p.w) - 1))], in5);
        let iy6 = i32(oy + t6 / p.kw) - i32(p.pad_h);
        let ix6 = i32(ox + t6 % p.kw) - i32(p.pad_w);
        let in6 = pos_ok && iy6 >= 0 && iy6 < i32(p.h) && ix6 >= 0 && ix6 < i32(p.w);
        let x6 = select(0.0, x[x_plane + u32(clamp(iy6, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix6, 0, i32(p.w) - 1))], in6);
        let iy7 = i32(oy + t7 / p.kw) - i32(p.pad_h);
        let ix7 = i32(ox + t7 % p.kw) - i32(p.pad_w);
        let in7 = pos_ok && iy7 >= 0 && iy7 < i32(p.h) && ix7 >= 0 && ix7 < i32(p.w);
        let x7 = select(0.0, x[x_plane + u32(clamp(iy7, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix7, 0, i32(p.w) - 1))], in7);
        let iy8 = i32(oy + t8 / p.kw) - i32(p.pad_h);
        let ix8 = i32(ox + t8 % p.kw) - i32(p.pad_w);
        let in8 = pos_ok && iy8 >= 0 && iy8 < i32(p.h) && ix8 >= 0 && ix8 < i32(p.w);
        let x8 = select(0.0, x[x_plane + u32(clamp(iy8, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix8, 0, i32(p.w) - 1))], in8);
        let dy_at = bi * p.c_out * pixels + oy * p.out_w + ox;  // + co * pixels per lane
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 0u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 0u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 0u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 0u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 0u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 0u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 0u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 0u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 0u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 0u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 0u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 1u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 1u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 1u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 1u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 1u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 1u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 1u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 1u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 1u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 1u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 1u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 2u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 2u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 2u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 2u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 2u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 2u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 2u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 2u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 2u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 2u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 2u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 3u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 3u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 3u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 3u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 3u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 3u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 3u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 3u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 3u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 3u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 3u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 4u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 4u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 4u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 4u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 4u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 4u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 4u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 4u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 4u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 4u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 4u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 5u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 5u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 5u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 5u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 5u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 5u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 5u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 5u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 5u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 5u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 5u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 6u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 6u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 6u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 6u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 6u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 6u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 6u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 6u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 6u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 6u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 6u), s8);
        }
        {
            let ok = subgroupBroadcast(select(0u, 1u, pos_ok), 7u) != 0u;
            let g = select(0.0, w[subgroupBroadcast(dy_at, 7u) + co_load * pixels], ok);
            sum_dy += g;
            s0 = fma(g, subgroupBroadcast(x0, 7u), s0);
            s1 = fma(g, subgroupBroadcast(x1, 7u), s1);
            s2 = fma(g, subgroupBroadcast(x2, 7u), s2);
            s3 = fma(g, subgroupBroadcast(x3, 7u), s3);
            s4 = fma(g, subgroupBroadcast(x4, 7u), s4);
            s5 = fma(g, subgroupBroadcast(x5, 7u), s5);
            s6 = fma(g, subgroupBroadcast(x6, 7u), s6);
            s7 = fma(g, subgroupBroadcast(x7, 7u), s7);
            s8 = fma(g, subgroupBroadcast(x8, 7u), s8);
        }
    }
    if (co < p.c_out) {
        store_part(chunk, co, ci, tg, array<f32, 9>(s0, s1, s2, s3, s4, s5, s6, s7, s8), sum_dy);
    }
}

// a / b for a < 2^22 through f32: llvmpipe has no vector integer division (each lane
// divides on its own, ~10x the cost), and a float division rounds to the right integer with
// this margin. Used on window positions only, which are < 16,384.
fn div_small(a: u32, b: u32) -> u32 {
    return u32((f32(a) + 0.5) / f32(b));
}

// x at input row oy + ky - PH, column ox + kx - PW of the plane starting at `plane` in the
// x window; zero outside the image.
fn x_tap(plane: u32, oy: u32, ox: u32, ky: u32, kx: u32) -> f32 {
    let iy = i32(oy + ky) - i32(p.pad_h);
    let ix = i32(ox + kx) - i32(p.pad_w);
    let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let at = plane + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix, 0, i32(p.w) - 1));
    return select(0.0, load_x(at), inside);
}

// conv2d_relu_pool_backward_weight (WINDOW only): dweight and dbias of a conv whose ReLU
// and max pool ran fused (conv2d_relu_pool_subgroup), straight from the pool's gradient g,
// output and argmax [B,CO,PH,PW]: the conv gradient is g at each window's argmax where the
// pooled value is > 0 and zero elsewhere, so only those positions are visited and the conv
// gradient is never written. Invocation (co fastest, then tap group of 9, ci, slice) sums
// over its slice of the dispatch's pooled positions; it writes partial row part_row0 +
// slice of part [rows, CO*CI*KH*KW + CO], laid out as conv2d_backward_weight's (sum the rows
// with reduce.wgsl). Lanes are output channels: each loads its own g, pooled value and
// argmax, then the 9 input taps at its own position: 12 uniform loads per 9 multiply-adds.
// Dispatch: (ceil(CO * ceil(KH*KW / 9) * CI * slices / 64), 1, 1) workgroups of 64.
@compute @workgroup_size(64)
fn conv2d_relu_pool_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>) {
    let taps = p.kh * p.kw;
    let tap_groups = (taps + 8u) / 9u;
    let co = gid.x % p.c_out;
    let tg = (gid.x / p.c_out) % tap_groups;
    let ci = (gid.x / (p.c_out * tap_groups)) % p.c_in;
    let slice = gid.x / (p.c_out * tap_groups * p.c_in);
    if (slice >= p.slices) {
        return;
    }
    let pooled = p.pool_h * p.pool_w;
    let total = p.batch * pooled;
    let per = (total + p.slices - 1u) / p.slices;
    let q_end = min(slice * per + per, total);
    // This invocation's taps (clamped; the extra ones are never stored) as (ky, kx).
    let t0 = min(tg * 9u + 0u, taps - 1u);
    let ky0 = t0 / p.kw;
    let kx0 = t0 % p.kw;
    let t1 = min(tg * 9u + 1u, taps - 1u);
    let ky1 = t1 / p.kw;
    let kx1 = t1 % p.kw;
    let t2 = min(tg * 9u + 2u, taps - 1u);
    let ky2 = t2 / p.kw;
    let kx2 = t2 % p.kw;
    let t3 = min(tg * 9u + 3u, taps - 1u);
    let ky3 = t3 / p.kw;
    let kx3 = t3 % p.kw;
    let t4 = min(tg * 9u + 4u, taps - 1u);
    let ky4 = t4 / p.kw;
    let kx4 = t4 % p.kw;
    let t5 = min(tg * 9u + 5u, taps - 1u);
    let ky5 = t5 / p.kw;
    let kx5 = t5 % p.kw;
    let t6 = min(tg * 9u + 6u, taps - 1u);
    let ky6 = t6 / p.kw;
    let kx6 = t6 % p.kw;
    let t7 = min(tg * 9u + 7u, taps - 1u);
    let ky7 = t7 / p.kw;
    let kx7 = t7 % p.kw;
    let t8 = min(tg * 9u + 8u, taps - 1u);
    let ky8 = t8 / p.kw;
    let kx8 = t8 % p.kw;
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var s3 = 0.0;
    var s4 = 0.0;
    var s5 = 0.0;
    var s6 = 0.0;
    var s7 = 0.0;
    var s8 = 0.0;
    var sum_g = 0.0;
    for (var q = slice * per; q < q_end; q++) {
        let bi = div_small(q, pooled);
        let o = (bi * p.c_out + co) * pooled + (q - bi * pooled);
        let i_y = p.y_base + o;
        let i_g = p.g_base + o;
        let i_at = p.at_base + o;
        let at = at_win[i_at >> 2u][i_at & 3u];
        let g = select(0.0, g_win[i_g >> 2u][i_g & 3u], pooled_win[i_y >> 2u][i_y & 3u] > 0.0);
        let oy = div_small(at, p.out_w);
        let ox = at - oy * p.out_w;
        let plane = p.x_base + (bi * p.c_in + ci) * p.h * p.w;
        sum_g += g;
        s0 = fma(g, x_tap(plane, oy, ox, ky0, kx0), s0);
        s1 = fma(g, x_tap(plane, oy, ox, ky1, kx1), s1);
        s2 = fma(g, x_tap(plane, oy, ox, ky2, kx2), s2);
        s3 = fma(g, x_tap(plane, oy, ox, ky3, kx3), s3);
        s4 = fma(g, x_tap(plane, oy, ox, ky4, kx4), s4);
        s5 = fma(g, x_tap(plane, oy, ox, ky5, kx5), s5);
        s6 = fma(g, x_tap(plane, oy, ox, ky6, kx6), s6);
        s7 = fma(g, x_tap(plane, oy, ox, ky7, kx7), s7);
        s8 = fma(g, x_tap(plane, oy, ox, ky8, kx8), s8);
    }
    store_part(p.part_row0 + slice, co, ci, tg, array<f32, 9>(s0, s1, s2, s3, s4, s5, s6, s7, s8), sum_g);
}
