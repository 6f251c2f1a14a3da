// softmax.wgsl: row-wise softmax (or log-softmax) over the last axis, its backward, and
// token cross-entropy over logits, all on a matrix viewed [R, C], row-major (R = rows,
// C = cols; for cross-entropy R = N tokens, C = V classes).
//
//   softmax_rows_forward:    L = valid(r) = C, or with a causal mask of period T (T > 0)
//                            min(C, r % T + 1): row r is query position t = r % T and may
//                            attend to columns j <= t only.
//                            m = max_{j<L} x[r,j],  s = sum_{j<L} exp(x[r,j] - m)
//                            y[r,j] = exp(x[r,j] - m) / s  for j < L, 0 for j >= L
//                            LOG (override): y[r,j] = x[r,j] - m - log(s)  (no mask)
//   softmax_rows_backward:   dx[r,j] = y[r,j] * (dy[r,j] - sum_k dy[r,k] * y[r,k])
//                            LOG: dx[r,j] = dy[r,j] - exp(y[r,j]) * sum_k dy[r,k]
//                            (masked entries have y = 0, so they get dx = 0)
//   token_xent_forward:      lse[r] = m + log(s) over all C columns,
//                            loss[r] = lse[r] - x[r, t]  with t = labels[r];
//                            t >= C (no class) gives loss 0 (and zero gradient below)
//   token_xent_backward:     dx[r,j] = (exp(x[r,j] - lse[r]) - (j == t)) * g[0] * scale
//                            g[0] = the incoming gradient of the mean loss (a buffer, so
//                            the rule chains), scale = 1 / N from the uniform; rows with
//                            t >= C get 0.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform             Params { rows, cols, causal (T, 0 = off), scale }
//   1 storage read        src     softmax fwd: x; softmax bwd: y; xent: logits   [R, C]
//   2 storage read        grad    softmax bwd: dy [R, C]; xent bwd: g [1]; else unused
//   3 storage read        labels  xent: target class u32 [R]; else unused
//   4 storage read_write  dst     softmax: y or dx [R, C]; xent fwd: loss [R]; xent bwd: dx [R, C]
//   5 storage read_write  lse     xent: log-sum-exp [R], written by fwd, read by bwd
//                                 (softmax entries bind nothing here)
//
// Dispatch: RW lanes per row (override RW: a power of two <= 256 dividing the workgroup
// size WG). Lane l of row r handles columns j = l, l + RW, l + 2 RW, ... in order; the RW
// partial results are combined by a fixed tree in workgroup memory, so every run gives the
// same bits. With RW = 1 (CPU adapters such as lavapipe, where barriers are costly) each
// invocation owns a whole row and no barrier runs. A workgroup covers WG / RW rows; the
// grid's G workgroups are folded onto y: group = wid.x + wid.y * nwg.x, row = group *
// (WG / RW) + lid / RW. Lanes past the last row compute on row R-1 (so that every
// invocation reaches each barrier) and write nothing.

struct Params {
    rows: u32,
    cols: u32,
    causal: u32,
    scale: f32,
}

override WG: u32 = 64u;
override RW: u32 = 1u;
override LOG: bool = false;

// Lowest finite f32: the max of an empty lane.
const LOWEST: f32 = -3.40282347e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

var<workgroup> red: array<f32, 256>;

struct Lane {
    row: u32,   // clamped to a real row
    lane: u32,  // 0..RW
    live: bool, // the unclamped row exists
}

fn lane_of(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> Lane {
    let group = wid.x + wid.y * nwg.x;
    let row = group * (WG / RW) + lid / RW;
    return Lane(min(row, p.rows - 1u), lid % RW, row < p.rows);
}

// Sum (or max) of v over the RW lanes of this invocation's row, in a fixed tree order; every
// lane gets the result. Must be called in uniform control flow (it holds barriers).
fn row_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    if (RW == 1u) {
        return v;
    }
    workgroupBarrier(); // earlier readers of red are done
    red[lid] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if (lid % RW < s) {
            let a = red[lid];
            let b = red[lid + s];
            red[lid] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    return red[lid - lid % RW];
}

// Columns of row r that take part (the causal mask).
fn valid_cols(r: u32) -> u32 {
    if (p.causal == 0u) {
        return p.cols;
    }
    return min(p.cols, r % p.causal + 1u);
}

// (max, sum of exp(x - max)) over the first `len` columns of row `base`.
fn row_max_sum(lid: u32, l: Lane, base: u32, len: u32) -> vec2<f32> {
    var m = LOWEST;
    for (var j = l.lane; j < len; j += RW) {
        m = max(m, src[base + j]);
    }
    m = row_reduce(lid, m, true);
    var s = 0.0;
    for (var j = l.lane; j < len; j += RW) {
        s += exp(src[base + j] - m);
    }
    s = row_reduce(lid, s, false);
    return vec2<f32>(m, s);
}

@compute @workgroup_size(WG)
fn softmax_rows_forward(@builtin(local_invocation_index) lid: u32,
                        @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    let base = l.row * p.cols;
    let len = valid_cols(l.row);
    let ms = row_max_sum(lid, l, base, len);
    if (!l.live) {
        return;
    }
    let log_s = log(ms.y);
    for (var j = l.lane; j < p.cols; j += RW) {
        let d = src[base + j] - ms.x;
        if (LOG) {
            dst[base + j] = d - log_s;
        } else {
            dst[base + j] = select(0.0, exp(d) / ms.y, j < len);
        }
    }
}

@compute @workgroup_size(WG)
fn softmax_rows_backward(@builtin(local_invocation_index) lid: u32,
                         @builtin(workgroup_id) wid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    let base = l.row * p.cols;
    var d = 0.0;
    for (var j = l.lane; j < p.cols; j += RW) {
        d += select(grad[base + j] * src[base + j], grad[base + j], LOG);
    }
    d = row_reduce(lid, d, false);
    if (!l.live) {
        return;
    }
    for (var j = l.lane; j < p.cols; j += RW) {
        let y = src[base + j];
        let dy = grad[base + j];
        if (LOG) {
            dst[base + j] = dy - exp(y) * d;
        } else {
            dst[base + j] = y * (dy - d);
        }
    }
}

@compute @workgroup_size(WG)
fn token_xent_forward(@builtin(local_invocation_index) lid: u32,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    let base = l.row * p.cols;
    let ms = row_max_sum(lid, l, base, p.cols);
    if (!l.live || l.lane != 0u) {
        return;
    }
    let t = labels[l.row];
    let lse_r = ms.x + log(ms.y);
    lse[l.row] = lse_r;
    dst[l.row] = select(0.0, lse_r - src[base + min(t, p.cols - 1u)], t < p.cols);
}

@compute @workgroup_size(WG)
fn token_xent_backward(@builtin(local_invocation_index) lid: u32,
                       @builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    if (!l.live) {
        return;
    }
    let base = l.row * p.cols;
    let t = labels[l.row];
    let lse_r = lse[l.row];
    let k = select(0.0, grad[0] * p.scale, t < p.cols);
    for (var j = l.lane; j < p.cols; j += RW) {
        let onehot = select(0.0, 1.0, j == t);
        dst[base + j] = (exp(src[base + j] - lse_r) - onehot) * k;
    }
}
