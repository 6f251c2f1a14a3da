//! Elementwise maps of the graph IR: shaders/elementwise.wgsl, its wrappers and references.
//!
//! Unary maps and their backward passes, binary maps with NumPy broadcasting (shapes
//! right-aligned, size-1 dimensions read with stride 0), a tensor-scalar form with the
//! scalar in the uniform, `where_`, `scale_shift` (y = alpha * x + beta) and `fill`.
//!
//! In place: give the output as the very same view as the first input (same buffer, offset
//! and size) and the kernel reads and writes it through one read_write binding. Any other
//! sharing of a buffer between an input and the output is refused: WebGPU forbids binding
//! one buffer read-only and read-write in the same dispatch, even at different offsets.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::{dispatch, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Most dimensions an elementwise kernel indexes, after merging the dimensions that are
/// contiguous in every operand (any rank works if it merges down to this).
pub const MAX_RANK: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Relu,
    /// x > 0 ? x : alpha * x.
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    /// The tanh approximation, PyTorch's `gelu(x, approximate='tanh')`:
    /// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    Gelu,
    Square,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Abs,
        UnaryOp::Relu,
        UnaryOp::LeakyRelu(0.01),
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::Square,
    ];

    /// The op code of elementwise.wgsl.
    fn code(self) -> u32 {
        match self {
            UnaryOp::Neg => 0,
            UnaryOp::Exp => 1,
            UnaryOp::Log => 2,
            UnaryOp::Sqrt => 3,
            UnaryOp::Rsqrt => 4,
            UnaryOp::Recip => 5,
            UnaryOp::Abs => 6,
            UnaryOp::Relu => 7,
            UnaryOp::LeakyRelu(_) => 8,
            UnaryOp::Sigmoid => 9,
            UnaryOp::Tanh => 10,
            UnaryOp::Gelu => 11,
            UnaryOp::Square => 12,
        }
    }

    fn alpha(self) -> f32 {
        match self {
            UnaryOp::LeakyRelu(a) => a,
            _ => 0.0,
        }
    }

    /// Which forward tensors [`unary_backward`] reads: (x, y). Neither for Neg; y where
    /// f' is cheapest from the output (Exp, Sqrt, Rsqrt, Recip, Relu, Sigmoid, Tanh), so a
    /// planner may free the other.
    pub fn backward_uses(self) -> (bool, bool) {
        match self {
            UnaryOp::Neg => (false, false),
            UnaryOp::Exp
            | UnaryOp::Sqrt
            | UnaryOp::Rsqrt
            | UnaryOp::Recip
            | UnaryOp::Relu
            | UnaryOp::Sigmoid
            | UnaryOp::Tanh => (false, true),
            UnaryOp::Log
            | UnaryOp::Abs
            | UnaryOp::LeakyRelu(_)
            | UnaryOp::Gelu
            | UnaryOp::Square => (true, false),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// NaN if either is NaN (torch.maximum; pool.wgsl's rule).
    Max,
    Min,
    /// torch.pow: pow(x, 0) = 1; a negative base with an integer exponent keeps its sign
    /// rule, with any other exponent gives NaN.
    Pow,
    /// 1.0 where a > b, else 0.0 (likewise the other comparisons).
    CmpGt,
    CmpEq,
    CmpGe,
    CmpLt,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 11] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
        BinaryOp::CmpGt,
        BinaryOp::CmpEq,
        BinaryOp::CmpGe,
        BinaryOp::CmpLt,
    ];

    fn code(self) -> u32 {
        self as u32
    }
}

/// Params of elementwise.wgsl (160 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    flags: u32,
    _pad0: u32,
    alpha: f32,
    beta: f32,
    scalar: f32,
    _pad1: f32,
    dims: [u32; MAX_RANK],
    strides: [[u32; MAX_RANK]; 3],
}

const FLAG_SCALAR_FIRST: u32 = 1;
const FLAG_USES_X: u32 = 2;
const FLAG_USES_Y: u32 = 4;

impl Params {
    fn flat(n: usize) -> Params {
        Params {
            n: n as u32,
            rank: 1,
            ..Params::zeroed()
        }
    }
}

