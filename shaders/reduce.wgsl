// reduce.wgsl: reductions that stay on the GPU.
//
//   sum_outer_inner:    out[j] = sum_{r < R} sum_{i < I} x[(r * J + J0 + j) * I + i]   j < COUNT
//                       (x viewed as [R, J, I]; sums axes 0 and 2 of columns J0..J0+COUNT)
//                       Dense dbias: x = dy [B, N] (R = B, J = N, I = 1);
//                       conv2d dweight, dbias: x = partial sums [CHUNKS, NW + CO], I = 1,
//                       J0 = 0, COUNT = NW for dweight and J0 = NW, COUNT = CO for dbias.
//   accumulate_metrics: metrics[0] += sum_b loss[b]; metrics[1] += number of rows whose
//                       prediction equals label[b]; metrics[2] += B;
//                       metrics[3] = 1 when any loss is NaN or infinite.
//                       Prediction: argmax_c prob[b, c] (first on ties) for C > 1,
//                       prob[b] > 0.5 for C = 1; no accuracy for mode 2 (regression).
//
// Bindings (group 0), shared by both entry points:
//   0 uniform             Params { r, j, i, mode, j0, count }  (accumulate_metrics: r = B, j = C)
//   1 storage read        x       sum: the input;  metrics: loss [B]
//   2 storage read        prob    metrics: prob [B, C] (unused by sum)
//   3 storage read        label   metrics: label [B] u32 (unused by sum)
//   4 storage read_write  out     sum: [J];  metrics: [4] running totals
//
// Dispatch: sum_outer_inner one invocation per output (1-D over a 2-D grid of 64-wide
// workgroups); accumulate_metrics exactly one workgroup, of which invocation 0 works: the
// loop over B keeps a fixed order, so totals are bit-for-bit reproducible.

struct Params {
    r: u32,
    j: u32,
    i: u32,
    mode: u32,
    j0: u32,
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> prob: array<f32>;
@group(0) @binding(3) var<storage, read> label: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn sum_outer_inner(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 256u;
    if (j >= p.count) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.r; r++) {
        let base = (r * p.j + p.j0 + j) * p.i;
        for (var i = 0u; i < p.i; i++) {
            acc += x[base + i];
        }
    }
    out[j] = acc;
}

@compute @workgroup_size(256)
fn accumulate_metrics(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) {
        return;
    }
    let classes = p.j;
    var loss_sum = 0.0;
    var correct = 0.0;
    var bad = false;
    for (var b = 0u; b < p.r; b++) {
        let l = x[b];
        // NaN fails every comparison; infinities exceed the largest finite f32.
        if (!(abs(l) <= 3.4e38)) {
            bad = true;
        }
        loss_sum += l;
        var pred = 0u;
        if (classes == 1u) {
            pred = select(0u, 1u, prob[b] > 0.5);
        } else {
            var best = prob[b * classes];
            for (var c = 1u; c < classes; c++) {
                let v = prob[b * classes + c];
                if (v > best) {
                    best = v;
                    pred = c;
                }
            }
        }
        if (p.mode != 2u && pred == label[b]) {
            correct += 1.0;
        }
    }
    out[0] += loss_sum;
    out[1] += correct;
    out[2] += f32(p.r);
    if (bad) {
        out[3] = 1.0;
    }
}
