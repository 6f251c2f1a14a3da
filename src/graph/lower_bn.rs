//! Lowering of batch normalisation (training and evaluation forward, backward) to
//! batchnorm.wgsl's kernels, each node with its own partial-sum and coefficient scratch.

use super::ir::*;
use super::lower::{aux, Tensors};
use crate::gpu::Gpu;
use crate::kernels::batchnorm::*;
use crate::kernels::Dispatch;
use crate::tensor::Tensor;
use crate::Result;

fn scratch(gpu: &Gpu, s: &BatchNormSpec) -> Result<(Tensor, Tensor)> {
    Ok((
        Tensor::zeros(gpu, "batch norm partial sums", &[s.part_len()])?,
        Tensor::zeros(gpu, "batch norm coefficients", &[s.coef_len()])?,
    ))
}

/// The dispatches of batch-norm node `id`, or `false` when it is not one.
pub(super) fn lower_bn(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    d: &mut Vec<Dispatch>,
) -> Result<bool> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let y = ts.get(g, id)?;
    match node.op {
        Op::BatchNorm {
            eps,
            relu,
            training,
        } => {
            let s = BatchNormSpec::of_shape(&node.shape, eps, relu)?;
            let (part, coef) = scratch(gpu, &s)?;
            let sc = BatchNormScratch {
                part: &part,
                coef: &coef,
            };
            let (xt, gamma, beta) = (x(0)?, x(1)?, x(2)?);
            let (mean, var) = match training {
                true => (aux(g, ts, id, 0)?, aux(g, ts, id, 1)?),
                false => (x(3)?, x(4)?),
            };
            let t = BatchNormTensors {
                x: &xt,
                gamma: &gamma,
                beta: &beta,
                y: &y,
                mean: &mean,
                var: &var,
            };
            d.extend(match training {
                true => batch_norm_train(gpu, &s, &t, &sc)?,
                false => batch_norm_eval(gpu, &s, &t, &sc)?,
            });
        }
        Op::BatchNormBackward { eps, relu } => {
            let s = BatchNormSpec::of_shape(&node.shape, eps, relu)?;
            let (part, coef) = scratch(gpu, &s)?;
            let sc = BatchNormScratch {
                part: &part,
                coef: &coef,
            };
            let bn = node.inputs[1];
            let (xt, bn_y, gamma, dy) = (x(0)?, x(1)?, x(2)?, x(3)?);
            let (mean, var) = (aux(g, ts, bn, 0)?, aux(g, ts, bn, 1)?);
            let t = BatchNormTensors {
                x: &xt,
                gamma: &gamma,
                // Not read by the backward.
                beta: &gamma,
                y: &bn_y,
                mean: &mean,
                var: &var,
            };
            let (dgamma, dbeta) = (aux(g, ts, id, 0)?, aux(g, ts, id, 1)?);
            let grads = BatchNormGrads {
                dy: &dy,
                dx: &y,
                dgamma: &dgamma,
                dbeta: &dbeta,
            };
            d.extend(batch_norm_backward(gpu, &s, &t, &grads, &sc)?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}