/// How operands broadcast to an output: the output shape (NumPy's rule: shapes
/// right-aligned, each dimension equal or 1), and the output's dimensions with size-1 ones
/// dropped and neighbours merged where every operand is contiguous across them, with each
/// operand's element strides over those dimensions (0 where it is broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastSpec {
    pub out: Vec<usize>,
    pub dims: Vec<usize>,
    pub strides: Vec<Vec<usize>>,
}

impl BroadcastSpec {
    /// The broadcast of `shapes`, or an error naming `op` and the shapes.
    pub fn new(op: &str, shapes: &[&[usize]]) -> Result<BroadcastSpec> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let aligned = |s: &[usize], d: usize| {
            // Dimension d of the output (0 outermost) in shape s, 1 where s is shorter.
            (d + s.len()).checked_sub(rank).map_or(1, |k| s[k])
        };
        let mut out = vec![1; rank];
        for (d, o) in out.iter_mut().enumerate() {
            for s in shapes {
                let n = aligned(s, d);
                if n != 1 && *o != 1 && n != *o {
                    let list: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
                    return Err(Error::shape(
                        op,
                        format!(
                            "shapes {} do not broadcast: dimension {} (from the right) is {} in one and {n} in another. Hint: sizes must be equal or 1, aligned from the last dimension",
                            list.join(" and "),
                            rank - d,
                            *o
                        ),
                    ));
                }
                if n != 1 {
                    *o = n;
                }
            }
        }
        // Each operand's strides over the output's dimensions, keeping dimensions > 1.
        let mut dims = vec![];
        let mut strides: Vec<Vec<usize>> = vec![vec![]; shapes.len()];
        for (d, &n) in out.iter().enumerate() {
            if n == 1 {
                continue;
            }
            dims.push(n);
            for (s, st) in shapes.iter().zip(strides.iter_mut()) {
                let inner: usize = (d + 1..rank).map(|e| aligned(s, e)).product();
                st.push(if aligned(s, d) == 1 { 0 } else { inner });
            }
        }
        // Merge dimension k into k - 1 where every operand steps across them evenly.
        let mut k = 1;
        while k < dims.len() {
            if strides.iter().all(|st| st[k - 1] == st[k] * dims[k]) {
                dims[k - 1] *= dims[k];
                dims.remove(k);
                for st in strides.iter_mut() {
                    st[k - 1] = st[k];
                    st.remove(k);
                }
            } else {
                k += 1;
            }
        }
        if dims.is_empty() {
            dims.push(1);
            strides.iter_mut().for_each(|st| st.push(0));
        }
        if dims.len() > MAX_RANK {
            return Err(Error::shape(
                op,
                format!(
                    "broadcasting {shapes:?} needs {} dimensions; the kernel indexes at most {MAX_RANK}. Hint: reshape to fewer dimensions",
                    dims.len()
                ),
            ));
        }
        Ok(BroadcastSpec { out, dims, strides })
    }

    /// No operand is broadcast: rank 1 with every stride 1 (the kernel's FLAT override).
    pub fn is_flat(&self) -> bool {
        self.dims.len() == 1 && self.strides.iter().all(|s| s[0] == 1)
    }

    fn params(&self) -> Params {
        let mut p = Params::flat(self.out.iter().product());
        p.rank = self.dims.len() as u32;
        for (d, &n) in self.dims.iter().enumerate() {
            p.dims[d] = n as u32;
            for (k, st) in self.strides.iter().enumerate() {
                p.strides[k][d] = st[d] as u32;
            }
        }
        p
    }
}

/// Whether `a` and `b` are the very same view (buffer, offset, size).
fn same_view(a: &Tensor, b: &Tensor) -> bool {
    Arc::ptr_eq(&a.buffer, &b.buffer) && a.offset == b.offset && a.numel() == b.numel()
}

