// optim.wgsl: optimizer updates over one flat parameter buffer, one dispatch per step.
//
//   adam (Keras formulation, bias correction folded into alpha):
//     alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)       (computed on the host per step)
//     m[i] = m[i] + (g[i] - m[i]) * (1 - beta1)
//     v[i] = v[i] + (g[i]^2 - v[i]) * (1 - beta2)
//     param[i] -= alpha * m[i] / (sqrt(v[i]) + epsilon)
//   sgd (Keras momentum):
//     m[i] = momentum * m[i] - lr * g[i];   param[i] += m[i]      (velocity kept in m)
//
// Bindings (group 0), shared by both entry points:
//   0 uniform             Params { n, lr (sgd) or alpha (adam), beta1 or momentum, beta2, epsilon }
//   1 storage read        grad    [N]
//   2 storage read_write  param   [N]
//   3 storage read_write  m       [N]  first moment (adam) / velocity (sgd)
//   4 storage read_write  v       [N]  second moment (adam; unused by sgd)
//
// Dispatch: one invocation per parameter, 1-D over a 2-D grid of 256-wide workgroups.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let g = grad[i];
    let mi = m[i] + (g - m[i]) * (1.0 - p.beta1);
    let vi = v[i] + (g * g - v[i]) * (1.0 - p.beta2);
    m[i] = mi;
    v[i] = vi;
    param[i] -= p.lr * mi / (sqrt(vi) + p.epsilon);
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let velocity = p.beta1 * m[i] - p.lr * grad[i];
    m[i] = velocity;
    param[i] += velocity;
}
