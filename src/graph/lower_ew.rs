//! Lowering of the elementwise ops, reductions and data movement: the elementwise family
//! (unary, broadcast binary, scalar, where), the strided-copy family (expand, permute,
//! slice, pad, concat) and reductions (a sum whose kept axes form one block is
//! `sum_outer_inner`; anything else reduces one axis at a time with `reduce_axis`).

use super::ir::*;
use super::lower::{kept_block, Tensors};
use crate::gpu::Gpu;
use crate::kernels::copy::{concat, expand, pad_into, permute, slice};
use crate::kernels::elementwise::{binary, binary_scalar, fill, unary, unary_backward, where_};
use crate::kernels::reduce::sum_outer_inner;
use crate::kernels::reduce_axis::{reduce, ReduceOp as KernelReduce};
use crate::kernels::Dispatch;
use crate::tensor::Tensor;
use crate::{Error, Result};

pub fn lower_elementwise(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let n = g.node(id);
    let x = |i: usize| ts.get(g, n.inputs[i]);
    let konst = |i: usize| match g.node(n.inputs[i]).op {
        Op::Const(c) => Some(c),
        _ => None,
    };
    let y = ts.get(g, id)?;
    match &n.op {
        Op::Unary(u) => d.push(unary(gpu, *u, &x(0)?, &y)?),
        // [x or y, dy]: the kernel binds only the one its rule reads.
        Op::UnaryBackward(u) => d.push(unary_backward(gpu, *u, &x(0)?, &x(0)?, &x(1)?, &y)?),
        Op::Binary(op) => match (konst(0), konst(1)) {
            (_, Some(c)) if g.shape(n.inputs[0]) == n.shape.as_slice() => {
                d.push(binary_scalar(gpu, *op, &x(0)?, c, false, &y)?)
            }
            (Some(c), _) if g.shape(n.inputs[1]) == n.shape.as_slice() => {
                d.push(binary_scalar(gpu, *op, &x(1)?, c, true, &y)?)
            }
            _ => d.push(binary(gpu, *op, &x(0)?, &x(1)?, &y)?),
        },
        Op::Where => d.push(where_(gpu, &x(0)?, &x(1)?, &x(2)?, &y)?),
        Op::Expand => d.push(expand(gpu, &x(0)?, &y)?),
        Op::Reduce(op, axes) => reduce_axes(gpu, *op, &x(0)?, axes, &y, d)?,
        Op::Permute(perm) => d.push(permute(gpu, &x(0)?, perm, &y)?),
        Op::Slice { axis, start } => {
            d.push(slice(gpu, &x(0)?, *axis, *start, n.shape[*axis], &y)?)
        }
        Op::Pad { axis, start } => {
            let mut at = vec![0; n.shape.len()];
            at[*axis] = *start;
            d.push(fill(gpu, &y, 0.0)?);
            d.push(pad_into(gpu, &x(0)?, &y, &at, false)?);
        }
        Op::Concat(axis) => {
            let xs = (0..n.inputs.len()).map(x).collect::<Result<Vec<_>>>()?;
            d.extend(concat(gpu, &xs.iter().collect::<Vec<_>>(), *axis, &y)?);
        }
        op => {
            return Err(Error::shape(
                op.name(),
                format!("no kernel lowers this op yet (shape {:?}); hint: it builds and differentiates, but this build cannot run it", n.shape),
            ))
        }
    }
    Ok(())
}

/// y = x reduced over `axes`.
fn reduce_axes(
    gpu: &Gpu,
    op: ReduceOp,
    x: &Tensor,
    axes: &[usize],
    y: &Tensor,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    if let (ReduceOp::Sum, Some(dims)) = (op, kept_block(&x.shape, axes)) {
        d.push(sum_outer_inner(gpu, x, dims, y)?);
        return Ok(());
    }
    let kop = match op {
        ReduceOp::Sum => KernelReduce::Sum,
        ReduceOp::Max => KernelReduce::Max,
    };
    // One axis at a time, last first: x [pre, A, post] -> [pre, post].
    let mut cur = x.clone();
    for (i, &a) in axes.iter().enumerate().rev() {
        let s = cur.shape.clone();
        let dims = (s[..a].iter().product(), s[a], s[a + 1..].iter().product());
        let mut out_shape = s.clone();
        out_shape.remove(a);
        let out = match i {
            0 => y.clone(),
            _ => Tensor::zeros(gpu, "partial reduction", &out_shape)?,
        };
        d.extend(reduce(gpu, kop, &cur, dims, &out)?);
        cur = out.view(0, &out_shape);
    }
    Ok(())
}
