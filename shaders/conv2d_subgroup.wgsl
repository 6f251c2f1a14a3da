// conv2d_subgroup.wgsl: conv2d forward (NCHW, stride 1, as conv2d.wgsl's conv2d_forward)
// for adapters with subgroups of at least 8 invocations.
//
//   conv2d_forward_subgroup: y[b,co,oy,ox] = act(bias[co] + sum_{ci,ky,kx}
//                                 x[b,ci,oy+ky-PH,ox+kx-PW] * w[co,ci,ky,kx])
//
// Invocation q = (b * OH + oy) * OW + ox owns one output pixel for 8 output channels
// co0..co0+8 (co0 = workgroup_id.y * 8). Per tap it loads the input pixel once and, on lane
// l, the weight of channel co0 + l; subgroupBroadcast hands the 8 weights to every lane:
// 2 loads per 8 multiply-adds instead of 2 per 1. Out-of-image taps read as zero.
//
// Bindings (group 0), as conv2d.wgsl:
//   0 uniform  Params (as conv2d.wgsl)      1 storage read x [B,CI,H,W]
//   2 storage read w [CO,CI,KH,KW]          3 storage read bias [CO]
//   4 storage read_write y [B,CO,OH,OW]
//
// Dispatch: (ceil(B*OH*OW / 64), ceil(CO / 8), 1) workgroups of 64 invocations.

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
    _pad0: u32,
    _pad1: u32,
}

const BIAS: u32 = 1u;
const RELU: u32 = 2u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn finish(acc: f32, co: u32, at: u32) {
    if (co < p.c_out) {
        var v = acc;
        if ((p.flags & BIAS) != 0u) {
            v += bias[co];
        }
        if ((p.flags & RELU) != 0u) {
            v = max(v, 0.0);
        }
        y[at] = v;
    }
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
    let bi = qc / pixels;
    let co0 = wid.y * 8u;
    let my_co = min(co0 + (lane & 7u), p.c_out - 1u);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    for (var ci = 0u; ci < p.c_in; ci++) {
        let x_plane = (bi * p.c_in + ci) * p.h * p.w;
        let w_plane = (my_co * p.c_in + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = i32(oy + ky) - i32(p.pad_h);
            let row_ok = iy >= 0 && iy < i32(p.h);
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = i32(ox + kx) - i32(p.pad_w);
                let inside = row_ok && ix >= 0 && ix < i32(p.w);
                // Every lane takes part in the broadcasts, so no lane may skip the loads.
                let at = x_plane + u32(clamp(iy, 0, i32(p.h) - 1)) * p.w + u32(clamp(ix, 0, i32(p.w) - 1));
                let xv = select(0.0, x[at], inside);
                let wv = w[w_plane + ky * p.kw + kx];
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
    if (valid) {
        let base = (bi * p.c_out + co0) * pixels + oy * p.out_w + ox;
        finish(a0, co0 + 0u, base + 0u * pixels);
        finish(a1, co0 + 1u, base + 1u * pixels);
        finish(a2, co0 + 2u, base + 2u * pixels);
        finish(a3, co0 + 3u, base + 3u * pixels);
        finish(a4, co0 + 4u, base + 4u * pixels);
        finish(a5, co0 + 5u, base + 5u * pixels);
        finish(a6, co0 + 6u, base + 6u * pixels);
        finish(a7, co0 + 7u, base + 7u * pixels);
    }
}
