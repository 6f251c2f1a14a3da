// elementwise.wgsl: elementwise maps of the graph IR, with NumPy broadcasting, over the N
// elements of the output y (row-major, rank <= 8 after the wrapper merges dimensions).
//
//   unary:           y[i]  = f(x[i])                       f = OP (UnaryOp codes below)
//   unary_backward:  dx[i] = dy[i] * f'(x[i])              from x or from y = f(x), as
//                                                          UnaryOp::backward_uses says
//   binary:          y[i]  = g(a[ia(i)], b[ib(i)])         g = OP (BinaryOp codes below)
//   binary_scalar:   y[i]  = g(x[i], s), or g(s, x[i]) when FLAG_SCALAR_FIRST; s in Params
//   where_select:    y[i]  = c[ic(i)] != 0 ? a[ia(i)] : b[ib(i)]
//   scale_shift:     y[i]  = alpha * x[i] + beta           (alpha, beta in Params)
//   fill:            y[i]  = beta
//
// Broadcast index: i = sum_d k_d * prod_{e > d} dims[e] (the coordinates k_d of y),
//   ia(i) = sum_d k_d * sa[d]; a broadcast dimension has stride 0 (likewise b, c).
//
// FLAT (override): binary and where_select with no broadcasting read a[i], b[i], c[i].
// In place (override INPLACE = true; unary, binary with a shaped as y, binary_scalar,
// scale_shift): the first operand is read from y itself (binding 4), binding 1 is a dummy.
//
// Bindings (group 0), shared by every entry point (unused ones get a 16-byte dummy):
//   0 uniform             Params (below)
//   1 storage read        a    unary, binary_scalar, scale_shift: x;  unary_backward: x;
//                              binary, where_select: a
//   2 storage read        b    unary_backward: y (the forward output);  binary, where: b
//   3 storage read        c    unary_backward: dy;  where_select: the mask
//   4 storage read_write  y    the output [N] (dx for unary_backward)
//
// Dispatch: one invocation per output element, 1-D over a 2-D grid of 256-wide workgroups:
// i = gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    n: u32,
    rank: u32,
    flags: u32,
    _pad0: u32,
    alpha: f32,     // LeakyRelu slope; scale_shift's scale
    beta: f32,      // scale_shift's shift; fill's value
    scalar: f32,    // binary_scalar's s
    _pad1: f32,
    dims: array<vec4<u32>, 2>,   // y's (merged) dims, dims[0][0] outermost; `rank` used
    sa: array<vec4<u32>, 2>,     // element strides of a, b, c in y's coordinates
    sb: array<vec4<u32>, 2>,
    sc: array<vec4<u32>, 2>,
}

// Unary op codes (UnaryOp in src/kernels/elementwise.rs).
const NEG: u32 = 0u;
const EXP: u32 = 1u;
const LOG: u32 = 2u;
const SQRT: u32 = 3u;
const RSQRT: u32 = 4u;
const RECIP: u32 = 5u;
const ABS: u32 = 6u;
const RELU: u32 = 7u;
const LEAKY_RELU: u32 = 8u;
const SIGMOID: u32 = 9u;
const TANH: u32 = 10u;
const GELU: u32 = 11u;     // tanh approximation (PyTorch approximate='tanh')
const SQUARE: u32 = 12u;

// Binary op codes (BinaryOp).
const ADD: u32 = 0u;
const SUB: u32 = 1u;
const MUL: u32 = 2u;
const DIV: u32 = 3u;
const MAX: u32 = 4u;       // NaN wins, as torch.maximum and pool.wgsl
const MIN: u32 = 5u;
const POW: u32 = 6u;       // torch.pow: negative bases with integer exponents allowed
const CMP_GT: u32 = 7u;    // 1.0 where a > b, else 0.0
const CMP_EQ: u32 = 8u;
const CMP_GE: u32 = 9u;
const CMP_LT: u32 = 10u;

// Params.flags bits.
const FLAG_SCALAR_FIRST: u32 = 1u;   // binary_scalar: g(s, x)
const FLAG_USES_X: u32 = 2u;         // unary_backward: binding 1 holds x (else a dummy)
const FLAG_USES_Y: u32 = 4u;         // unary_backward: binding 2 holds y (else a dummy)

override OP: u32 = 0u;
override INPLACE: bool = false;
// binary, where_select: every operand is y's shape (rank 1, strides 1): index them by i
// directly, which CPU adapters turn into vector loads (2-4x faster on lavapipe).
override FLAT: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// The first operand: a[i], or y[i] itself in place.
fn first(i: u32) -> f32 {
    if (INPLACE) {
        return y[i];
    }
    return a[i];
}

// From the bits: `v != v` is folded to false by some drivers (lavapipe) that assume no NaN.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// tanh that cannot overflow where a backend computes it from exp(2x) (tanh(15) is 1 in f32).
fn tanh_safe(v: f32) -> f32 {
    return select(tanh(clamp(v, -15.0, 15.0)), v, is_nan(v));
}

const GELU_K: f32 = 0.7978845608028654;   // sqrt(2 / pi)
const GELU_C: f32 = 0.044715;

