//! A model compiled for one batch size: the static list of dispatches of one step
//! (gather -> forward -> loss -> metrics, and in training backward -> optimizer), with
//! every activation and gradient buffer allocated once.
//!
//! B = batch. Activations are batch-major NCHW ([B, C, H, W]) or [B, N].

use crate::gpu::Gpu;
use crate::kernels::activation::{activation_backward, activation_forward, Activation as Act};
use crate::kernels::conv2d::*;
use crate::kernels::gather::{gather_batch, gather_rows_f32};
use crate::kernels::loss::{loss_backward, loss_forward, Loss, LossTensors};
use crate::kernels::matmul::{matmul, runs_windowed, MatmulSpec};
use crate::kernels::optim::{optimizer_step, Optimizer};
use crate::kernels::pool::*;
use crate::kernels::reduce::{
    accumulate_metrics, sum_outer_inner, sum_outer_inner_range, Accuracy,
};
use crate::kernels::transpose::transpose;
use crate::kernels::Dispatch;
use crate::model::{Activation, Layer, Sequential};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::Result;

/// Where a plan's batches come from: a GPU-resident dataset and an index order into it.
pub enum BatchSource<'a> {
    /// u8 images packed four per word and their u8 class labels (see gather.wgsl), for
    /// classification (softmax or sigmoid outputs).
    Images {
        pixels: &'a Tensor,
        labels: &'a Tensor,
        order: &'a Tensor,
    },
    /// f32 feature rows [N, D] and f32 target rows [N, T], for regression (linear outputs,
    /// mean squared error).
    Rows {
        features: &'a Tensor,
        targets: &'a Tensor,
        order: &'a Tensor,
    },
}

/// The compiled step. `dispatches[0]` is the gather; in training the last is the optimizer.
pub struct Plan {
    pub batch: usize,
    pub dispatches: Vec<Dispatch>,
    pub train: bool,
    /// Outputs of the forward pass, readable after a step (evaluate, predict).
    pub prob: Tensor,
    /// Class labels [B] (all zero for an f32 row dataset, which has targets instead).
    pub label: Tensor,
    /// Regression targets [B, T] (f32 row datasets only).
    pub target: Option<Tensor>,
    pub loss: Tensor,
}

impl Plan {
    pub fn gather(&self) -> &Dispatch {
        &self.dispatches[0]
    }

    pub fn optimizer(&self) -> Option<&Dispatch> {
        if self.train {
            self.dispatches.last()
        } else {
            None
        }
    }
}

/// The loss the model's output activation implies.
pub fn loss_of(model: &Sequential) -> Loss {
    match model.output_activation() {
        Activation::Softmax => Loss::SoftmaxCrossEntropy,
        Activation::Sigmoid => Loss::SigmoidBinaryCrossEntropy,
        _ => Loss::MeanSquaredError,
    }
}

fn kernel_act(a: Activation) -> Option<Act> {
    match a {
        Activation::Relu => Some(Act::Relu),
        Activation::Sigmoid => Some(Act::Sigmoid),
        _ => None,
    }
}

/// What the forward pass keeps of each layer for the backward pass.
struct Saved {
    input: Tensor,
    /// Output after the activation (what the next layer reads).
    output: Tensor,
    /// Activation applied after the affine part, not fused into the loss.
    act: Option<Act>,
    argmax: Option<Tensor>,
    /// Dense layers whose matmuls read uniform windows: the input and weight transposed,
    /// x^T [IN, B] and W^T [IN, OUT], made in the forward pass and reused backward.
    transposed: Option<(Tensor, Tensor)>,
    /// A max pool computed by its conv's kernel (conv2d_relu_pool_windowed).
    fused_with_conv: bool,
}

/// `x` viewed as [B, rest].
fn rows(x: &Tensor, batch: usize) -> Tensor {
    x.view(0, &[batch, x.numel() / batch])
}

fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Tensor> {
    Tensor::zeros(gpu, label, shape)
}

