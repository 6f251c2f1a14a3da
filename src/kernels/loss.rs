//! Losses: shaders/loss.wgsl, its wrappers and references. B = batch, C = classes (or
//! outputs, for MSE). Forward gives per-sample loss (and probabilities); backward gives the
//! gradient of the batch-mean loss with respect to the logits.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, expect_shape, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Softmax over C classes fused with cross-entropy against a class index.
    SoftmaxCrossEntropy,
    /// Sigmoid fused with binary cross-entropy against a 0/1 label (C = 1).
    SigmoidBinaryCrossEntropy,
    /// Mean squared error against an f32 target `[B, C]`.
    MeanSquaredError,
}

/// The loss's operands. `label` is u32 `[B]` (classification), `target` f32 `[B, C]` (MSE).
pub struct LossTensors<'a> {
    pub z: &'a Tensor,
    pub label: Option<&'a Tensor>,
    pub target: Option<&'a Tensor>,
    pub prob: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    classes: u32,
    scale: f32,
    _pad: u32,
}

fn entries(loss: Loss) -> (&'static str, &'static str) {
    match loss {
        Loss::SoftmaxCrossEntropy => ("softmax_xent_forward", "softmax_xent_backward"),
        Loss::SigmoidBinaryCrossEntropy => ("sigmoid_bce_forward", "sigmoid_bce_backward"),
        Loss::MeanSquaredError => ("mse_forward", "mse_backward"),
    }
}

fn call(
    gpu: &Gpu,
    loss: Loss,
    backward: bool,
    t: &LossTensors<'_>,
    out: &Tensor,
) -> Result<Dispatch> {
    let (fwd, bwd) = entries(loss);
    let entry = if backward { bwd } else { fwd };
    let [batch, classes] = match t.z.shape[..] {
        [b, c] if b > 0 && c > 0 => [b, c],
        _ => {
            return Err(Error::shape(
                entry,
                format!("logits have shape {:?}, expected [B, C]", t.z.shape),
            ))
        }
    };
    expect_shape(entry, "prob", t.prob, &[batch, classes])?;
    let label = match (loss, t.label, t.target) {
        (Loss::MeanSquaredError, _, Some(target)) => {
            expect_shape(entry, "target", target, &[batch, classes])?;
            t.z
        }
        (Loss::SoftmaxCrossEntropy | Loss::SigmoidBinaryCrossEntropy, Some(label), _) => {
            expect_shape(entry, "label", label, &[batch])?;
            label
        }
        _ => {
            return Err(Error::shape(
                entry,
                "missing label (classification) or target (MSE)",
            ))
        }
    };
    if loss == Loss::SigmoidBinaryCrossEntropy && classes != 1 {
        return Err(Error::shape(
            entry,
            format!("sigmoid binary cross-entropy needs C = 1, got {classes}"),
        ));
    }
    let out_shape: &[usize] = if backward {
        &[batch, classes]
    } else {
        &[batch]
    };
    expect_shape(entry, "output", out, out_shape)?;
    let params = Params {
        batch: batch as u32,
        classes: classes as u32,
        scale: 1.0 / batch as f32,
        _pad: 0,
    };
    let per_row = !backward || loss == Loss::SigmoidBinaryCrossEntropy;
    let n = if per_row { batch } else { batch * classes };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Loss,
            entry,
            params: bytemuck::bytes_of(&params),
            bindings: &[
                (t.z, Access::Read),
                (label, Access::Read),
                (t.target.unwrap_or(t.z), Access::Read),
                (t.prob, Access::ReadWrite),
                (out, Access::ReadWrite),
            ],
            workgroups: grid_1d(gpu, entry, n)?,
            constants: &[],
        },
    )
}

/// prob `[B,C]` and loss `[B]` from logits z `[B,C]`.
pub fn loss_forward(
    gpu: &Gpu,
    loss: Loss,
    t: &LossTensors<'_>,
    per_sample: &Tensor,
) -> Result<Dispatch> {
    call(gpu, loss, false, t, per_sample)
}

/// dz `[B,C]` = d(mean_b loss`[b]`) / dz, from the forward's prob.
pub fn loss_backward(gpu: &Gpu, loss: Loss, t: &LossTensors<'_>, dz: &Tensor) -> Result<Dispatch> {
    call(gpu, loss, true, t, dz)
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// (prob `[B,C]`, loss `[B]`). `label` holds class indices, or for MSE is ignored.
pub fn loss_forward_ref(
    loss: Loss,
    classes: usize,
    z: &[f64],
    label: &[u32],
    target: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut prob = Vec::with_capacity(z.len());
    let mut per_sample = Vec::new();
    for (b, row) in z.chunks(classes).enumerate() {
        match loss {
            Loss::SoftmaxCrossEntropy => {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                prob.extend(row.iter().map(|v| (v - max).exp() / sum));
                per_sample.push(sum.ln() - (row[label[b] as usize] - max));
            }
            Loss::SigmoidBinaryCrossEntropy => {
                let (x, t) = (row[0], (label[b] != 0) as u32 as f64);
                prob.push(1.0 / (1.0 + (-x).exp()));
                per_sample.push(x.max(0.0) - x * t + (1.0 + (-x.abs()).exp()).ln());
            }
            Loss::MeanSquaredError => {
                let t = &target[b * classes..(b + 1) * classes];
                prob.extend_from_slice(row);
                per_sample.push(
                    row.iter().zip(t).map(|(z, t)| (z - t).powi(2)).sum::<f64>() / classes as f64,
                );
            }
        }
    }
    (prob, per_sample)
}

/// dz `[B,C]` of the batch-mean loss.
pub fn loss_backward_ref(
    loss: Loss,
    classes: usize,
    prob: &[f64],
    label: &[u32],
    target: &[f64],
) -> Vec<f64> {
    let batch = prob.len() / classes;
    let scale = 1.0 / batch as f64;
    (0..prob.len())
        .map(|i| {
            let (b, c) = (i / classes, i % classes);
            match loss {
                Loss::SoftmaxCrossEntropy => {
                    (prob[i] - (label[b] as usize == c) as u32 as f64) * scale
                }
                Loss::SigmoidBinaryCrossEntropy => {
                    (prob[i] - (label[b] != 0) as u32 as f64) * scale
                }
                Loss::MeanSquaredError => 2.0 * (prob[i] - target[i]) / classes as f64 * scale,
            }
        })
        .collect()
}
