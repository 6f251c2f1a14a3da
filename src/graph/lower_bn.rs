//! Lowering of batch normalisation (training and evaluation forward, backward, and the
//! fused batch norm + ReLU + max pool) to batchnorm.wgsl's kernels, each node with its own
//! partial-sum and coefficient scratch.

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

/// The spec of a batch norm over x (with the fused pool, if any).
fn spec(x: &[usize], eps: f32, relu: bool, pool: usize) -> Result<BatchNormSpec> {
    Ok(BatchNormSpec {
        pool,
        ..BatchNormSpec::of_shape(x, eps, relu)?
    })
}

/// The forward of node `id` (BatchNorm or BatchNormPool): aux 0 is the argmax with a pool;
/// the statistics follow it in training.
#[allow(clippy::too_many_arguments)]
fn forward(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    s: &BatchNormSpec,
    training: bool,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let (part, coef) = scratch(gpu, s)?;
    let sc = BatchNormScratch {
        part: &part,
        coef: &coef,
    };
    let pooled = s.pool > 0;
    let argmax = if pooled {
        Some(aux(g, ts, id, 0)?)
    } else {
        None
    };
    let (xt, gamma, beta, y) = (x(0)?, x(1)?, x(2)?, ts.get(g, id)?);
    let first_stat = pooled as usize;
    let (mean, var) = match training {
        true => (aux(g, ts, id, first_stat)?, aux(g, ts, id, first_stat + 1)?),
        false => (x(3)?, x(4)?),
    };
    let t = BatchNormTensors {
        x: &xt,
        gamma: &gamma,
        beta: &beta,
        y: &y,
        mean: &mean,
        var: &var,
        argmax: argmax.as_ref(),
    };
    d.extend(match training {
        true => batch_norm_train(gpu, s, &t, &sc)?,
        false => batch_norm_eval(gpu, s, &t, &sc)?,
    });
    Ok(())
}

/// The backward node `id` of forward node inputs`[1]` (dx, aux dgamma and dbeta).
fn backward(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    id: Id,
    s: &BatchNormSpec,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let (part, coef) = scratch(gpu, s)?;
    let sc = BatchNormScratch {
        part: &part,
        coef: &coef,
    };
    let fwd = node.inputs[1];
    let pooled = s.pool > 0;
    let argmax = if pooled {
        Some(aux(g, ts, fwd, 0)?)
    } else {
        None
    };
    let first_stat = pooled as usize;
    let (xt, fwd_y, gamma, dy) = (x(0)?, x(1)?, x(2)?, x(3)?);
    let (mean, var) = (
        aux(g, ts, fwd, first_stat)?,
        aux(g, ts, fwd, first_stat + 1)?,
    );
    let t = BatchNormTensors {
        x: &xt,
        gamma: &gamma,
        // Not read by the backward.
        beta: &gamma,
        y: &fwd_y,
        mean: &mean,
        var: &var,
        argmax: argmax.as_ref(),
    };
    let (dx, dgamma, dbeta) = (ts.get(g, id)?, aux(g, ts, id, 0)?, aux(g, ts, id, 1)?);
    let grads = BatchNormGrads {
        dy: &dy,
        dx: &dx,
        dgamma: &dgamma,
        dbeta: &dbeta,
    };
    d.extend(batch_norm_backward(gpu, s, &t, &grads, &sc)?);
    Ok(())
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
    let x_shape = g.shape(node.inputs[0]);
    match node.op {
        Op::BatchNorm {
            eps,
            relu,
            training,
        } => forward(gpu, g, ts, id, &spec(x_shape, eps, relu, 0)?, training, d)?,
        Op::BatchNormPool {
            eps,
            pool,
            training,
        } => forward(
            gpu,
            g,
            ts,
            id,
            &spec(x_shape, eps, true, pool)?,
            training,
            d,
        )?,
        Op::BatchNormBackward { eps, relu } => {
            backward(gpu, g, ts, id, &spec(x_shape, eps, relu, 0)?, d)?
        }
        Op::BatchNormPoolBackward { eps, pool } => {
            backward(gpu, g, ts, id, &spec(x_shape, eps, true, pool)?, d)?
        }
        _ => return Ok(false),
    }
    Ok(true)
}