/// Refuse an input that shares the output's buffer (other than the in-place operand).
fn check_distinct(op: &str, out: &Tensor, inputs: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in inputs {
        if Arc::ptr_eq(&t.buffer, &out.buffer) {
            return Err(Error::shape(
                op,
                format!(
                    "{name} {:?} shares the output's buffer; WebGPU forbids binding one buffer read-only and read-write in one dispatch. Hint: write to another buffer, or pass the first input itself as the output to work in place",
                    t.shape
                ),
            ));
        }
    }
    Ok(())
}

fn check_numel(op: &str, name: &str, t: &Tensor, y: &Tensor) -> Result<()> {
    if t.numel() != y.numel() {
        return Err(Error::shape(
            op,
            format!(
                "{name} has shape {:?} ({} elements), output {:?} ({})",
                t.shape,
                t.numel(),
                y.shape,
                y.numel()
            ),
        ));
    }
    Ok(())
}

fn check_out_shape(op: &str, spec: &BroadcastSpec, y: &Tensor) -> Result<()> {
    if y.shape != spec.out {
        return Err(Error::shape(
            op,
            format!(
                "output has shape {:?}, the inputs broadcast to {:?}",
                y.shape, spec.out
            ),
        ));
    }
    Ok(())
}

/// One elementwise dispatch: inputs at bindings 1..=3 (None: the dummy), y at 4.
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    params: &Params,
    inputs: [Option<&Tensor>; 3],
    y: &Tensor,
    constants: &[(&str, f64)],
) -> Result<Dispatch> {
    let dummy = gpu.dummy();
    let [a, b, c] = inputs.map(|t| t.unwrap_or(dummy));
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Elementwise,
            entry,
            params: bytemuck::bytes_of(params),
            bindings: &[
                (a, Access::Read),
                (b, Access::Read),
                (c, Access::Read),
                (y, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, y.numel())?,
            constants,
        },
    )
}

/// The first operand of an in-place-capable kernel: None (read y itself) when `x` is `y`.
fn first_operand<'a>(op: &str, x: &'a Tensor, y: &Tensor) -> Result<(Option<&'a Tensor>, f64)> {
    if same_view(x, y) {
        Ok((None, 1.0))
    } else {
        check_distinct(op, y, &[("input", x)])?;
        Ok((Some(x), 0.0))
    }
}

/// y = op(x), elementwise over equal element counts. `y` may be `x` itself (in place).
pub fn unary(gpu: &Gpu, op: UnaryOp, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let name = "unary";
    check_numel(name, "input", x, y)?;
    let (x, inplace) = first_operand(name, x, y)?;
    let params = Params {
        alpha: op.alpha(),
        ..Params::flat(y.numel())
    };
    let constants = [("OP", op.code() as f64), ("INPLACE", inplace)];
    launch(gpu, name, &params, [x, None, None], y, &constants)
}

