//! The functional graph API, part 1: elementwise, reduction and movement ops (part 2, the
//! layer-level ops, is ops_nn.rs). Each builder checks its operands' shapes and names the op
//! and both shapes when they do not fit. Scalar constants fold on the spot, so `x * 1/B`
//! never materialises a tensor of 1/B.
//!
//! Shapes: B = batch, C = channels, H, W = height, width, M, N, K = matmul dims.

use super::ir::*;
use crate::{Error, Result};

pub(super) fn shape_err(op: &str, msg: String) -> Error {
    Error::shape(op, msg)
}

impl Graph {
    /// A scalar constant broadcast to `shape`.
    pub fn constant(&mut self, value: f32, shape: &[usize]) -> Id {
        self.push(Op::Const(value), vec![], shape.to_vec(), DType::F32)
    }

    fn const_value(&self, id: Id) -> Option<f32> {
        match self.node(id).op {
            Op::Const(c) => Some(c),
            _ => None,
        }
    }

    fn expect_f32(&self, op: &str, what: &str, id: Id) -> Result<()> {
        if self.node(id).dtype != DType::F32 {
            return Err(shape_err(op, format!("{what} is u32, expected f32")));
        }
        Ok(())
    }

    pub fn unary(&mut self, op: UnaryOp, x: Id) -> Result<Id> {
        self.expect_f32(&format!("{op:?}"), "x", x)?;
        let shape = self.shape(x).to_vec();
        if let Some(c) = self.const_value(x) {
            let v = crate::kernels::elementwise::unary_ref(op, &[c as f64])[0] as f32;
            return Ok(self.constant(v, &shape));
        }
        Ok(self.push(Op::Unary(op), vec![x], shape, DType::F32))
    }

    pub fn relu(&mut self, x: Id) -> Result<Id> {
        self.unary(UnaryOp::Relu, x)
    }

    pub fn sigmoid(&mut self, x: Id) -> Result<Id> {
        self.unary(UnaryOp::Sigmoid, x)
    }

    pub fn tanh(&mut self, x: Id) -> Result<Id> {
        self.unary(UnaryOp::Tanh, x)
    }

    pub fn gelu(&mut self, x: Id) -> Result<Id> {
        self.unary(UnaryOp::Gelu, x)
    }

    /// dx = dy * f'(x), from x or from y = f(x) as the op needs.
    pub fn unary_backward(&mut self, op: UnaryOp, x_or_y: Id, dy: Id) -> Id {
        let shape = self.shape(dy).to_vec();
        self.push(Op::UnaryBackward(op), vec![x_or_y, dy], shape, DType::F32)
    }

    pub fn binary(&mut self, op: BinaryOp, a: Id, b: Id) -> Result<Id> {
        let name = format!("{op:?}");
        self.expect_f32(&name, "a", a)?;
        self.expect_f32(&name, "b", b)?;
        let shape = broadcast_shape(&name, self.shape(a), self.shape(b))?;
        if let (Some(x), Some(y)) = (self.const_value(a), self.const_value(b)) {
            let v = crate::kernels::elementwise::binary_op_ref(op, x as f64, y as f64) as f32;
            return Ok(self.constant(v, &shape));
        }
        Ok(self.push(Op::Binary(op), vec![a, b], shape, DType::F32))
    }

    pub fn add(&mut self, a: Id, b: Id) -> Result<Id> {
        self.binary(BinaryOp::Add, a, b)
    }

    pub fn sub(&mut self, a: Id, b: Id) -> Result<Id> {
        self.binary(BinaryOp::Sub, a, b)
    }

    pub fn mul(&mut self, a: Id, b: Id) -> Result<Id> {
        self.binary(BinaryOp::Mul, a, b)
    }

    pub fn div(&mut self, a: Id, b: Id) -> Result<Id> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// x * c for a scalar c (x itself when c == 1).
    pub fn scale(&mut self, x: Id, c: f32) -> Result<Id> {
        if c == 1.0 {
            return Ok(x);
        }
        let k = self.constant(c, &[]);
        self.mul(x, k)
    }

    /// mask != 0 ? a : b, broadcast.
    pub fn where_(&mut self, mask: Id, a: Id, b: Id) -> Result<Id> {
        let s = broadcast_shape("where", self.shape(mask), self.shape(a))?;
        let s = broadcast_shape("where", &s, self.shape(b))?;
        Ok(self.push(Op::Where, vec![mask, a, b], s, DType::F32))
    }

    /// Reduce `axes` of x away.
    pub fn reduce(&mut self, op: ReduceOp, x: Id, axes: &[usize]) -> Result<Id> {
        let shape = self.shape(x).to_vec();
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        if axes.iter().any(|&a| a >= shape.len()) {
            return Err(shape_err(
                "reduce",
                format!("axes {axes:?} out of range for shape {shape:?}"),
            ));
        }
        if axes.is_empty() {
            return Ok(x);
        }
        let out: Vec<usize> = (0..shape.len())
            .filter(|a| !axes.contains(a))
            .map(|a| shape[a])
            .collect();
        if let Some(c) = self.const_value(x) {
            let n: usize = axes.iter().map(|&a| shape[a]).product();
            let v = if op == ReduceOp::Sum { c * n as f32 } else { c };
            return Ok(self.constant(v, &out));
        }
        Ok(self.push(Op::Reduce(op, axes), vec![x], out, DType::F32))
    }

