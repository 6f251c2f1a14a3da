// reduce_axis.wgsl: reduce the middle axis of x viewed as [OUTER, R, INNER], in chunks.
//
//   reduce_axis:  out[(o * CHUNKS + c) * INNER + i] =
//                     OP_{k in [c * CHUNK, min((c + 1) * CHUNK, R))} x[(o * R + k) * INNER + i]
//                 divided by DIVISOR (R of the whole reduction for a mean's last pass, else 1).
//                 OP (override): 0 sum, 1 max, 2 min. Max and min return NaN when any
//                 element is NaN (pool.wgsl's rule: a NaN in the window wins).
//                 k runs in increasing order, so results are bit-for-bit reproducible.
//                 A long R takes several dispatches: each reduces chunks of at most
//                 CHUNK <= LOOP_BUDGET elements into [OUTER, CHUNKS, INNER] partials, which
//                 the next dispatch reduces (R = CHUNKS) until CHUNKS = 1.
//
// Bindings (group 0):
//   0 uniform             Params { outer, r, inner, chunk, chunks, divisor }
//   1 storage read        x    [OUTER, R, INNER] (the input, or the previous partials)
//   2 storage read_write  out  [OUTER, CHUNKS, INNER] (y itself when CHUNKS = 1)
//
// Dispatch: one invocation per output element, 1-D over a 2-D grid of 256-wide
// workgroups: j = gid.x + gid.y * num_workgroups.x * 256 = (o * CHUNKS + c) * INNER + i.
// Neighbouring invocations read neighbouring i (coalesced when INNER > 1).

struct Params {
    outer: u32,
    r: u32,
    inner: u32,
    chunk: u32,
    chunks: u32,
    divisor: f32,
    _pad0: u32,
    _pad1: u32,
}

const SUM: u32 = 0u;
const MAX: u32 = 1u;
const MIN: u32 = 2u;

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// From the bits: some drivers (lavapipe) fold `v != v` to false.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(256)
fn reduce_axis(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 256u;
    if (j >= p.outer * p.chunks * p.inner) {
        return;
    }
    let i = j % p.inner;
    let c = (j / p.inner) % p.chunks;
    let o = j / (p.inner * p.chunks);
    let k0 = c * p.chunk;
    let k1 = min(k0 + p.chunk, p.r);
    var at = (o * p.r + k0) * p.inner + i;
    var acc = x[at];
    var nan = acc;            // the last NaN seen, if any
    for (var k = k0 + 1u; k < k1; k++) {
        at += p.inner;
        let v = x[at];
        switch OP {
            case MAX: { acc = max(acc, v); }
            case MIN: { acc = min(acc, v); }
            default: { acc += v; }
        }
        if (is_nan(v)) {
            nan = v;
        }
    }
    if (OP != SUM && is_nan(nan)) {
        acc = nan;
    }
    out[j] = acc / p.divisor;
}