/// Compile `model` for batches of `batch` from `source`. With `optimizer`, the plan trains
/// (backward and update); without, it only evaluates. `metrics` receives loss sums and
/// correct counts.
pub fn build_plan(
    gpu: &Gpu,
    model: &Sequential,
    store: &ParamStore,
    batch: usize,
    source: &BatchSource<'_>,
    optimizer: Option<&Optimizer>,
    metrics: &Tensor,
) -> Result<Plan> {
    let shapes = model.shapes()?;
    let [c0, h0, w0] = model.input;
    let last = model.layers.len() - 1;
    let mut d = Vec::new();

    // gather: images -> x [B, C*H*W], label [B]; or f32 rows -> x [B, D], target [B, T]
    let loss = loss_of(model);
    let x = zeros(gpu, "x", &[batch, c0 * h0 * w0])?;
    let label = zeros(gpu, "label", &[batch])?;
    let target = match *source {
        BatchSource::Images {
            pixels,
            labels,
            order,
        } => {
            if loss == Loss::MeanSquaredError {
                return Err(crate::Error::usage(
                    "model",
                    "a linear output (mean squared error) needs f32 regression targets, which image datasets do not have; add the data with Trainer::add_dataset_f32, or end with softmax (or sigmoid on 1 unit)",
                ));
            }
            d.push(gather_batch(gpu, pixels, labels, order, 0, &x, &label)?);
            None
        }
        BatchSource::Rows {
            features,
            targets,
            order,
        } => {
            if loss != Loss::MeanSquaredError {
                return Err(crate::Error::usage(
                    "model",
                    "an f32 row dataset holds regression targets, which need a linear output (mean squared error); add classification data with Trainer::add_dataset (u8 labels)",
                ));
            }
            let t = zeros(gpu, "target", &[batch, shapes[last][0]])?;
            d.push(gather_rows_f32(gpu, features, targets, order, 0, &x, &t)?);
            Some(t)
        }
    };

    // ---- forward ----
    let mut cur = x.view(0, &[batch, c0, h0, w0]); // [B, C, H, W]
    let mut saved: Vec<Saved> = Vec::new();
    let mut param_index = 0;
    // A conv + ReLU whose max pool ran fused with it: the pool's outputs (y, argmax).
    let mut fused_pool: Option<(Tensor, Tensor)> = None;
    for (i, layer) in model.layers.iter().enumerate() {
        let mut out_shape = vec![batch];
        out_shape.extend(&shapes[i]);
        let is_last = i == last;
        // The last layer's activation is fused into the loss.
        let act = |a: Activation| if is_last { None } else { kernel_act(a) };
        let input = cur.clone();
        let mut transposed = None;
        let fused_with_conv = matches!(layer, Layer::MaxPool2d { .. }) && fused_pool.is_some();
        let (output, act_k, argmax) = match layer {
            Layer::Conv2d {
                padding,
                activation,
                ..
            } => {
                let s = conv_spec(
                    batch,
                    &input.shape,
                    &out_shape,
                    &store.specs[param_index].shape,
                    *padding,
                );
                let (w, b) = (store.param(param_index), store.param(param_index + 1));
                param_index += 2;
                let a = act(*activation);
                let z = zeros(gpu, "conv out", &out_shape)?;
                let relu = a == Some(Act::Relu);
                // On window adapters a conv + ReLU followed by a max pool runs as one kernel
                // that never writes z (the backward needs only the pool's argmax and output,
                // see the pool's fused ReLU backward), else the conv alone.
                if let (true, true, Some(Layer::MaxPool2d { pool, stride })) =
                    (gpu.windows(), relu, model.layers.get(i + 1))
                {
                    let ps = pool_spec(batch, &out_shape, *pool, *stride);
                    let pooled = ps.y_shape();
                    let (y, arg) = (
                        zeros(gpu, "pool out", &pooled)?,
                        zeros(gpu, "argmax", &pooled)?,
                    );
                    if let Some(ds) =
                        conv2d_relu_pool_windowed(gpu, &s, &ps, &input, &w, &b, &y, &arg)?
                    {
                        d.extend(ds);
                        fused_pool = Some((y, arg));
                    }
                }
                if fused_pool.is_none() {
                    let windowed = if gpu.windows() {
                        conv2d_forward_windowed(gpu, &s, &input, &w, Some(&b), relu, &z)?
                    } else {
                        None
                    };
                    match windowed {
                        Some(ds) => d.extend(ds),
                        None => d.push(conv2d_forward(gpu, &s, &input, &w, Some(&b), relu, &z)?),
                    }
                }
                split_activation(gpu, &mut d, a, z)?
            }
            Layer::Dense { units, activation } => {
                let n_in = input.numel() / batch;
                let spec = MatmulSpec {
                    transpose_b: true,
                    bias: true,
                    ..MatmulSpec::new(batch, *units, n_in)
                };
                let (w, b) = (store.param(param_index), store.param(param_index + 1));
                param_index += 2;
                let a = act(*activation);
                let spec = MatmulSpec {
                    relu: a == Some(Act::Relu),
                    ..spec
                };
                let z = zeros(gpu, "dense out", &out_shape)?;
                // Uniform windows (CPU adapters) need the forward's operands K-major:
                // x^T [IN, B] and W^T [IN, OUT], transposed here once per step.
                let flipped = MatmulSpec {
                    transpose_a: true,
                    transpose_b: false,
                    ..spec
                };
                if !runs_windowed(gpu, &spec) && runs_windowed(gpu, &flipped) {
                    let xt = zeros(gpu, "dense input^T", &[n_in, batch])?;
                    let wt = zeros(gpu, "dense weight^T", &[n_in, *units])?;
                    d.push(transpose(gpu, &rows(&input, batch), &xt)?);
                    d.push(transpose(gpu, &w, &wt)?);
                    // [IN, B]^T x [IN, OUT] + b -> [B, OUT]
                    d.extend(matmul(gpu, &flipped, &xt, &wt, Some(&b), &z)?);
                    transposed = Some((xt, wt));
                } else {
                    // [B, IN] x [OUT, IN]^T + b -> [B, OUT]
                    d.extend(matmul(gpu, &spec, &rows(&input, batch), &w, Some(&b), &z)?);
                }
                split_activation(gpu, &mut d, a, z)?
            }
            Layer::MaxPool2d { pool, stride } => match fused_pool.take() {
                Some((y, arg)) => (y, None, Some(arg)),
                None => {
                    let s = pool_spec(batch, &input.shape, *pool, *stride);
                    let (y, arg) = (
                        zeros(gpu, "pool out", &out_shape)?,
                        zeros(gpu, "argmax", &out_shape)?,
                    );
                    d.push(max_pool2d_forward(gpu, &s, &input, &arg, &y)?);
                    (y, None, Some(arg))
                }
            },
            Layer::Flatten => (input.view(0, &out_shape), None, None),
            Layer::Activation(a) => match act(*a) {
                Some(k) => {
                    let y = zeros(gpu, "activation out", &out_shape)?;
                    d.push(activation_forward(gpu, k, &input, &y)?);
                    (y, Some(k), None)
                }
                None => (input.clone(), None, None),
            },
        };
        cur = output.clone();
        saved.push(Saved {
            input,
            output,
            act: act_k,
            argmax,
            transposed,
            fused_with_conv,
        });
    }

    // ---- loss and metrics ----
    let classes = shapes[last][0];
    let logits = cur.view(0, &[batch, classes]); // [B, C]
    let prob = zeros(gpu, "prob", &[batch, classes])?;
    let per_sample = zeros(gpu, "loss", &[batch])?;
    let lt = LossTensors {
        z: &logits,
        label: Some(&label),
        target: target.as_ref(),
        prob: &prob,
    };
    d.push(loss_forward(gpu, loss, &lt, &per_sample)?);
    let accuracy = match target {
        Some(_) => Accuracy::None,
        None => Accuracy::Classification,
    };
    d.push(accumulate_metrics(
        gpu,
        &per_sample,
        &prob,
        &label,
        accuracy,
        metrics,
    )?);

    let Some(optimizer) = optimizer else {
        return Ok(Plan {
            batch,
            dispatches: d,
            train: false,
            prob,
            label,
            target,
            loss: per_sample,
        });
    };

    // ---- backward ----
    let mut g = zeros(gpu, "dlogits", &[batch, classes])?;
    d.push(loss_backward(gpu, loss, &lt, &g)?);
    // Layers up to the first one with parameters need no input gradient.
    let first_param_layer = store
        .specs
        .first()
        .map(|s| s.layer)
        .unwrap_or(model.layers.len());
    let mut relu_done = false;
    // The first layer's conv gradients came with its fused pool's backward.
    let mut conv_done = false;
    for (i, layer) in model.layers.iter().enumerate().rev() {
        if i < first_param_layer {
            break;
        }
        if conv_done {
            break;
        }
        let sv = &saved[i];
        let needs_dx = i > first_param_layer;
        // g: gradient w.r.t. this layer's output; gz: w.r.t. the affine part's output.
        // (A ReLU just before a max pool was undone by the pool's fused backward.)
        let gz = match sv.act {
            Some(k) if !(k == Act::Relu && relu_done) => {
                let gz = zeros(gpu, "dpre", &g.shape)?;
                d.push(activation_backward(gpu, k, &g, &sv.output, &gz)?);
                gz
            }
            _ => g.clone(),
        };
        relu_done = false;
        g = match layer {
            Layer::Conv2d { padding, .. } => {
                let wi = store.specs.iter().position(|s| s.layer == i).unwrap_or(0);
                let s = conv_spec(
                    batch,
                    &sv.input.shape,
                    &gz.shape,
                    &store.specs[wi].shape,
                    *padding,
                );
                let part = zeros(
                    gpu,
                    "conv dweight partials",
                    &[s.weight_chunks(), s.part_row()],
                )?;
                d.push(conv2d_backward_weight(gpu, &s, &gz, &sv.input, &part)?);
                d.extend(sum_conv_partials(gpu, store, wi, &part)?);
                if !needs_dx {
                    break;
                }
                let dx = zeros(gpu, "conv dinput", &sv.input.shape)?;
                d.push(conv2d_backward_input(gpu, &s, &gz, &store.param(wi), &dx)?);
                dx
            }
            Layer::Dense { units, .. } => {
                let wi = store.specs.iter().position(|s| s.layer == i).unwrap_or(0);
                let n_in = sv.input.numel() / batch;
                let x2 = rows(&sv.input, batch);
                // dweight [OUT, IN] = gz^T [OUT, B] x x [B, IN]  (or x^T [IN, B] transposed)
                let dw = MatmulSpec {
                    transpose_a: true,
                    ..MatmulSpec::new(*units, n_in, batch)
                };
                let dw_t = MatmulSpec {
                    transpose_b: true,
                    ..dw
                };
                d.extend(match &sv.transposed {
                    Some((xt, _)) if !runs_windowed(gpu, &dw) && runs_windowed(gpu, &dw_t) => {
                        matmul(gpu, &dw_t, &gz, xt, None, &store.grad(wi))?
                    }
                    _ => matmul(gpu, &dw, &gz, &x2, None, &store.grad(wi))?,
                });
                // dbias [OUT] = column sums of gz [B, OUT]
                d.push(sum_outer_inner(
                    gpu,
                    &gz,
                    (batch, *units, 1),
                    &store.grad(wi + 1),
                )?);
                if !needs_dx {
                    break;
                }
                // dinput [B, IN] = gz [B, OUT] x W [OUT, IN]  (or W^T [IN, OUT] transposed)
                let dx = zeros(gpu, "dense dinput", &sv.input.shape)?;
                let spec = MatmulSpec::new(batch, n_in, *units);
                let spec_t = MatmulSpec {
                    transpose_b: true,
                    ..spec
                };
                let w = store.param(wi);
                d.extend(match &sv.transposed {
                    Some((_, wt)) if !runs_windowed(gpu, &spec) && runs_windowed(gpu, &spec_t) => {
                        matmul(gpu, &spec_t, &gz, wt, None, &rows(&dx, batch))?
                    }
                    _ => matmul(gpu, &spec, &gz, &w, None, &rows(&dx, batch))?,
                });
                dx
            }
            Layer::MaxPool2d { pool, stride } => {
                let s = pool_spec(batch, &sv.input.shape, *pool, *stride);
                // A first-layer conv + ReLU + pool that ran fused: its dweight and dbias come
                // straight from the pool's gradient, and no conv gradient is formed.
                if sv.fused_with_conv && i == first_param_layer + 1 {
                    if let Some(dispatches) =
                        fused_conv_grads(gpu, store, model, i - 1, &saved[i - 1], &s, sv, &gz)?
                    {
                        d.extend(dispatches);
                        conv_done = true;
                        continue;
                    }
                }
                let dx = zeros(gpu, "pool dinput", &sv.input.shape)?;
                let relu_before = i > 0 && saved[i - 1].act == Some(Act::Relu);
                if let Some(arg) = &sv.argmax {
                    if relu_before {
                        // dx = pool backward masked by the ReLU's output: one pass, not two.
                        d.push(max_pool2d_relu_backward(
                            gpu, &s, &gz, arg, &sv.output, &dx,
                        )?);
                        relu_done = true;
                    } else {
                        d.push(max_pool2d_backward(gpu, &s, &gz, arg, &dx)?);
                    }
                }
                dx
            }
            Layer::Flatten => gz.view(0, &sv.input.shape),
            Layer::Activation(_) => gz,
        };
    }
    d.push(optimizer_step(
        gpu,
        optimizer,
        &store.grads,
        &store.params,
        &store.m,
        &store.v,
    )?);
    Ok(Plan {
        batch,
        dispatches: d,
        train: true,
        prob,
        label,
        target,
        loss: per_sample,
    })
}

