// gather.wgsl: build a batch from the GPU-resident dataset.
//
// The dataset is N images of P u8 pixels, packed four per u32 (pixel q of an image is byte
// q % 4 of word q / 4 of that image's WPI = ceil(P / 4) words, little-endian), and N u8
// labels packed the same way. order[] is the shuffled index order of one epoch.
//
//   gather_batch: for b < B, q < P, with s = order[start + b]:
//                 x[b, q] = pixels[s * WPI + q / 4].byte(q % 4) / 255
//                 label[b] = labels[s / 4].byte(s % 4)                (written when q == 0)
//
// Bindings (group 0):
//   0 uniform             Params { batch, pixels, words_per_image, start }
//                         (start is rewritten by the host before each step's submit)
//   1 storage read        pixels   [N * WPI] u32
//   2 storage read        labels   [ceil(N / 4)] u32
//   3 storage read        order    [epoch length] u32
//   4 storage read_write  x        [B, P] f32
//   5 storage read_write  label    [B] u32
//
// Dispatch: one invocation per element of x, 1-D over a 2-D grid of 256-wide workgroups.

struct Params {
    batch: u32,
    pixels: u32,
    words_per_image: u32,
    start: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> label: array<u32>;

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
    x[i] = f32(byte_of(pixels[s * p.words_per_image + q / 4u], q % 4u)) / 255.0;
    if (q == 0u) {
        label[b] = byte_of(labels[s / 4u], s % 4u);
    }
}
