// conv2d.wgsl: 2-D convolution (cross-correlation, as PyTorch and Keras), NCHW, stride S.
//
// B = batch, CI = input channels, H x W = input size, CO = output channels,
// KH x KW = kernel size, (PH, PW) = top/left zero padding, S = stride (conv_stride),
// OH x OW = output size (valid: OH = (H - KH) / S + 1; same: OH = ceil(H / S)).
//
//   conv2d_forward:          y[b,co,oy,ox] = act(bias[co] + sum_{ci,ky,kx}
//                                 x[b,ci,oy*S+ky-PH,ox*S+kx-PW] * w[co,ci,ky,kx])
//   conv2d_backward_input:   dx[b,ci,iy,ix] = sum_{co,ky,kx} dy[b,co,(iy-ky+PH)/S,(ix-kx+PW)/S] * w[co,ci,ky,kx]
//                                 over the taps where S divides iy-ky+PH and ix-kx+PW
//   conv2d_backward_weight:  part[chunk, wi] for wi = ((co*CI + ci)*KH + ky)*KW + kx < NW:
//                                 sum_{b in chunk,oy,ox} dy[b,co,oy,ox] * x[b,ci,oy*S+ky-PH,ox*S+kx-PW]
//                            part[chunk, NW + co] = sum_{b in chunk,oy,ox} dy[b,co,oy,ox]  (dbias)
//                            Partial sums over chunks of CHUNK images keep every invocation's
//                            loop short (llvmpipe ends any invocation's loops after 65,535
//                            iterations in all) and fill wide GPUs; reduce.wgsl sums the chunks.
// Out-of-image taps read as zero.
//
// Bindings (group 0), the same four for every entry point (unused ones get any buffer):
//   0 uniform             Params (below)
//   1 storage read        in1   forward: x [B,CI,H,W]      backward_input: dy   backward_weight: dy [B,CO,OH,OW]
//   2 storage read        in2   forward: w [CO,CI,KH,KW]   backward_input: w    backward_weight: x
//   3 storage read        in3   forward: bias [CO]         (unused by the backward kernels)
//   4 storage read_write  out   forward: y [B,CO,OH,OW]    backward_input: dx [B,CI,H,W]
//                               backward_weight: part [CHUNKS, CO*CI*KH*KW + CO]
//
// Dispatch: one invocation per output element, 1-D over the output, flattened onto a 2-D
// grid of 256-wide workgroups: i = gid.x + gid.y * num_workgroups.x * 256.

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
    flags: u32,       // 1 = add bias, 2 = ReLU (forward only)
    chunk: u32,       // batch images per partial sum (backward_weight)
    chunks: u32,      // ceil(batch / chunk)
    batch0: u32,      // conv2d_forward_subgroup with WINDOW: first image of the dispatch
    x_base: u32,      // ... and where its x, w and bias start in their windows
    w_base: u32,
    bias_base: u32,
    pool: u32,        // conv2d_subgroup.wgsl's fused conv + ReLU + max pool only
    stride: u32,
    pool_h: u32,
    pool_w: u32,
    g_base: u32,      // g_base .. part_row0: conv2d_subgroup.wgsl's window kernels only
    y_base: u32,
    at_base: u32,
    slices: u32,
    part_row0: u32,
    conv_stride: u32, // S
}

