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
//                       When B x C passes the loop budget (token losses, B = N tokens):
//                       metrics_partial sums chunks of i rows into a scratch [count, 4],
//                       then metrics_combine adds the chunks in order into metrics.
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
// workgroups); accumulate_metrics and metrics_combine exactly one workgroup, of which
// invocation 0 works; metrics_partial one invocation per chunk (1-D over a 2-D grid). Every
// loop keeps a fixed order, so totals are bit-for-bit reproducible.

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

// Totals of rows first..end: (loss sum, correct, rows, 1 if any loss is not finite).
fn rows_totals(first: u32, end: u32) -> vec4<f32> {
    let classes = p.j;
    var loss_sum = 0.0;
    var correct = 0.0;
    var bad = false;
    for (var b = first; b < end; b++) {
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
    return vec4<f32>(loss_sum, correct, f32(end - first), select(0.0, 1.0, bad));
}

// Add totals t into the running metrics out[0..4].
fn add_totals(t: vec4<f32>) {
    out[0] += t.x;
    out[1] += t.y;
    out[2] += t.z;
    if (t.w != 0.0) {
        out[3] = 1.0;
    }
}

@compute @workgroup_size(256)
fn accumulate_metrics(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) {
        return;
    }
    add_totals(rows_totals(0u, p.r));
}

// Many rows (token losses): chunk k < count (rows k * i .. min((k + 1) * i, r)) writes its
// totals to out[4k .. 4k + 4] (out = a scratch of 4 * count), one invocation each ...
@compute @workgroup_size(256)
fn metrics_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = gid.x + gid.y * nwg.x * 256u;
    if (k >= p.count) {
        return;
    }
    let first = k * p.i;
    let t = rows_totals(first, min(first + p.i, p.r));
    for (var c = 0u; c < 4u; c++) {
        out[4u * k + c] = t[c];
    }
}

// ... then one invocation adds the chunks' totals (x = that scratch) in order into out.
@compute @workgroup_size(256)
fn metrics_combine(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) {
        return;
    }
    var t = vec4<f32>(0.0);
    for (var k = 0u; k < p.count; k++) {
        t += vec4<f32>(x[4u * k], x[4u * k + 1u], x[4u * k + 2u], x[4u * k + 3u]);
    }
    add_totals(t);
}