/// A sigmoid after a conv/dense runs as its own kernel; ReLU was fused into the producer.
/// Returns (output, activation to undo in backward, argmax).
/// The dispatches that leave conv layer `ci`'s dweight and dbias in the gradient buffer
/// from its fused pool's gradient `g`, or None where the windows do not fit.
#[allow(clippy::too_many_arguments)]
fn fused_conv_grads(
    gpu: &Gpu,
    store: &ParamStore,
    model: &Sequential,
    ci: usize,
    conv: &Saved,
    ps: &PoolSpec,
    pool: &Saved,
    g: &Tensor,
) -> Result<Option<Vec<Dispatch>>> {
    let Layer::Conv2d { padding, .. } = model.layers[ci] else {
        return Ok(None);
    };
    let (Some(arg), Some(wi)) = (&pool.argmax, store.specs.iter().position(|p| p.layer == ci))
    else {
        return Ok(None);
    };
    let s = conv_spec(
        ps.batch,
        &conv.input.shape,
        &ps.x_shape(),
        &store.specs[wi].shape,
        padding,
    );
    let Some(rows) = relu_pool_weight_rows(gpu, &s, ps) else {
        return Ok(None);
    };
    let part = zeros(gpu, "conv dweight partials", &[rows, s.part_row()])?;
    let Some(mut d) = conv2d_relu_pool_backward_weight_windowed(
        gpu,
        &s,
        ps,
        &conv.input,
        g,
        &pool.output,
        arg,
        &part,
    )?
    else {
        return Ok(None);
    };
    d.extend(sum_conv_partials(gpu, store, wi, &part)?);
    Ok(Some(d))
}

