//! Lowering of the sequence-model ops (embedding, row softmax, layer norm) to their
//! kernels: embedding.wgsl, softmax.wgsl, layernorm.wgsl. Each op views its operands as
//! the kernel's rows: `[R, C]` with C the last axis.

use super::ir::*;
use super::lower::{aux, Tensors};
use crate::gpu::Gpu;
use crate::kernels::embedding::{embedding, embedding_backward, embedding_scratch_len};
use crate::kernels::layernorm::*;
use crate::kernels::softmax::{softmax_rows, softmax_rows_backward, SoftmaxSpec};
use crate::kernels::Dispatch;
use crate::tensor::Tensor;
use crate::Result;

/// `[R, C]` of a tensor shape: C its last axis.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let c = shape.last().copied().unwrap_or(1).max(1);
    (numel(shape) / c, c)
}

fn softmax_spec(shape: &[usize], causal: usize) -> SoftmaxSpec {
    let (rows, cols) = rows_cols(shape);
    SoftmaxSpec {
        causal: (causal > 0).then_some(causal),
        ..SoftmaxSpec::new(rows, cols)
    }
}

fn layer_norm_spec(shape: &[usize], eps: f32) -> LayerNormSpec {
    let (rows, cols) = rows_cols(shape);
    LayerNormSpec {
        eps,
        ..LayerNormSpec::new(rows, cols)
    }
}

/// The dispatches of sequence op `id`, or `false` when it is not one.
pub(super) fn lower_seq(
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
        Op::Embedding => d.push(embedding(gpu, &x(0)?, &x(1)?, &y)?),
        Op::EmbeddingBackward => {
            let (idx, dy) = (x(0)?, x(1)?);
            let len = embedding_scratch_len(y.shape[0], idx.numel());
            let scratch = Tensor::zeros(gpu, "embedding sort scratch", &[len])?;
            d.extend(embedding_backward(gpu, &idx, &dy, &scratch, &y)?);
        }
        Op::Softmax { causal } => {
            let s = softmax_spec(&node.shape, causal);
            d.push(softmax_rows(gpu, &s, &x(0)?, &y)?);
        }
        Op::SoftmaxBackward { causal } => {
            let s = softmax_spec(&node.shape, causal);
            d.push(softmax_rows_backward(gpu, &s, &x(0)?, &x(1)?, &y)?);
        }
        Op::LayerNorm { eps } => {
            let s = layer_norm_spec(&node.shape, eps);
            let (mean, rstd) = (aux(g, ts, id, 0)?, aux(g, ts, id, 1)?);
            let stats = LayerNormStats {
                mean: &mean,
                rstd: &rstd,
            };
            d.push(layer_norm(gpu, &s, &x(0)?, &x(1)?, &x(2)?, &y, &stats)?);
        }
        Op::LayerNormBackwardInput { eps } => {
            let s = layer_norm_spec(&node.shape, eps);
            let ln = node.inputs[1];
            let (mean, rstd) = (aux(g, ts, ln, 0)?, aux(g, ts, ln, 1)?);
            let stats = LayerNormStats {
                mean: &mean,
                rstd: &rstd,
            };
            let (xt, gamma, dy) = (x(0)?, x(2)?, x(3)?);
            d.push(layer_norm_backward_input(
                gpu, &s, &xt, &gamma, &stats, &dy, &y,
            )?);
        }
        Op::LayerNormBackwardParams { eps } => {
            let s = layer_norm_spec(g.shape(node.inputs[0]), eps);
            let ln = node.inputs[1];
            let (mean, rstd) = (aux(g, ts, ln, 0)?, aux(g, ts, ln, 1)?);
            let stats = LayerNormStats {
                mean: &mean,
                rstd: &rstd,
            };
            let partial = match s.partial_len() {
                0 => None,
                n => Some(Tensor::zeros(gpu, "layer norm partials", &[n])?),
            };
            let dbeta = aux(g, ts, id, 0)?;
            let grads = LayerNormParamGrads {
                dgamma: &y,
                dbeta: &dbeta,
                partial: partial.as_ref(),
            };
            d.extend(layer_norm_backward_params(
                gpu,
                &s,
                &x(0)?,
                &stats,
                &x(2)?,
                &grads,
            )?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}
