// copy.wgsl: strided copy over an index box, the one kernel behind permute, slice, pad,
// concat and broadcast materialisation.
//
//   copy_strided:  for every k in the box dims[0] x ... x dims[rank-1] (rank <= 8):
//                  y[y_offset + sum_d k_d * ys[d]]  =  x[x_offset + sum_d k_d * xs[d]]
//                  or += with FLAG_ACCUMULATE. FLAT (override): the box merged to rank 1
//                  with both strides 1, indexed by i directly. Offsets and strides are in elements,
//                  relative to each binding's start (tensors may be views of one buffer).
//                  Box element i = sum_d k_d * prod_{e > d} dims[e] (row-major).
//                  The wrapper checks both index ranges and that no two k write one y
//                  element (so += needs no atomics and the result has no races).
//
// Bindings (group 0):
//   0 uniform             Params (below)
//   1 storage read        x
//   2 storage read_write  y
//
// Dispatch: one invocation per box element, 1-D over a 2-D grid of 256-wide workgroups:
// i = gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    n: u32,          // box elements
    rank: u32,
    flags: u32,
    _pad0: u32,
    x_offset: u32,
    y_offset: u32,
    _pad1: u32,
    _pad2: u32,
    dims: array<vec4<u32>, 2>,   // the box, dims[0][0] outermost; `rank` used
    xs: array<vec4<u32>, 2>,     // element strides of x and y over the box
    ys: array<vec4<u32>, 2>,
}

const FLAG_ACCUMULATE: u32 = 1u;

// The box merged to rank 1 with both strides 1: index x and y by i directly, which CPU
// adapters turn into vector loads (several times faster on lavapipe).
override FLAT: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) {
        return;
    }
    var ix = p.x_offset + i;
    var iy = p.y_offset + i;
    if (!FLAT) {
        // Innermost first; the outermost coordinate is what remains (i < N): no division
        // for rank 1 (integer division is slow on CPU adapters).
        var rem = i;
        ix = p.x_offset;
        iy = p.y_offset;
        for (var d = p.rank - 1u; d > 0u; d--) {
            let n = p.dims[d / 4u][d % 4u];
            let k = rem % n;
            rem = rem / n;
            ix += k * p.xs[d / 4u][d % 4u];
            iy += k * p.ys[d / 4u][d % 4u];
        }
        ix += rem * p.xs[0].x;
        iy += rem * p.ys[0].x;
    }
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        y[iy] += x[ix];
    } else {
        y[iy] = x[ix];
    }
}
