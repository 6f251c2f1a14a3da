// loss.wgsl: losses over a batch of B rows of C values, forward (per-sample loss) and
// backward (gradient of the batch-mean loss).
//
//   softmax_xent_forward:   prob[b,c] = exp(z[b,c] - max_c z) / sum_c exp(z[b,c] - max_c z)
//                           loss[b]   = log(sum_c exp(z[b,c] - max)) - (z[b,label[b]] - max)
//   softmax_xent_backward:  dz[b,c]   = (prob[b,c] - (c == label[b])) * scale      scale = 1/B
//   sigmoid_bce_forward:    (C = 1) prob[b] = sigmoid(z[b]),
//                           loss[b] = max(z,0) - z*t + log(1 + exp(-|z|)),  t = label[b] in {0,1}
//   sigmoid_bce_backward:   dz[b]     = (prob[b] - t) * scale
//   mse_forward:            loss[b]   = mean_c (z[b,c] - truth[b,c])^2;  prob = z (copied)
//   mse_backward:           dz[b,c]   = 2 * (z[b,c] - truth[b,c]) / C * scale
//
// Bindings (group 0), shared by every entry point:
//   0 uniform             Params { batch, classes, scale }
//   1 storage read        z       [B, C]  logits (softmax, sigmoid) or predictions (mse)
//   2 storage read        label   [B] u32 class index (softmax_xent, sigmoid_bce), unused by mse
//   3 storage read        truth   [B, C]  f32 regression target (mse only)
//   4 storage read_write  prob    [B, C]  forward output; read by the backward
//   5 storage read_write  out     forward: loss [B]   backward: dz [B, C]
//
// Dispatch: forward one invocation per row b; backward one per element (b, c).
// Both 1-D over a 2-D grid of 256-wide workgroups: i = gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    batch: u32,
    classes: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> label: array<u32>;
@group(0) @binding(3) var<storage, read> truth: array<f32>;
@group(0) @binding(4) var<storage, read_write> prob: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn softmax_xent_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = flat_id(gid, nwg);
    if (b >= p.batch) {
        return;
    }
    let row = b * p.classes;
    var zmax = z[row];
    for (var c = 1u; c < p.classes; c++) {
        zmax = max(zmax, z[row + c]);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        let e = exp(z[row + c] - zmax);
        prob[row + c] = e;
        sum += e;
    }
    for (var c = 0u; c < p.classes; c++) {
        prob[row + c] = prob[row + c] / sum;
    }
    let y = min(label[b], p.classes - 1u);
    out[b] = log(sum) - (z[row + y] - zmax);
}

@compute @workgroup_size(256)
fn softmax_xent_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.classes) {
        return;
    }
    let b = i / p.classes;
    let c = i % p.classes;
    let onehot = select(0.0, 1.0, label[b] == c);
    out[i] = (prob[i] - onehot) * p.scale;
}

@compute @workgroup_size(256)
fn sigmoid_bce_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = flat_id(gid, nwg);
    if (b >= p.batch) {
        return;
    }
    let x = z[b];
    let t = select(0.0, 1.0, label[b] != 0u);
    let e = exp(-abs(x));
    prob[b] = select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
    out[b] = max(x, 0.0) - x * t + log(1.0 + e);
}

@compute @workgroup_size(256)
fn sigmoid_bce_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = flat_id(gid, nwg);
    if (b >= p.batch) {
        return;
    }
    let t = select(0.0, 1.0, label[b] != 0u);
    out[b] = (prob[b] - t) * p.scale;
}

@compute @workgroup_size(256)
fn mse_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = flat_id(gid, nwg);
    if (b >= p.batch) {
        return;
    }
    let row = b * p.classes;
    var sum = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        let d = z[row + c] - truth[row + c];
        prob[row + c] = z[row + c];
        sum += d * d;
    }
    out[b] = sum / f32(p.classes);
}

@compute @workgroup_size(256)
fn mse_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.batch * p.classes) {
        return;
    }
    out[i] = 2.0 * (z[i] - truth[i]) / f32(p.classes) * p.scale;
}
