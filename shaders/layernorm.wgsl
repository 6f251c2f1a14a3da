// layernorm.wgsl: layer normalisation over the last axis of x viewed [R, C] (R = rows,
// C = cols), row-major, with per-column gain gamma [C] and bias beta [C].
//
//   layer_norm_forward:         mean[r] = sum_j x[r,j] / C
//                               var[r]  = sum_j (x[r,j] - mean[r])^2 / C   (two passes)
//                               rstd[r] = 1 / sqrt(var[r] + eps)
//                               y[r,j]  = (x[r,j] - mean[r]) * rstd[r] * gamma[j] + beta[j]
//   layer_norm_backward_input:  xhat = (x - mean) * rstd,  g = dy * gamma
//                               dx[r,j] = rstd[r] * (g[r,j] - sum_k g[r,k] / C
//                                                   - xhat[r,j] * sum_k g[r,k] xhat[r,k] / C)
//   layer_norm_backward_params: for block b of RB rows, column j:
//                               pg[b,j] = sum_{r in block b} dy[r,j] * xhat[r,j]
//                               pb[b,j] = sum_{r in block b} dy[r,j]
//                               (rows in increasing order; with one block these are
//                               dgamma and dbeta themselves)
//   layer_norm_sum_blocks:      dgamma[j] = sum_b pg[b,j],  dbeta[j] = sum_b pb[b,j]
//                               (blocks in increasing order)
// No atomics: every sum has a fixed order, so runs are bit-identical.
//
// Bindings (group 0):
//   binding              forward   backward_input  backward_params     sum_blocks
//   0 uniform            Params { rows, cols, eps, rows_per_block, blocks }
//   1 storage read       x [R,C]   x               x                   pg [blocks, C]
//   2 storage read       gamma [C] gamma           (unused)            (unused)
//   3 storage read       beta [C]  dy [R,C]        dy [R,C]            pb [blocks, C]
//   4 storage read_write y [R,C]   dx [R,C]        pg or dgamma        dgamma [C]
//   5 storage read_write mean [R]  mean (read)     mean (read)         dbeta [C]
//   6 storage read_write rstd [R]  rstd (read)     rstd (read)         -
//   7 storage read_write -         -               pb or dbeta         -
//
// Dispatch: forward and backward_input are row kernels: RW lanes per row (override RW, a
// power of two <= 256 dividing the workgroup size WG), lane l taking columns l, l + RW, ...
// in order and the lanes combined by a fixed tree in workgroup memory (no barrier runs
// when RW = 1, as on CPU adapters); a workgroup covers WG / RW rows, group = wid.x + wid.y
// * nwg.x, row = group * (WG / RW) + lid / RW; lanes past the last row compute on row R-1
// and write nothing. backward_params: one invocation per (block b, column j), i = b * C +
// j; sum_blocks: one per column j; both 1-D over a 2-D grid of WG-wide workgroups, i =
// gid.x + gid.y * nwg.x * WG.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    rows_per_block: u32,
    blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 64u;
override RW: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> src: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> dst2: array<f32>;

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

// Sum of v over the RW lanes of this invocation's row in a fixed tree order; every lane
// gets the result. Must be called in uniform control flow (it holds barriers).
fn row_sum(lid: u32, v: f32) -> f32 {
    if (RW == 1u) {
        return v;
    }
    workgroupBarrier(); // earlier readers of red are done
    red[lid] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if (lid % RW < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    return red[lid - lid % RW];
}

@compute @workgroup_size(WG)
fn layer_norm_forward(@builtin(local_invocation_index) lid: u32,
                      @builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    let base = l.row * p.cols;
    let n = f32(p.cols);
    var s = 0.0;
    for (var j = l.lane; j < p.cols; j += RW) {
        s += x[base + j];
    }
    let mu = row_sum(lid, s) / n;
    var v = 0.0;
    for (var j = l.lane; j < p.cols; j += RW) {
        let d = x[base + j] - mu;
        v += d * d;
    }
    let r = inverseSqrt(row_sum(lid, v) / n + p.eps);
    if (!l.live) {
        return;
    }
    for (var j = l.lane; j < p.cols; j += RW) {
        dst[base + j] = (x[base + j] - mu) * r * gamma[j] + src[j];
    }
    if (l.lane == 0u) {
        mean[l.row] = mu;
        rstd[l.row] = r;
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward_input(@builtin(local_invocation_index) lid: u32,
                             @builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = lane_of(lid, wid, nwg);
    let base = l.row * p.cols;
    let mu = mean[l.row];
    let r = rstd[l.row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = l.lane; j < p.cols; j += RW) {
        let g = src[base + j] * gamma[j];
        sg += g;
        sgx += g * (x[base + j] - mu) * r;
    }
    let n = f32(p.cols);
    let mg = row_sum(lid, sg) / n;
    let mgx = row_sum(lid, sgx) / n;
    if (!l.live) {
        return;
    }
    for (var j = l.lane; j < p.cols; j += RW) {
        let xhat = (x[base + j] - mu) * r;
        dst[base + j] = r * (src[base + j] * gamma[j] - mg - xhat * mgx);
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward_params(@builtin(global_invocation_id) gid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.blocks * p.cols) {
        return;
    }
    let b = i / p.cols;
    let j = i % p.cols;
    let r_end = min(p.rows, (b + 1u) * p.rows_per_block);
    var pg = 0.0;
    var pb = 0.0;
    for (var r = b * p.rows_per_block; r < r_end; r++) {
        let dy = src[r * p.cols + j];
        pg += dy * (x[r * p.cols + j] - mean[r]) * rstd[r];
        pb += dy;
    }
    dst[i] = pg;
    dst2[i] = pb;
}

@compute @workgroup_size(WG)
fn layer_norm_sum_blocks(@builtin(global_invocation_id) gid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * WG;
    if (j >= p.cols) {
        return;
    }
    var g = 0.0;
    var b = 0.0;
    for (var k = 0u; k < p.blocks; k++) {
        g += x[k * p.cols + j];
        b += src[k * p.cols + j];
    }
    dst[j] = g;
    mean[j] = b;
}
