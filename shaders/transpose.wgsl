// transpose.wgsl: y = x^T for a row-major matrix.
//
//   y[c * R + r] = x[r * C + c]        x [R, C], y [C, R], r < R, c < C
//
// Used where a matmul operand's layout does not cut into uniform windows (see
// matmul_subgroup.wgsl): a Dense layer's input [B, IN] and weight [OUT, IN] are transposed
// once per step so that all three of its matmuls read windows.
//
// Bindings (group 0):
//   0 uniform             Params { rows (R), cols (C) }
//   1 storage read        x  [R, C]
//   2 storage read_write  y  [C, R]
//
// Dispatch: one invocation per run of up to 64 consecutive elements of a row of y
// (i = c * ceil(R / 64) + run: writes are contiguous, and one integer division serves 64
// elements, which matters where lanes divide one at a time, as on llvmpipe), 1-D over a 2-D
// grid of 256-wide workgroups: i = gid.x + gid.y * num_workgroups.x * 256. (Reading x
// through uniform windows instead was no faster on lavapipe: the stores dominate.)

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let runs = (p.rows + 63u) / 64u;
    if (i >= runs * p.cols) {
        return;
    }
    let c = i / runs;
    let r0 = (i - c * runs) * 64u;
    let r_end = min(r0 + 64u, p.rows);
    for (var r = r0; r < r_end; r++) {
        y[c * p.rows + r] = x[r * p.cols + c];
    }
}