/// Sum the partial rows [rows, NW + CO] of a conv's dweight and dbias into the gradients
/// of parameters `wi` (weight) and `wi + 1` (bias).
fn sum_conv_partials(
    gpu: &Gpu,
    store: &ParamStore,
    wi: usize,
    part: &Tensor,
) -> Result<[Dispatch; 2]> {
    let dims = (part.shape[0], part.shape[1], 1);
    let n_w = store.specs[wi].numel();
    Ok([
        sum_outer_inner_range(gpu, part, dims, 0, &store.grad(wi))?,
        sum_outer_inner_range(gpu, part, dims, n_w, &store.grad(wi + 1))?,
    ])
}

fn split_activation(
    gpu: &Gpu,
    d: &mut Vec<Dispatch>,
    act: Option<Act>,
    z: Tensor,
) -> Result<(Tensor, Option<Act>, Option<Tensor>)> {
    match act {
        Some(Act::Sigmoid) => {
            let y = zeros(gpu, "sigmoid out", &z.shape)?;
            d.push(activation_forward(gpu, Act::Sigmoid, &z, &y)?);
            Ok((y, Some(Act::Sigmoid), None))
        }
        other => Ok((z, other, None)),
    }
}

fn conv_spec(
    batch: usize,
    input: &[usize],
    _output: &[usize],
    weight: &[usize],
    padding: Padding,
) -> Conv2dSpec {
    Conv2dSpec {
        batch,
        c_in: input[1],
        h: input[2],
        w: input[3],
        c_out: weight[0],
        kh: weight[2],
        kw: weight[3],
        padding,
        stride: 1,
    }
}

fn pool_spec(batch: usize, input: &[usize], pool: usize, stride: usize) -> PoolSpec {
    PoolSpec {
        batch,
        channels: input[1],
        h: input[2],
        w: input[3],
        pool,
        stride,
    }
}
