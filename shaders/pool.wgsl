// pool.wgsl: 2-D max and average pooling, NCHW, no padding (Keras "valid"), window PK x PK,
// stride S.
//
// B = batch, C = channels, H x W = input, OH = (H - PK) / S + 1, OW = (W - PK) / S + 1.
//
//   max_pool2d_forward:   y[b,c,oy,ox]   = max_{ky,kx < PK} x[b,c,oy*S+ky,ox*S+kx]
//                         argmax[b,c,oy,ox] = iy * W + ix of that maximum (first one on ties;
//                         a NaN in the window wins: y is the first NaN, argmax its position)
//   max_pool2d_backward:  dx[b,c,iy,ix]  = sum over the windows (oy,ox) that contain (iy,ix)
//                                          and whose argmax is (iy,ix) of dy[b,c,oy,ox]
//                         One invocation per element of dx: it gathers rather than scatters,
//                         so overlapping windows (S < PK) need no atomics and the sum order
//                         is fixed.
//   max_pool2d_backward_cells: the same dx when S >= PK (windows do not overlap), with one
//                         invocation per window: the S x S cell at (oy*S, ox*S) (the last
//                         row and column of cells reach the image edge) gets dy at the argmax
//                         and zero elsewhere: 2 loads per window instead of ~2 per element.
//   avg_pool2d_forward:   y[b,c,oy,ox]   = sum_{ky,kx < PK} x[b,c,oy*S+ky,ox*S+kx] / PK^2
//   avg_pool2d_backward:  dx[b,c,iy,ix]  = sum over the windows (oy,ox) that contain (iy,ix)
//                                          of dy[b,c,oy,ox] / PK^2, one invocation per
//                                          element of dx (a gather, fixed order).
//                         Neither average entry uses argmax or pooled (bind any buffer).
// With flag 1 (RELU) both backward kernels also apply the backward of a ReLU that came
// before the pool: dx is kept only where the pooled value y[b,c,oy,ox] > 0 (the input at the
// argmax is that value), which saves a separate pass over the larger input.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform             Params (below)
//   1 storage read        src      forward: x [B,C,H,W]       backward: dy [B,C,OH,OW]
//   2 storage read_write  argmax   [B,C,OH,OW] as u32: written by forward, read by backward
//   3 storage read_write  dst      forward: y [B,C,OH,OW]     backward: dx [B,C,H,W]
//   4 storage read        pooled   backward with RELU: the forward's y [B,C,OH,OW]; else unused
//
// Dispatch: one invocation per element of dst (cells: per window), 1-D over a 2-D grid of
// 256-wide workgroups.

struct Params {
    batch: u32,
    channels: u32,
    h: u32,
    w: u32,
    out_h: u32,
    out_w: u32,
    pool: u32,
    stride: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const RELU: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read> pooled: array<f32>;

// dy of window o, or zero where a ReLU before the pool was inactive.
fn window_grad(o: u32) -> f32 {
    if ((p.flags & RELU) != 0u && !(pooled[o] > 0.0)) {
        return 0.0;
    }
    return src[o];
}

// From the bits: `v != v` is folded to false by some drivers (lavapipe) that assume no NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The windows (oy, ox) in [lo, hi) x [lo, hi) that contain input pixel (iy, ix):
// oy * S <= iy < oy * S + PK. Returns (oy_lo, oy_hi, ox_lo, ox_hi).
fn windows_of(iy: u32, ix: u32) -> vec4<u32> {
    let oy_lo = select(0u, (iy - p.pool + p.stride) / p.stride, iy + 1u > p.pool);
    let oy_hi = min(iy / p.stride + 1u, p.out_h);
    let ox_lo = select(0u, (ix - p.pool + p.stride) / p.stride, ix + 1u > p.pool);
    let ox_hi = min(ix / p.stride + 1u, p.out_w);
    return vec4<u32>(oy_lo, oy_hi, ox_lo, ox_hi);
}

@compute @workgroup_size(256)
fn max_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.channels * p.out_h * p.out_w) {
        return;
    }
    // i = (plane * OH + oy) * OW + ox, plane = b * C + c
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let base = plane * p.h * p.w;
    var best = src[base + oy * p.stride * p.w + ox * p.stride];
    var best_at = oy * p.stride * p.w + ox * p.stride;
    for (var ky = 0u; ky < p.pool; ky++) {
        for (var kx = 0u; kx < p.pool; kx++) {
            let at = (oy * p.stride + ky) * p.w + ox * p.stride + kx;
            let v = src[base + at];
            // NaN propagates: the first NaN in the window wins and stays (tested from the
            // bits before any comparison, which a driver assuming no NaN may fold).
            if (!is_nan(best) && (is_nan(v) || v > best)) {
                best = v;
                best_at = at;
            }
        }
    }
    dst[i] = best;
    argmax[i] = best_at;
}

@compute @workgroup_size(256)
fn max_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.channels * p.h * p.w) {
        return;
    }
    // i = (plane * H + iy) * W + ix
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let at = iy * p.w + ix;
    let win = windows_of(iy, ix);
    var acc = 0.0;
    for (var oy = win.x; oy < win.y; oy++) {
        for (var ox = win.z; ox < win.w; ox++) {
            let o = (plane * p.out_h + oy) * p.out_w + ox;
            if (argmax[o] == at) {
                acc += window_grad(o);
            }
        }
    }
    dst[i] = acc;
}

@compute @workgroup_size(256)
fn max_pool2d_backward_cells(@builtin(global_invocation_id) gid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_id(gid, nwg);
    if (o >= p.batch * p.channels * p.out_h * p.out_w) {
        return;
    }
    let ox = o % p.out_w;
    let oy = (o / p.out_w) % p.out_h;
    let plane = o / (p.out_w * p.out_h);
    let base = plane * p.h * p.w;
    let g = window_grad(o);
    let at = argmax[o];
    // This window's cell; the last row/column of cells runs to the image edge.
    let y_end = select((oy + 1u) * p.stride, p.h, oy + 1u == p.out_h);
    let x_end = select((ox + 1u) * p.stride, p.w, ox + 1u == p.out_w);
    for (var iy = oy * p.stride; iy < y_end; iy++) {
        for (var ix = ox * p.stride; ix < x_end; ix++) {
            let here = iy * p.w + ix;
            dst[base + here] = select(0.0, g, here == at);
        }
    }
}

@compute @workgroup_size(256)
fn avg_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.channels * p.out_h * p.out_w) {
        return;
    }
    // i = (plane * OH + oy) * OW + ox, plane = b * C + c
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let base = plane * p.h * p.w;
    var acc = 0.0;
    for (var ky = 0u; ky < p.pool; ky++) {
        for (var kx = 0u; kx < p.pool; kx++) {
            acc += src[base + (oy * p.stride + ky) * p.w + ox * p.stride + kx];
        }
    }
    dst[i] = acc / f32(p.pool * p.pool);
}

@compute @workgroup_size(256)
fn avg_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.channels * p.h * p.w) {
        return;
    }
    // i = (plane * H + iy) * W + ix
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let win = windows_of(iy, ix);
    var acc = 0.0;
    for (var oy = win.x; oy < win.y; oy++) {
        for (var ox = win.z; ox < win.w; ox++) {
            acc += src[(plane * p.out_h + oy) * p.out_w + ox];
        }
    }
    dst[i] = acc / f32(p.pool * p.pool);
}