/// dx = dy * f'(x), with f' taken from x or from the forward output y as
/// [`UnaryOp::backward_uses`] says; the one not used is not bound (pass anything).
pub fn unary_backward(
    gpu: &Gpu,
    op: UnaryOp,
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Result<Dispatch> {
    let name = "unary_backward";
    let (uses_x, uses_y) = op.backward_uses();
    let x = uses_x.then_some(x);
    let y = uses_y.then_some(y);
    check_numel(name, "dy", dy, dx)?;
    let mut inputs = vec![("dy", dy)];
    for (what, t) in [("x", x), ("y", y)] {
        if let Some(t) = t {
            check_numel(name, what, t, dx)?;
            inputs.push((what, t));
        }
    }
    check_distinct(name, dx, &inputs)?;
    let params = Params {
        alpha: op.alpha(),
        flags: if uses_x { FLAG_USES_X } else { 0 } | if uses_y { FLAG_USES_Y } else { 0 },
        ..Params::flat(dx.numel())
    };
    let constants = [("OP", op.code() as f64)];
    launch(gpu, name, &params, [x, y, Some(dy)], dx, &constants)
}

/// y = op(a, b) with a and b broadcast to y's shape, which must be their broadcast shape.
/// `y` may be `a` itself (in place) when a already has y's shape.
pub fn binary(gpu: &Gpu, op: BinaryOp, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let name = "binary";
    let spec = BroadcastSpec::new(name, &[&a.shape, &b.shape])?;
    check_out_shape(name, &spec, y)?;
    check_distinct(name, y, &[("b", b)])?;
    let (a, inplace) = first_operand(name, a, y)?;
    let constants = [
        ("OP", op.code() as f64),
        ("INPLACE", inplace),
        ("FLAT", spec.is_flat() as u8 as f64),
    ];
    launch(gpu, name, &spec.params(), [a, Some(b), None], y, &constants)
}

/// y = op(x, s), or op(s, x) with `scalar_first`, elementwise; s rides in the uniform.
/// `y` may be `x` itself (in place).
pub fn binary_scalar(
    gpu: &Gpu,
    op: BinaryOp,
    x: &Tensor,
    s: f32,
    scalar_first: bool,
    y: &Tensor,
) -> Result<Dispatch> {
    let name = "binary_scalar";
    check_numel(name, "input", x, y)?;
    let (x, inplace) = first_operand(name, x, y)?;
    let params = Params {
        scalar: s,
        flags: if scalar_first { FLAG_SCALAR_FIRST } else { 0 },
        ..Params::flat(y.numel())
    };
    let constants = [("OP", op.code() as f64), ("INPLACE", inplace)];
    launch(gpu, name, &params, [x, None, None], y, &constants)
}

/// y = mask != 0 ? a : b, all three broadcast to y's shape (their broadcast shape).
pub fn where_(gpu: &Gpu, mask: &Tensor, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let name = "where_select";
    let spec = BroadcastSpec::new(name, &[&a.shape, &b.shape, &mask.shape])?;
    check_out_shape(name, &spec, y)?;
    check_distinct(name, y, &[("a", a), ("b", b), ("mask", mask)])?;
    launch(
        gpu,
        name,
        &spec.params(),
        [Some(a), Some(b), Some(mask)],
        y,
        &[],
    )
}

/// y = alpha * x + beta, elementwise. `y` may be `x` itself (in place).
pub fn scale_shift(gpu: &Gpu, x: &Tensor, alpha: f32, beta: f32, y: &Tensor) -> Result<Dispatch> {
    let name = "scale_shift";
    check_numel(name, "input", x, y)?;
    let (x, inplace) = first_operand(name, x, y)?;
    let params = Params {
        alpha,
        beta,
        ..Params::flat(y.numel())
    };
    launch(
        gpu,
        name,
        &params,
        [x, None, None],
        y,
        &[("INPLACE", inplace)],
    )
}

/// y = value everywhere (zeroing gradients, constants).
pub fn fill(gpu: &Gpu, y: &Tensor, value: f32) -> Result<Dispatch> {
    let params = Params {
        beta: value,
        ..Params::flat(y.numel())
    };
    launch(gpu, "fill", &params, [None, None, None], y, &[])
}

// ---- CPU references (f64) ------------------------------------------------------------

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_C: f64 = 0.044715;

pub fn unary_ref(op: UnaryOp, x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| match op {
            UnaryOp::Neg => -v,
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Rsqrt => 1.0 / v.sqrt(),
            UnaryOp::Recip => 1.0 / v,
            UnaryOp::Abs => v.abs(),
            UnaryOp::Relu => {
                if v > 0.0 || v.is_nan() {
                    v
                } else {
                    0.0
                }
            }
            UnaryOp::LeakyRelu(a) => {
                if v > 0.0 {
                    v
                } else {
                    a as f64 * v
                }
            }
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Gelu => 0.5 * v * (1.0 + (GELU_K * (v + GELU_C * v * v * v)).tanh()),
            UnaryOp::Square => v * v,
        })
        .collect()
}

