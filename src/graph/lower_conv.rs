//! Lowering of the fused conv + ReLU + max pool ops: the uniform-window kernels where the
//! windows fit, else the conv and the pool (or their gradients) one after the other.

use super::ir::*;
use super::lower::{aux, conv_spec, pool_spec, sum_partials, Tensors};
use crate::gpu::Gpu;
use crate::kernels::conv2d::*;
use crate::kernels::pool::*;
use crate::kernels::Dispatch;
use crate::tensor::Tensor;
use crate::Result;

#[allow(clippy::too_many_arguments)]
pub(super) fn lower_conv_relu_pool(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    conv: ConvAttrs,
    pool: PoolAttrs,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let n = g.node(id);
    let s = conv_spec(g, n.inputs[0], n.inputs[1], conv)?;
    let ps = pool_spec(&s.y_shape(), pool);
    let (x, w, b) = (
        ts.get(g, n.inputs[0])?,
        ts.get(g, n.inputs[1])?,
        ts.get(g, n.inputs[2])?,
    );
    let (y, arg) = (ts.get(g, id)?, aux(g, ts, id, 0)?);
    if let Some(ds) = conv2d_relu_pool_windowed(gpu, &s, &ps, &x, &w, &b, &y, &arg)? {
        d.extend(ds);
        return Ok(());
    }
    // The windows do not fit: the conv into a scratch tensor, then the pool.
    let z = Tensor::zeros(gpu, "conv out", &s.y_shape())?;
    d.push(conv2d_forward(gpu, &s, &x, &w, Some(&b), true, &z)?);
    d.push(max_pool2d_forward(gpu, &ps, &z, &arg, &y)?);
    Ok(())
}

pub(super) fn lower_conv_relu_pool_backward(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    conv: ConvAttrs,
    pool: PoolAttrs,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let n = g.node(id);
    let (x, gp, p) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let s = conv_spec(g, x, g.node(p).inputs[1], conv)?;
    let ps = pool_spec(&s.y_shape(), pool);
    let (xt, gt, yt, arg) = (
        ts.get(g, x)?,
        ts.get(g, gp)?,
        ts.get(g, p)?,
        aux(g, ts, p, 0)?,
    );
    let (dw, db) = (ts.get(g, id)?, aux(g, ts, id, 0)?);
    if let Some(rows) = relu_pool_weight_rows(gpu, &s, &ps) {
        let part = Tensor::zeros(gpu, "conv dweight partials", &[rows, s.part_row()])?;
        if let Some(ds) =
            conv2d_relu_pool_backward_weight_windowed(gpu, &s, &ps, &xt, &gt, &yt, &arg, &part)?
        {
            d.extend(ds);
            d.extend(sum_partials(gpu, &part, &dw, Some(&db))?);
            return Ok(());
        }
    }
    let gz = Tensor::zeros(gpu, "conv dout", &s.y_shape())?;
    d.push(max_pool2d_relu_backward(gpu, &ps, &gt, &arg, &yt, &gz)?);
    let part = Tensor::zeros(
        gpu,
        "conv dweight partials",
        &[s.weight_chunks(), s.part_row()],
    )?;
    d.push(conv2d_backward_weight(gpu, &s, &gz, &xt, &part)?);
    d.extend(sum_partials(gpu, &part, &dw, Some(&db))?);
    Ok(())
}
