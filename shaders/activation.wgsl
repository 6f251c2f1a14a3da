// activation.wgsl: elementwise activations and their backward passes, over N elements.
//
//   relu_forward:      y[i]  = max(x[i], 0)
//   relu_backward:     dx[i] = dy[i] if y[i] > 0 else 0          (uses the forward output y)
//   sigmoid_forward:   y[i]  = 1 / (1 + exp(-x[i]))               (computed without overflow)
//   sigmoid_backward:  dx[i] = dy[i] * y[i] * (1 - y[i])
//
// Bindings (group 0), shared by every entry point:
//   0 uniform             Params { n }
//   1 storage read        in1   forward: x [N]     backward: dy [N]
//   2 storage read        in2   forward: unused    backward: y [N] (the forward output)
//   3 storage read_write  out   forward: y [N]     backward: dx [N]
//
// Dispatch: one invocation per element, 1-D over a 2-D grid of 256-wide workgroups:
// i = gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        out[i] = max(in1[i], 0.0);
    }
}

@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        out[i] = select(0.0, in1[i], in2[i] > 0.0);
    }
}

@compute @workgroup_size(256)
fn sigmoid_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let x = in1[i];
        // exp of a non-positive number only: no overflow for large |x|.
        let e = exp(-abs(x));
        out[i] = select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
    }
}

@compute @workgroup_size(256)
fn sigmoid_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let y = in2[i];
        out[i] = in1[i] * y * (1.0 - y);
    }
}