    pub fn sum(&mut self, x: Id, axes: &[usize]) -> Result<Id> {
        self.reduce(ReduceOp::Sum, x, axes)
    }

    /// Mean over `axes`: a sum times 1/n.
    pub fn mean(&mut self, x: Id, axes: &[usize]) -> Result<Id> {
        let n: usize = axes
            .iter()
            .map(|&a| self.shape(x).get(a).copied().unwrap_or(1))
            .product();
        let s = self.sum(x, axes)?;
        self.scale(s, 1.0 / n as f32)
    }

    /// x broadcast to `shape` (x right-aligned; its axes must match or be 1).
    pub fn expand(&mut self, x: Id, shape: &[usize]) -> Result<Id> {
        let out = broadcast_shape("expand", self.shape(x), shape)?;
        if out != shape {
            return Err(shape_err(
                "expand",
                format!("{:?} does not broadcast to {shape:?}", self.shape(x)),
            ));
        }
        if self.shape(x) == shape {
            return Ok(x);
        }
        if let Some(c) = self.const_value(x) {
            return Ok(self.constant(c, shape));
        }
        Ok(self.push(Op::Expand, vec![x], shape.to_vec(), DType::F32))
    }

    pub fn reshape(&mut self, x: Id, shape: &[usize]) -> Result<Id> {
        if numel(self.shape(x)) != numel(shape) {
            return Err(shape_err(
                "reshape",
                format!(
                    "{:?} has {} elements, {shape:?} needs {}",
                    self.shape(x),
                    numel(self.shape(x)),
                    numel(shape)
                ),
            ));
        }
        if self.shape(x) == shape {
            return Ok(x);
        }
        let dtype = self.node(x).dtype;
        if let Some(c) = self.const_value(x) {
            return Ok(self.constant(c, shape));
        }
        Ok(self.push(Op::Reshape, vec![x], shape.to_vec(), dtype))
    }

    /// `[B, ...]` -> `[B, rest]`.
    pub fn flatten(&mut self, x: Id) -> Result<Id> {
        let s = self.shape(x).to_vec();
        let b = s.first().copied().unwrap_or(1);
        self.reshape(x, &[b, numel(&s[1.min(s.len())..])])
    }

    pub fn permute(&mut self, x: Id, perm: &[usize]) -> Result<Id> {
        let s = self.shape(x).to_vec();
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        if sorted != (0..s.len()).collect::<Vec<_>>() {
            return Err(shape_err(
                "permute",
                format!("{perm:?} is not a permutation of the axes of {s:?}"),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let out = perm.iter().map(|&p| s[p]).collect();
        Ok(self.push(Op::Permute(perm.to_vec()), vec![x], out, DType::F32))
    }

    /// The last two axes swapped.
    pub fn transpose(&mut self, x: Id) -> Result<Id> {
        let r = self.shape(x).len();
        if r < 2 {
            return Err(shape_err("transpose", format!("rank {r} < 2")));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.permute(x, &perm)
    }

    pub fn slice(&mut self, x: Id, axis: usize, start: usize, len: usize) -> Result<Id> {
        let s = self.shape(x).to_vec();
        if axis >= s.len() || len == 0 || start + len > s[axis] {
            return Err(shape_err(
                "slice",
                format!("{start}..{} of axis {axis} of {s:?}", start + len),
            ));
        }
        if len == s[axis] {
            return Ok(x);
        }
        let mut out = s;
        out[axis] = len;
        Ok(self.push(Op::Slice { axis, start }, vec![x], out, DType::F32))
    }

    /// x placed at `start` along `axis` of zeros `total` long there.
    pub fn pad(&mut self, x: Id, axis: usize, start: usize, total: usize) -> Result<Id> {
        let s = self.shape(x).to_vec();
        if axis >= s.len() || start + s[axis] > total {
            return Err(shape_err(
                "pad",
                format!("{s:?} at {start} along axis {axis} of length {total}"),
            ));
        }
        let mut out = s;
        out[axis] = total;
        Ok(self.push(Op::Pad { axis, start }, vec![x], out, DType::F32))
    }

    pub fn concat(&mut self, xs: &[Id], axis: usize) -> Result<Id> {
        let first = xs
            .first()
            .map(|&x| self.shape(x).to_vec())
            .ok_or_else(|| shape_err("concat", "no operands".into()))?;
        let mut out = first.clone();
        if axis < out.len() {
            out[axis] = 0;
        }
        for &x in xs {
            let s = self.shape(x);
            let fits = s.len() == first.len()
                && axis < s.len()
                && (0..s.len()).all(|a| a == axis || s[a] == first[a]);
            if !fits {
                return Err(shape_err(
                    "concat",
                    format!("{s:?} does not fit {first:?} along axis {axis}"),
                ));
            }
            out[axis] += s[axis];
        }
        if xs.len() == 1 {
            return Ok(xs[0]);
        }
        Ok(self.push(Op::Concat(axis), xs.to_vec(), out, DType::F32))
    }

    pub fn aux(&mut self, of: Id, k: usize) -> Id {
        let (shape, dtype) = self.node(of).aux[k].clone();
        self.push(Op::Aux(k), vec![of], shape, dtype)
    }
}
