// random.wgsl: counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11, as in
// Random123, cuRAND and PyTorch): the same (seed, counter, element) gives the same bits on
// every adapter, and no state is kept between dispatches.
//
// Random word j of the stream is word j % 4 of the block
//   w_j = philox4x32_10(ctr = (j / 4, 0, counter_lo, counter_hi), key = (seed_lo, seed_hi))
//
//   random_uniform:  y[i] = (w_i >> 8) * 2^-24     a uniform float in [0, 1), exact in f32
//   dropout_mask:    mask[i] = scale if (w_i >> 8) >= threshold else 0
//                    threshold = round(p * 2^24), scale = 1 / (1 - p) (both from the host),
//                    so P(drop) = threshold / 2^24 ~ p and E[mask] ~ 1.
//   text_windows:    B windows of T + 1 tokens drawn from tok[off .. off + len) (one split
//                    of the encoded text); row b < B starts at
//                      start_b = floor(w_b * (len - T) / 2^32)   (the high word of the
//                                                                 64-bit product: exact)
//                    so 0 <= start_b < len - T, and for t < T, i = b * T + t:
//                      x[i] = tok[off + start_b + t]      (inputs)
//                      y[i] = tok[off + start_b + t + 1]  (next-token targets)
//   augment_images:  a training batch x [B, C, H, W] (f32 bits in out2) shifted and flipped
//                    per image into out, the image's block w = block(b) giving
//                      dy = floor(w.x * (2S + 1) / 2^32) - S,  dx = likewise from w.y,
//                      flip = F and (w.z >> 31) == 1        (S = max shift, F = flip on)
//                    and for i = ((b * C + c) * H + y) * W + x, with u = x - dx and
//                    sx = W - 1 - u when flipped, else u:
//                      out[i] = x[((b * C + c) * H + y - dy) * W + sx]
//                               when 0 <= y - dy < H and 0 <= u < W, else 0
//                    (the image flipped, then moved by (dy, dx) with zeros coming in:
//                    torchvision's RandomCrop(padding=S) and RandomHorizontalFlip in law).
// The host rewrites counter (byte offset 24 of Params) per step, so one recorded dispatch
// draws fresh numbers each step; distinct streams take distinct seeds.
//
// Bindings (group 0):
//   0 uniform             Params { n, threshold, scale, _, seed_lo, seed_hi, counter_lo,
//                         counter_hi, seq_len, tok_offset, tok_len, _, channels, height,
//                         width, max_shift, flip, _, _, _ }
//   1 storage read_write  out   [n] 32-bit words: y or mask as f32 bits (random_uniform,
//                         dropout_mask); x [B * T] u32 (text_windows); the augmented
//                         batch [B, C, H, W] as f32 bits (augment_images)
//   2 storage read_write  out2  [B * T] u32: y (text_windows); the gathered batch x
//                         [B, C, H, W] as f32 bits, only read (augment_images)
//   3 storage read        tok   the encoded text, u32 (text_windows only)
//
// Dispatch, 1-D over a 2-D grid of 256-wide workgroups (k = gid.x + gid.y * nwg.x * 256):
//   random_uniform, dropout_mask: one invocation per block of 4 elements, k < ceil(n / 4);
//                                 elements past n are not written.
//   text_windows:                 one invocation per output element, i = k < n = B * T
//                                 (each recomputes its row's block: 10 rounds, no memory).
//   augment_images:               one invocation per output element, i = k < n =
//                                 B * C * H * W (each recomputes its image's block).

struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    _pad: u32,
    seed_lo: u32,
    seed_hi: u32,
    counter_lo: u32,
    counter_hi: u32,
    seq_len: u32,
    tok_offset: u32,
    tok_len: u32,
    _pad1: u32,
    channels: u32,
    height: u32,
    width: u32,
    max_shift: u32,
    flip: u32,
    _pad2: u32,
    _pad3: u32,
    _pad4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read_write> out2: array<u32>;
@group(0) @binding(3) var<storage, read> tok: array<u32>;

// (hi, lo) 32-bit halves of the 64-bit product a * b, from 16-bit pieces (WGSL has no u64).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu;
    let ah = a >> 16u;
    let bl = b & 0xffffu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = ah * bh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox4x32_10(ctr_in: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var c = ctr_in;
    var k = key_in;
    for (var round = 0u; round < 10u; round++) {
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k += vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// The 4 random words of block b (words 4b .. 4b + 3 of the stream).
fn block(b: u32) -> vec4<u32> {
    let ctr = vec4<u32>(b, 0u, p.counter_lo, p.counter_hi);
    return philox4x32_10(ctr, vec2<u32>(p.seed_lo, p.seed_hi));
}

@compute @workgroup_size(256)
fn random_uniform(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = (gid.x + gid.y * nwg.x * 256u) * 4u;
    if (first >= p.n) {
        return;
    }
    let w = block(first / 4u);
    for (var j = 0u; j < 4u && first + j < p.n; j++) {
        out[first + j] = bitcast<u32>(f32(w[j] >> 8u) * (1.0 / 16777216.0));
    }
}

@compute @workgroup_size(256)
fn dropout_mask(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = (gid.x + gid.y * nwg.x * 256u) * 4u;
    if (first >= p.n) {
        return;
    }
    let w = block(first / 4u);
    for (var j = 0u; j < 4u && first + j < p.n; j++) {
        out[first + j] = bitcast<u32>(select(0.0, p.scale, (w[j] >> 8u) >= p.threshold));
    }
}

@compute @workgroup_size(256)
fn text_windows(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let b = i / p.seq_len;
    let t = i - b * p.seq_len;
    let w = block(b / 4u)[b % 4u];
    let start = mulhilo(w, p.tok_len - p.seq_len).x;
    let src = p.tok_offset + start + t;
    out[i] = tok[src];
    out2[i] = tok[src + 1u];
}

// A shift in [-S, S] from a random word: floor(w * (2S + 1) / 2^32) - S, exact.
fn shift_of(w: u32) -> i32 {
    return i32(mulhilo(w, 2u * p.max_shift + 1u).x) - i32(p.max_shift);
}

@compute @workgroup_size(256)
fn augment_images(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    let hw = p.height * p.width;
    let plane = i / hw;                // b * C + c
    let b = plane / p.channels;
    let y = i32((i % hw) / p.width);
    let x = i32(i % p.width);
    let w = block(b);
    let sy = y - shift_of(w.x);
    let u = x - shift_of(w.y);
    let flipped = p.flip != 0u && (w.z >> 31u) == 1u;
    let sx = select(u, i32(p.width) - 1 - u, flipped);
    let inside = sy >= 0 && sy < i32(p.height) && u >= 0 && u < i32(p.width);
    var v = 0u;
    if (inside) {
        v = out2[plane * hw + u32(sy) * p.width + u32(sx)];
    }
    out[i] = v;
}