const BIAS: u32 = 1u;
const RELU: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let n_out = p.batch * p.c_out * p.out_h * p.out_w;
    if (i >= n_out) {
        return;
    }
    // i = ((b * CO + co) * OH + oy) * OW + ox
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let co = (i / (p.out_w * p.out_h)) % p.c_out;
    let bi = i / (p.out_w * p.out_h * p.c_out);
    var acc = 0.0;
    for (var ci = 0u; ci < p.c_in; ci++) {
        let x_plane = (bi * p.c_in + ci) * p.h * p.w;
        let w_plane = (co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = i32(oy * p.conv_stride + ky) - i32(p.pad_h);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = i32(ox * p.conv_stride + kx) - i32(p.pad_w);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                acc = fma(in1[x_plane + u32(iy) * p.w + u32(ix)], in2[w_plane + ky * p.kw + kx], acc);
            }
        }
    }
    if ((p.flags & BIAS) != 0u) {
        acc += in3[co];
    }
    if ((p.flags & RELU) != 0u) {
        acc = max(acc, 0.0);
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn conv2d_backward_input(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let n_in = p.batch * p.c_in * p.h * p.w;
    if (i >= n_in) {
        return;
    }
    // i = ((b * CI + ci) * H + iy) * W + ix
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.c_in;
    let bi = i / (p.w * p.h * p.c_in);
    var acc = 0.0;
    for (var co = 0u; co < p.c_out; co++) {
        let dy_plane = (bi * p.c_out + co) * p.out_h * p.out_w;
        let w_plane = (co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            // oy = (iy - ky + PH) / S must be whole and lie in [0, OH)
            let ty = i32(iy + p.pad_h) - i32(ky);
            let oy = ty / i32(p.conv_stride);
            if (ty < 0 || oy * i32(p.conv_stride) != ty || oy >= i32(p.out_h)) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                let tx = i32(ix + p.pad_w) - i32(kx);
                let ox = tx / i32(p.conv_stride);
                if (tx < 0 || ox * i32(p.conv_stride) != tx || ox >= i32(p.out_w)) {
                    continue;
                }
                acc = fma(in1[dy_plane + u32(oy) * p.out_w + u32(ox)], in2[w_plane + ky * p.kw + kx], acc);
            }
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn conv2d_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let n_w = p.c_out * p.c_in * p.kh * p.kw;
    let row = n_w + p.c_out;
    if (i >= row * p.chunks) {
        return;
    }
    // i = chunk * (NW + CO) + wi
    let wi = i % row;
    let chunk = i / row;
    let b_end = min((chunk + 1u) * p.chunk, p.batch);
    if (wi >= n_w) {
        // dbias partial: sum of dy[b, co, :, :] over the chunk.
        let co = wi - n_w;
        var acc = 0.0;
        for (var bi = chunk * p.chunk; bi < b_end; bi++) {
            let dy_plane = (bi * p.c_out + co) * p.out_h * p.out_w;
            for (var o = 0u; o < p.out_h * p.out_w; o++) {
                acc += in1[dy_plane + o];
            }
        }
        out[i] = acc;
        return;
    }
    let kx = wi % p.kw;
    let ky = (wi / p.kw) % p.kh;
    let ci = (wi / (p.kw * p.kh)) % p.c_in;
    let co = wi / (p.kw * p.kh * p.c_in);
    // Output rows/columns whose tap (ky, kx) lands inside the image:
    // 0 <= oy*S + ky - PH < H  <=>  ceil((PH - ky) / S) <= oy < ceil((H + PH - ky) / S).
    let st = i32(p.conv_stride);
    let oy_lo = u32((max(i32(p.pad_h) - i32(ky), 0) + st - 1) / st);
    let oy_hi = u32(clamp((i32(p.h + p.pad_h) - i32(ky) + st - 1) / st, 0, i32(p.out_h)));
    let ox_lo = u32((max(i32(p.pad_w) - i32(kx), 0) + st - 1) / st);
    let ox_hi = u32(clamp((i32(p.w + p.pad_w) - i32(kx) + st - 1) / st, 0, i32(p.out_w)));
    var acc = 0.0;
    for (var bi = chunk * p.chunk; bi < b_end; bi++) {
        let dy_plane = (bi * p.c_out + co) * p.out_h * p.out_w;
        let x_plane = (bi * p.c_in + ci) * p.h * p.w;
        for (var oy = oy_lo; oy < oy_hi; oy++) {
            let dy_row = dy_plane + oy * p.out_w;
            let x_row = x_plane + (oy * p.conv_stride + ky - p.pad_h) * p.w + kx - p.pad_w;
            for (var ox = ox_lo; ox < ox_hi; ox++) {
                acc = fma(in1[dy_row + ox], in2[x_row + ox * p.conv_stride], acc);
            }
        }
    }
    out[i] = acc;
}
