// optim.wgsl: optimizer updates over one flat parameter buffer, one dispatch per step, and
// the two passes of the global gradient norm that clipping reads.
//
//   N = parameters (flat, padding included; padding stays zero), t = update number (1-based),
//   lr = the scheduled rate of this step (computed on the host per step: src/schedule.rs).
//
//   gradient clipping (override CLIP, torch.nn.utils.clip_grad_norm_):
//     g[i] = grad[i] * min(1, clip / (sqrt(norm[0]) + 1e-6))       norm[0] = sum_i grad[i]^2
//   decoupled weight decay (override DECAY; AdamW, PyTorch's order):
//     param[i] *= decay       decay = 1 - lr * weight_decay            (host)
//   adam (Keras formulation, bias correction folded into alpha):
//     alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t)                    (host)
//     m[i] = m[i] + (g - m[i]) * (1 - beta1)
//     v[i] = v[i] + (g^2 - v[i]) * (1 - beta2)
//     param[i] -= alpha * m[i] / (sqrt(v[i]) + epsilon)
//   sgd (Keras momentum, velocity kept in m):
//     m[i] = momentum * m[i] - lr * g
//     param[i] += m[i]                                  (override NESTEROV false)
//     param[i] += momentum * m[i] - lr * g              (override NESTEROV true)
//     With a constant rate this is PyTorch's SGD (velocity = -lr * momentum_buffer), Nesterov
//     included: PyTorch's p -= lr * (g + mu * b), b = mu * b + g.
//   grad_sumsq_partial: norm[1 + w] = sum of grad[i]^2 over the W-th block of
//     256 * per_thread elements, i = w * 256 * per_thread + k * 256 + lane (k < per_thread),
//     each lane summing its k in order, then a fixed tree over the 256 lanes.
//   grad_sumsq_final: norm[0] = sum of norm[1 + w] over w < G, G = ceil(N / (256 * per_thread)),
//     lane l summing w = l, l + 256, ... in order, then the same fixed tree.
//   No atomics: every run adds in the same order and gives the same bits.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform             Params { n, lr (sgd) or alpha (adam), beta1 or momentum, beta2,
//                                  epsilon, decay, clip, per_thread }
//   1 storage read        grad    [N]
//   2 storage read_write  param   [N]      (unused by the norm passes)
//   3 storage read_write  m       [N]      first moment (adam) / velocity (sgd); unused by norm
//   4 storage read_write  v       [N]      second moment (adam); unused by sgd and norm
//   5 storage read_write  norm    [1 + G]  [0] = sum of squares, [1..] = partial sums;
//                                          read by the updates only with CLIP
//
// Dispatch: adam, sgd: one invocation per parameter, 1-D over a 2-D grid of 256-wide
// workgroups. grad_sumsq_partial: G workgroups of 256 (G <= 65,535 along x).
// grad_sumsq_final: one workgroup of 256. per_thread and ceil(G / 256) stay far below the
// loop budget (the host checks).

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    decay: f32,
    clip: f32,
    per_thread: u32,
}

override NESTEROV: bool = false;
override DECAY: bool = false;
override CLIP: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> norm: array<f32>;

var<workgroup> lanes: array<f32, 256>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The gradient this update applies: clipped by the global norm when CLIP is set.
fn gradient(i: u32) -> f32 {
    if (CLIP) {
        let scale = min(1.0, p.clip / (sqrt(norm[0]) + 1e-6));
        return grad[i] * scale;
    }
    return grad[i];
}

// The parameter before the update: decayed (decoupled weight decay) when DECAY is set.
fn decayed(i: u32) -> f32 {
    if (DECAY) {
        return param[i] * p.decay;
    }
    return param[i];
}

@compute @workgroup_size(256)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let g = gradient(i);
    let mi = m[i] + (g - m[i]) * (1.0 - p.beta1);
    let vi = v[i] + (g * g - v[i]) * (1.0 - p.beta2);
    m[i] = mi;
    v[i] = vi;
    param[i] = decayed(i) - p.lr * mi / (sqrt(vi) + p.epsilon);
}

@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let g = gradient(i);
    let velocity = p.beta1 * m[i] - p.lr * g;
    m[i] = velocity;
    if (NESTEROV) {
        param[i] = decayed(i) + (p.beta1 * velocity - p.lr * g);
    } else {
        param[i] = decayed(i) + velocity;
    }
}

// Fixed-order tree over the 256 lanes; lanes[0] holds the sum afterwards.
fn tree_sum(lane: u32) {
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lane < stride) {
            lanes[lane] = lanes[lane] + lanes[lane + stride];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn grad_sumsq_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = wid.x * 256u * p.per_thread;
    var acc = 0.0;
    for (var k = 0u; k < p.per_thread; k = k + 1u) {
        let i = base + k * 256u + lane;
        if (i < p.n) {
            let g = grad[i];
            acc = acc + g * g;
        }
    }
    lanes[lane] = acc;
    tree_sum(lane);
    if (lane == 0u) {
        norm[1u + wid.x] = lanes[0];
    }
}

@compute @workgroup_size(256)
fn grad_sumsq_final(@builtin(local_invocation_index) lane: u32) {
    let groups = (p.n + 256u * p.per_thread - 1u) / (256u * p.per_thread);
    var acc = 0.0;
    for (var w = lane; w < groups; w = w + 256u) {
        acc = acc + norm[1u + w];
    }
    lanes[lane] = acc;
    tree_sum(lane);
    if (lane == 0u) {
        norm[0] = lanes[0];
    }
}