fn unary_f(v: f32) -> f32 {
    switch OP {
        case NEG: { return -v; }
        case EXP: { return exp(v); }
        case LOG: { return log(v); }
        case SQRT: { return sqrt(v); }
        case RSQRT: { return 1.0 / sqrt(v); }
        case RECIP: { return 1.0 / v; }
        case ABS: { return abs(v); }
        case RELU: { return select(0.0, v, v > 0.0 || is_nan(v)); }
        case LEAKY_RELU: { return select(p.alpha * v, v, v > 0.0); }
        case SIGMOID: {
            // exp of a non-positive number only: no overflow for large |v|.
            let e = exp(-abs(v));
            return select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
        }
        case TANH: { return tanh_safe(v); }
        case GELU: { return 0.5 * v * (1.0 + tanh_safe(GELU_K * (v + GELU_C * v * v * v))); }
        case SQUARE: { return v * v; }
        default: { return v; }
    }
}

// f'(x) as the ops need it: from x (xv) or from the forward output (yv).
fn unary_df(xv: f32, yv: f32) -> f32 {
    switch OP {
        case NEG: { return -1.0; }
        case EXP: { return yv; }
        case LOG: { return 1.0 / xv; }
        case SQRT: { return 0.5 / yv; }
        case RSQRT: { return -0.5 * yv * yv * yv; }
        case RECIP: { return -yv * yv; }
        case ABS: { return sign(xv); }
        case RELU: { return select(0.0, 1.0, yv > 0.0); }
        case LEAKY_RELU: { return select(p.alpha, 1.0, xv > 0.0); }
        case SIGMOID: { return yv * (1.0 - yv); }
        case TANH: { return 1.0 - yv * yv; }
        case GELU: {
            let t = tanh_safe(GELU_K * (xv + GELU_C * xv * xv * xv));
            let du = GELU_K * (1.0 + 3.0 * GELU_C * xv * xv);
            return 0.5 * (1.0 + t) + 0.5 * xv * (1.0 - t * t) * du;
        }
        case SQUARE: { return 2.0 * xv; }
        default: { return 1.0; }
    }
}

// torch.pow semantics: pow(x, 0) = 1; a negative base needs an integer exponent (else NaN).
fn pow_f(x: f32, e: f32) -> f32 {
    if (e == 0.0) {
        return 1.0;
    }
    let m = pow(abs(x), e);
    if (x >= 0.0) {
        return m;
    }
    if (e != floor(e)) {
        return sqrt(x);   // x < 0: NaN, as torch.pow
    }
    // Odd integer exponents keep the sign (|e| < 2^24 is exact in f32; larger are even).
    let odd = abs(e) < 16777216.0 && (i32(abs(e)) & 1) == 1;
    return select(m, -m, odd);
}

fn binary_f(u: f32, v: f32) -> f32 {
    switch OP {
        case ADD: { return u + v; }
        case SUB: { return u - v; }
        case MUL: { return u * v; }
        case DIV: { return u / v; }
        case MAX: { return select(select(v, u, u > v), u + v, is_nan(u) || is_nan(v)); }
        case MIN: { return select(select(v, u, u < v), u + v, is_nan(u) || is_nan(v)); }
        case POW: { return pow_f(u, v); }
        case CMP_GT: { return select(0.0, 1.0, u > v); }
        case CMP_EQ: { return select(0.0, 1.0, u == v); }
        case CMP_GE: { return select(0.0, 1.0, u >= v); }
        case CMP_LT: { return select(0.0, 1.0, u < v); }
        default: { return u; }
    }
}

// Offsets of output element i in a, b and c: (ia, ib, ic).
fn broadcast_index(i: u32) -> vec3<u32> {
    if (FLAT) {
        return vec3<u32>(i, i, i);
    }
    var rem = i;
    var at = vec3<u32>(0u, 0u, 0u);
    // Innermost first; the outermost coordinate is what remains (i < N): no division, so
    // rank 1 (same shapes, or one operand a scalar) costs none (slow on CPU adapters).
    for (var d = p.rank - 1u; d > 0u; d--) {
        let n = p.dims[d / 4u][d % 4u];
        let k = rem % n;
        rem = rem / n;
        at += k * vec3<u32>(p.sa[d / 4u][d % 4u], p.sb[d / 4u][d % 4u], p.sc[d / 4u][d % 4u]);
    }
    return at + rem * vec3<u32>(p.sa[0].x, p.sb[0].x, p.sc[0].x);
}

@compute @workgroup_size(256)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        y[i] = unary_f(first(i));
    }
}

@compute @workgroup_size(256)
fn unary_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        // The wrapper binds a dummy where the op does not use x (or y): read index 0 then.
        let xv = a[select(0u, i, (p.flags & FLAG_USES_X) != 0u)];
        let yv = b[select(0u, i, (p.flags & FLAG_USES_Y) != 0u)];
        y[i] = c[i] * unary_df(xv, yv);
    }
}

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let at = broadcast_index(i);
        var u: f32;
        if (INPLACE) {
            u = y[i];
        } else {
            u = a[at.x];
        }
        y[i] = binary_f(u, b[at.y]);
    }
}

@compute @workgroup_size(256)
fn binary_scalar(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let v = first(i);
        if ((p.flags & FLAG_SCALAR_FIRST) != 0u) {
            y[i] = binary_f(p.scalar, v);
        } else {
            y[i] = binary_f(v, p.scalar);
        }
    }
}

@compute @workgroup_size(256)
fn where_select(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let at = broadcast_index(i);
        y[i] = select(b[at.y], a[at.x], c[at.z] != 0.0);
    }
}

@compute @workgroup_size(256)
fn scale_shift(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        y[i] = p.alpha * first(i) + p.beta;
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        y[i] = p.beta;
    }
}
