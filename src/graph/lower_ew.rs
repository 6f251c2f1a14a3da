//! Lowering of the elementwise ops and reductions onto the elementwise kernel family
//! (unary, broadcast binary, scalar, where) and onto sums: a sum whose kept axes form one
//! block is `sum_outer_inner`; any other sum reduces one axis at a time as a batched
//! product with a ones vector.

use super::ir::*;
use super::lower::{kept_block, Tensors};
use crate::gpu::Gpu;
use crate::kernels::elementwise::{binary, binary_scalar, unary, unary_backward, where_};
use crate::kernels::matmul::{matmul, MatmulSpec};
use crate::kernels::reduce::sum_outer_inner;
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
        // x * ones(y's shape): the ones are a constant buffer of y's size.
        Op::Expand => {
            let ones = Tensor::from_f32(gpu, "expand ones", &n.shape, &vec![1.0; n.numel()])?;
            d.push(binary(gpu, BinaryOp::Mul, &x(0)?, &ones, &y)?);
        }
        Op::Reduce(ReduceOp::Sum, axes) => sum_axes(gpu, &x(0)?, axes, &y, d)?,
        op => {
            return Err(Error::shape(
                op.name(),
                format!("no kernel lowers this op yet (shape {:?}); hint: it builds and differentiates, but this build cannot run it", n.shape),
            ))
        }
    }
    Ok(())
}

/// y = x summed over `axes`.
fn sum_axes(
    gpu: &Gpu,
    x: &Tensor,
    axes: &[usize],
    y: &Tensor,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    if let Some(dims) = kept_block(&x.shape, axes) {
        d.push(sum_outer_inner(gpu, x, dims, y)?);
        return Ok(());
    }
    // One axis at a time, last first: x [pre, A, post] -> [pre, post] as pre products
    // op(x_b)ᵀ [post, A] · ones [A, 1].
    let mut cur = x.clone();
    for (i, &a) in axes.iter().enumerate().rev() {
        let s = cur.shape.clone();
        let (pre, len, post) = (s[..a].iter().product(), s[a], s[a + 1..].iter().product());
        let mut out_shape = s.clone();
        out_shape.remove(a);
        let out = if i == 0 {
            y.clone()
        } else {
            Tensor::zeros(gpu, "partial sum", &out_shape)?
        };
        let ones = Tensor::from_f32(gpu, "sum ones", &[len, 1], &vec![1.0; len])?;
        let spec = MatmulSpec {
            batch: pre,
            shared_b: pre > 1,
            transpose_a: true,
            ..MatmulSpec::new(post, 1, len)
        };
        d.extend(matmul(gpu, &spec, &cur, &ones, None, &out)?);
        cur = out.view(0, &out_shape);
    }
    Ok(())
}
