// gather.wgsl: build a batch from the GPU-resident dataset.
//
// Two dataset kinds share the bindings below. order[] is the shuffled index order of one
// epoch, and s = order[start + b] is the sample that fills row b of the batch.
//
// Images: N images of P u8 pixels, packed four per u32 (pixel q of an image is byte q % 4
// of word q / 4 of that image's WPI = ceil(P / 4) words, little-endian), and N u8 labels
// packed the same way.
//
//   gather_batch:    for b < B, q < P:
//                    x[b, q] = src[s * WPI + q / 4].byte(q % 4) / 255
//                    dst[b]  = labels[s / 4].byte(s % 4)                  (written when q == 0)
//
// Rows: N f32 feature rows of D = P values and N f32 target rows of T values, both copied
// bit for bit as 32-bit words.
//
//   gather_rows_f32: for b < B, q < max(D, T):
//                    x[b, q]        = bitcast<f32>(src[s * D + q])        (q < D)
//                    dst[b * T + q] = labels[s * T + q]                   (q < T)
//
// Bindings (group 0), shared by both entry points:
//   0 uniform             Params { batch, pixels, words_per_image, start, targets }
//                         (start is rewritten by the host before each step's submit;
//                         targets = T, 0 for images)
//   1 storage read        src      images: pixels [N * WPI] u32;  rows: features [N, D] f32 bits
//   2 storage read        labels   images: [ceil(N / 4)] u32;     rows: targets [N, T] f32 bits
//   3 storage read        order    [epoch length] u32
//   4 storage read_write  x        [B, P] f32
//   5 storage read_write  dst      images: label [B] u32;         rows: target [B, T] f32 bits
//
// Dispatch: one invocation per element of x (rows: per (b, q < max(D, T))), 1-D over a 2-D
// grid of 256-wide workgroups.

struct Params {
    batch: u32,
    pixels: u32,
    words_per_image: u32,
    start: u32,
    targets: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<u32>;

fn byte_of(word: u32, k: u32) -> u32 {
    return (word >> (8u * k)) & 0xffu;
}

@compute @workgroup_size(256)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.batch * p.pixels) {
        return;
    }
    let b = i / p.pixels;
    let q = i % p.pixels;
    let s = order[p.start + b];
    x[i] = f32(byte_of(src[s * p.words_per_image + q / 4u], q % 4u)) / 255.0;
    if (q == 0u) {
        dst[b] = byte_of(labels[s / 4u], s % 4u);
    }
}

@compute @workgroup_size(256)
fn gather_rows_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let width = max(p.pixels, p.targets);
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.batch * width) {
        return;
    }
    let b = i / width;
    let q = i % width;
    let s = order[p.start + b];
    if (q < p.pixels) {
        x[b * p.pixels + q] = bitcast<f32>(src[s * p.pixels + q]);
    }
    if (q < p.targets) {
        dst[b * p.targets + q] = labels[s * p.targets + q];
    }
}