/// dx = dy * f'(x), computed from x alone.
pub fn unary_backward_ref(op: UnaryOp, x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| {
            let d = match op {
                UnaryOp::Neg => -1.0,
                UnaryOp::Exp => v.exp(),
                UnaryOp::Log => 1.0 / v,
                UnaryOp::Sqrt => 0.5 / v.sqrt(),
                UnaryOp::Rsqrt => -0.5 * v.powf(-1.5),
                UnaryOp::Recip => -1.0 / (v * v),
                UnaryOp::Abs => {
                    if v == 0.0 {
                        0.0
                    } else {
                        v.signum()
                    }
                }
                UnaryOp::Relu => (v > 0.0) as u8 as f64,
                UnaryOp::LeakyRelu(a) => {
                    if v > 0.0 {
                        1.0
                    } else {
                        a as f64
                    }
                }
                UnaryOp::Sigmoid => {
                    let s = 1.0 / (1.0 + (-v).exp());
                    s * (1.0 - s)
                }
                UnaryOp::Tanh => 1.0 - v.tanh().powi(2),
                UnaryOp::Gelu => {
                    let t = (GELU_K * (v + GELU_C * v * v * v)).tanh();
                    let du = GELU_K * (1.0 + 3.0 * GELU_C * v * v);
                    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du
                }
                UnaryOp::Square => 2.0 * v,
            };
            g * d
        })
        .collect()
}

pub fn binary_op_ref(op: BinaryOp, u: f64, v: f64) -> f64 {
    let mask = |c: bool| c as u8 as f64;
    match op {
        BinaryOp::Add => u + v,
        BinaryOp::Sub => u - v,
        BinaryOp::Mul => u * v,
        BinaryOp::Div => u / v,
        BinaryOp::Max if u.is_nan() || v.is_nan() => f64::NAN,
        BinaryOp::Min if u.is_nan() || v.is_nan() => f64::NAN,
        BinaryOp::Max => u.max(v),
        BinaryOp::Min => u.min(v),
        BinaryOp::Pow => u.powf(v),
        BinaryOp::CmpGt => mask(u > v),
        BinaryOp::CmpEq => mask(u == v),
        BinaryOp::CmpGe => mask(u >= v),
        BinaryOp::CmpLt => mask(u < v),
    }
}

/// Element `i` of the broadcast output, read from each operand (in `shapes` order).
fn broadcast_ref(shapes: &[&[usize]], f: impl Fn(&[usize]) -> f64) -> (Vec<usize>, Vec<f64>) {
    let out = BroadcastSpec::new("broadcast_ref", shapes)
        .expect("reference shapes broadcast")
        .out;
    let n: usize = out.iter().product();
    let rank = out.len();
    let vals = (0..n)
        .map(|i| {
            // Coordinates of i in out, then the flat index of each operand.
            let mut coord = vec![0; rank];
            let mut rem = i;
            for d in (0..rank).rev() {
                coord[d] = rem % out[d];
                rem /= out[d];
            }
            let at: Vec<usize> = shapes
                .iter()
                .map(|s| {
                    let skip = rank - s.len();
                    s.iter().enumerate().fold(0, |acc, (k, &m)| {
                        acc * m + if m == 1 { 0 } else { coord[skip + k] }
                    })
                })
                .collect();
            f(&at)
        })
        .collect();
    (out, vals)
}

/// op(a, b) broadcast: the output shape and values.
pub fn binary_ref(
    op: BinaryOp,
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
) -> (Vec<usize>, Vec<f64>) {
    broadcast_ref(&[a_shape, b_shape], |at| {
        binary_op_ref(op, a[at[0]], b[at[1]])
    })
}

pub fn binary_scalar_ref(op: BinaryOp, x: &[f64], s: f64, scalar_first: bool) -> Vec<f64> {
    x.iter()
        .map(|&v| {
            if scalar_first {
                binary_op_ref(op, s, v)
            } else {
                binary_op_ref(op, v, s)
            }
        })
        .collect()
}

/// mask != 0 ? a : b broadcast: the output shape and values.
pub fn where_ref(
    mask: &[f64],
    mask_shape: &[usize],
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
) -> (Vec<usize>, Vec<f64>) {
    broadcast_ref(&[a_shape, b_shape, mask_shape], |at| {
        if mask[at[2]] != 0.0 {
            a[at[0]]
        } else {
            b[at[1]]
        }
    })
}

pub fn scale_shift_ref(x: &[f64], alpha: f64, beta: f64) -> Vec<f64> {
    x.iter().map(|&v| alpha * v + beta).collect()
}
