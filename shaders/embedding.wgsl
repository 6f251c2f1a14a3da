// embedding.wgsl: embedding lookup (a gather of table rows) and its gradient (a
// scatter-add written as a deterministic gather: no float atomics).
//
// N = indices, V = vocabulary (table rows), D = embedding width.
//
//   embedding_forward:  y[n, d] = table[idx[n], d]     (idx[n] >= V: a zero row)
//   embedding_sort:     a counting sort of idx by value, one invocation per row v < V:
//                       start[v] = #{n : idx[n] < v},  count[v] = #{n : idx[n] == v},
//                       list[start[v] + k] = the k-th n (increasing) with idx[n] == v.
//                       Out-of-range indices (>= V) are in no list.
//   embedding_backward: dtable[v, d] = sum_{k < count[v]} dy[list[start[v] + k], d]
//                       = sum over n with idx[n] == v of dy[n, d], n increasing, so runs
//                       are bit-identical; rows no index names get 0. dtable is
//                       overwritten, not accumulated.
//
// Bindings (group 0):
//   0 uniform             Params { n, vocab, dim }
//   1 storage read        src     forward: table [V, D];  backward: dy [N, D]
//   2 storage read        idx     [N] u32
//   3 storage read_write  dst     forward: y [N, D];      backward: dtable [V, D]
//   4 storage read_write  sorted  [2V + N] u32: start [V], count [V], list [N]
//                                 (written by embedding_sort, read by embedding_backward;
//                                 the forward binds nothing here)
//
// Dispatch: forward one invocation per (n, d), i = n * D + d; sort one per v; backward one
// per (v, d), i = v * D + d. All 1-D over a 2-D grid of 256-wide workgroups:
// i = gid.x + gid.y * nwg.x * 256. Loops: the sort runs 2N iterations, the backward
// count[v] <= N.

struct Params {
    n: u32,
    vocab: u32,
    dim: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> sorted: array<u32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn embedding_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n * p.dim) {
        return;
    }
    let v = idx[i / p.dim];
    let d = i % p.dim;
    dst[i] = select(0.0, src[min(v, p.vocab - 1u) * p.dim + d], v < p.vocab);
}

@compute @workgroup_size(256)
fn embedding_sort(@builtin(global_invocation_id) gid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let v = flat_id(gid, nwg);
    if (v >= p.vocab) {
        return;
    }
    var start = 0u;
    for (var n = 0u; n < p.n; n++) {
        start += select(0u, 1u, idx[n] < v);
    }
    var k = 0u;
    let list = 2u * p.vocab + start;
    for (var n = 0u; n < p.n; n++) {
        if (idx[n] == v) {
            sorted[list + k] = n;
            k++;
        }
    }
    sorted[v] = start;
    sorted[p.vocab + v] = k;
}

@compute @workgroup_size(256)
fn embedding_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.vocab * p.dim) {
        return;
    }
    let v = i / p.dim;
    let d = i % p.dim;
    let list = 2u * p.vocab + sorted[v];
    let count = sorted[p.vocab + v];
    var acc = 0.0;
    for (var k = 0u; k < count; k++) {
        acc += src[sorted[list + k] * p.dim + d];
    }
    dst[i] = acc;
}
