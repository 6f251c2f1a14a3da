// sample.wgsl: draw the next token of a language model on the GPU and append it to the
// model's context, so generation runs forward pass after forward pass with no readback.
//
//   len = state[0] (tokens of the context in use, 1..=T), i = state[1] (tokens drawn so far)
//   z_j = logits[(len - 1) * V + j]                  the last position's logits, j < V
//   temperature > 0:  p_j = exp((z_j - max z) / temperature) / sum_k (same)
//                     token = the first j with sum_{k<=j} p_k > u_i * 1 (inverse CDF, in j
//                     order; V - 1 if rounding leaves u_i above every partial sum)
//   temperature = 0:  token = argmax_j z_j (the first of ties)
//   out[i] = token; state[1] = i + 1
//   len < T:  context[len] = token; state[0] = len + 1
//   len = T:  context slides left by one and context[T - 1] = token (a window of the last T)
//
// u_i in [0, 1) comes from the host (Philox-4x32-10, random.rs's reference stream), so a
// run is reproducible bit for bit from its seed; the draw itself happens here.
//
// Bindings (group 0):
//   0 uniform             Params { vocab V, context T, temperature, _ }
//   1 storage read        logits   [T, V] f32 (the model's output for the context)
//   2 storage read        uniforms [N] f32, one per token to draw
//   3 storage read_write  context  [T] u32 (the model's input)
//   4 storage read_write  state    [2] u32 (len, i)
//   5 storage read_write  out      [N] u32 (the drawn tokens)
//
// Entry point sample_next. Dispatch: one workgroup of one invocation (a draw is sequential and V is small); an
// invocation past the first returns at once.

struct Params {
    vocab: u32,
    context: u32,
    temperature: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> uniforms: array<f32>;
@group(0) @binding(3) var<storage, read_write> context: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

// The token drawn from logits row `row` with uniform u.
fn draw(row: u32, u: f32) -> u32 {
    var best = 0u;
    var m = logits[row];
    for (var j = 1u; j < p.vocab; j++) {
        if (logits[row + j] > m) {
            m = logits[row + j];
            best = j;
        }
    }
    if (p.temperature <= 0.0) {
        return best;
    }
    var s = 0.0;
    for (var j = 0u; j < p.vocab; j++) {
        s += exp((logits[row + j] - m) / p.temperature);
    }
    let goal = u * s;
    var acc = 0.0;
    for (var j = 0u; j < p.vocab; j++) {
        acc += exp((logits[row + j] - m) / p.temperature);
        if (acc > goal) {
            return j;
        }
    }
    return p.vocab - 1u;
}

@compute @workgroup_size(1)
fn sample_next(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x != 0u) {
        return;
    }
    let len = clamp(state[0], 1u, p.context);
    let i = state[1];
    let token = draw((len - 1u) * p.vocab, uniforms[i]);
    out[i] = token;
    state[1] = i + 1u;
    if (len < p.context) {
        context[len] = token;
        state[0] = len + 1u;
    } else {
        for (var t = 0u; t + 1u < p.context; t++) {
            context[t] = context[t + 1u];
        }
        context[p.context - 1u] = token;
    }
}
