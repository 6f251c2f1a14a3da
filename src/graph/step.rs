//! One compiled step for one batch size: gather -> forward -> loss -> metrics and, when
//! training, backward -> optimizer, as a static list of dispatches over planned buffers.
//!
//! B = batch. Images are batch-major NCHW (`[B, C, H, W]`).

use std::collections::HashMap;

use super::fuse::{fuse, FuseOptions};
use super::ir::*;
use super::{autodiff, lower, plan, tune};
use crate::gpu::Gpu;
use crate::kernels::gather::{gather_batch, gather_rows_f32};
use crate::kernels::loss::Loss;
use crate::kernels::optim::{optimizer_dispatches, Optimizer};
use crate::kernels::random::{augment_images, text_windows, Augment, RandomSpec, TextWindows};
use crate::kernels::reduce::{accumulate_metrics, Accuracy};
use crate::kernels::Dispatch;
use crate::model::Activation;
use crate::nn::Model;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The key of the augmentation stream (dropout streams are keyed by small salts, text
/// windows by their own key); the executor rewrites its counter every step.
pub const AUGMENT_STREAM: u64 = 0xA067_0000_0000_0001;

/// Where a plan's batches come from: a GPU-resident dataset and an index order into it.
pub enum BatchSource<'a> {
    /// u8 images packed four per word and their u8 class labels (see gather.wgsl), for
    /// classification (softmax or sigmoid outputs). With `augment`, training batches are
    /// shifted and flipped right after the gather (random.wgsl's augment_images, stream
    /// [`AUGMENT_STREAM`], a fresh counter each step); evaluation batches never are.
    Images {
        pixels: &'a Tensor,
        labels: &'a Tensor,
        order: &'a Tensor,
        augment: Augment,
    },
    /// f32 feature rows `[N, D]` and f32 target rows `[N, T]`, for regression (linear outputs,
    /// mean squared error).
    Rows {
        features: &'a Tensor,
        targets: &'a Tensor,
        order: &'a Tensor,
    },
    /// u32 token ids, for language models: each step draws B windows of T + 1 tokens from
    /// tokens`[offset .. offset + len]` on the GPU (random.wgsl's text_windows, stream `seed`).
    Text {
        tokens: &'a Tensor,
        offset: usize,
        len: usize,
        seed: u64,
    },
}

/// The compiled step. `dispatches[0]` is the gather; in training the last is the optimizer
/// update (after the gradient-norm passes when clipping).
pub struct Plan {
    pub batch: usize,
    pub dispatches: Vec<Dispatch>,
    pub train: bool,
    /// Outputs of the forward pass, readable after a step (evaluate, predict).
    pub prob: Tensor,
    /// Class labels `[B]` (all zero for an f32 row dataset, which has targets instead).
    pub label: Tensor,
    /// Regression targets `[B, T]` (f32 row datasets only).
    pub target: Option<Tensor>,
    pub loss: Tensor,
    /// Bytes of the transient values: as planned, and with a buffer each.
    pub activation_bytes: (u64, u64),
    /// Dispatches drawing random numbers (dropout masks, augmentation), whose counter the
    /// executor rewrites before each step.
    pub random: Vec<usize>,
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

/// The loss an output activation implies.
pub fn loss_of(output: Activation) -> Loss {
    match output {
        Activation::Softmax => Loss::SoftmaxCrossEntropy,
        Activation::Sigmoid => Loss::SigmoidBinaryCrossEntropy,
        _ => Loss::MeanSquaredError,
    }
}

/// The step's graph: forward, loss and (training) gradients, with the ids the step needs.
struct StepGraph {
    g: Graph,
    x: Id,
    target: Id,
    loss: Id,
    prob: Id,
    /// (parameter index, gradient) of each trainable parameter.
    grads: Vec<(usize, Id)>,
}

fn step_graph(model: &dyn Model, batch: usize, regression: bool, train: bool) -> Result<StepGraph> {
    let mut g = Graph::new();
    g.training = train;
    let x = crate::nn::model_input(&mut g, model, batch);
    let z = model.forward(&mut g, x)?; // [B, classes], or [B * T, V] for a language model
    let (rows, classes) = (g.shape(z)[0], g.shape(z).get(1).copied().unwrap_or(0));
    let target = match regression {
        true => g.input("target", &[rows, classes], DType::F32),
        false => g.input("label", &[rows], DType::U32),
    };
    let loss = g.loss(model.loss(), z, target)?; // [rows]
    let prob = g.aux(loss, 0); // [B, classes]
    g.mark_output(loss);
    g.mark_output(prob);
    let mut grads = Vec::new();
    if train {
        let root = g.mean(loss, &[0])?; // scalar
        let params: Vec<Id> = g
            .ids()
            .filter(|&i| matches!(g.node(i).op, Op::Param(p) if g.params[p].trainable))
            .collect();
        let dparams = autodiff::grad(&mut g, root, &params)?;
        let dparams = separate_grads(&mut g, &dparams)?;
        for (&p, &gr) in params.iter().zip(&dparams) {
            g.mark_output(gr);
            if let Op::Param(i) = g.node(p).op {
                grads.push((i, gr));
            }
        }
    }
    Ok(StepGraph {
        g,
        x,
        target,
        loss,
        prob,
        grads,
    })
}

/// Each parameter's gradient must be a value of its own, written into the gradient
/// buffer: a gradient that is a leaf gets a copy, and so does every parameter of a
/// gradient shared by several (two biases added to one value), so that no dispatch reads
/// one region of the gradient buffer while writing another (WebGPU forbids binding a
/// buffer read-only and read-write at once).
fn separate_grads(g: &mut Graph, grads: &[Id]) -> Result<Vec<Id>> {
    let roots: Vec<(Id, usize)> = grads.iter().map(|&gr| g.storage_of(gr)).collect();
    let mut out = Vec::new();
    for (&gr, root) in grads.iter().zip(&roots) {
        let unused = matches!(g.node(gr).op, Op::Const(0.0)); // its gradient stays zero
        let shared = roots.iter().filter(|r| *r == root).count() > 1;
        let own = !g.node(root.0).op.is_leaf() && !shared;
        out.push(match unused || own {
            true => gr,
            false => g.push(Op::Copy, vec![gr], g.shape(gr).to_vec(), DType::F32),
        });
    }
    Ok(out)
}

/// Compile `model` for batches of `batch` from `source`. With `optimizer`, the plan trains
/// (backward and update); without, it only evaluates. `metrics` receives loss sums and
/// correct counts.
pub fn build_plan(
    gpu: &Gpu,
    model: &dyn Model,
    store: &ParamStore,
    batch: usize,
    source: &BatchSource<'_>,
    optimizer: Option<&Optimizer>,
    metrics: &Tensor,
) -> Result<Plan> {
    let regression = check_source(model, source)?;
    let mut sg = step_graph(model, batch, regression, optimizer.is_some())?;
    fuse(&mut sg.g, FuseOptions::for_gpu(gpu));
    tune::choose_layouts(gpu, &mut sg.g)?;
    let (g, map) = sg.g.toposort();
    let at = |id: Id| {
        map[id.index()].ok_or_else(|| Error::shape("build_plan", "a step value was pruned"))
    };
    let (x, target, loss, prob) = (at(sg.x)?, at(sg.target)?, at(sg.loss)?, at(sg.prob)?);
    // Parameters and their gradients live in the flat store buffers.
    let mut external = HashMap::new();
    for id in g.ids() {
        if let Op::Param(i) = g.node(id).op {
            external.insert((id, 0), store.param(i));
        }
    }
    for &(i, gr) in &sg.grads {
        if let Some(gr) = map[gr.index()] {
            if !matches!(g.node(gr).op, Op::Const(_)) {
                let (s, k) = g.storage_of(gr);
                external.insert((s, k), store.grad(i).view(0, &[store.specs[i].numel()]));
            }
        }
    }
    let mem = plan::plan(
        &g,
        &|id, k| external.contains_key(&(id, k)),
        plan::reuse_from_env(),
    );
    let ts = lower::allocate(gpu, &g, &mem, &external)?;
    let choices = tune::choose_kernels(gpu, &g)?;
    let (xt, tt) = (ts.get(&g, x)?, ts.get(&g, target)?);
    let mut d = gather_augmented(gpu, model, source, optimizer.is_some(), &xt, &tt)?;
    d.extend(lower::lower(gpu, &g, &ts, &choices)?);
    let (loss_t, prob_t) = (ts.get(&g, loss)?, ts.get(&g, prob)?);
    let label = if regression {
        Tensor::zeros(gpu, "label", &[batch])?
    } else {
        tt.clone()
    };
    let accuracy = if regression {
        Accuracy::None
    } else {
        Accuracy::Classification
    };
    d.extend(accumulate_metrics(
        gpu, &loss_t, &prob_t, &label, accuracy, metrics,
    )?);
    if let Some(opt) = optimizer {
        d.extend(optimizer_dispatches(
            gpu,
            opt,
            &store.trainable(&store.grads),
            &store.trainable(&store.params),
            &store.trainable(&store.m),
            &store.trainable(&store.v),
        )?);
    }
    log::debug!("step graph (batch {batch}):\n{}", g.dump());
    let random = (0..d.len())
        .filter(|&i| matches!(d[i].name, "dropout_mask" | "augment_images"))
        .collect();
    Ok(Plan {
        batch,
        dispatches: d,
        train: optimizer.is_some(),
        prob: prob_t,
        label,
        target: regression.then_some(tt),
        loss: loss_t,
        activation_bytes: (mem.planned_bytes(), mem.naive_bytes),
        random,
    })
}

/// Whether the source holds regression rows (else labelled images or text), checked
/// against the model's loss and input.
fn check_source(model: &dyn Model, source: &BatchSource<'_>) -> Result<bool> {
    let text = matches!(source, BatchSource::Text { .. });
    if text != model.context().is_some() {
        return Err(Error::usage(
            "model",
            match text {
                true => {
                    "a text source feeds language models (token inputs); this model takes images"
                }
                false => "a language model reads text; add it with Trainer::add_text",
            },
        ));
    }
    match (source, model.loss()) {
        (BatchSource::Text { .. }, _) => Ok(false),
        (BatchSource::Images { .. }, Loss::MeanSquaredError) => Err(Error::usage(
            "model",
            "a linear output (mean squared error) needs f32 regression targets, which image datasets do not have; add the data with Trainer::add_dataset_f32, or end with softmax (or sigmoid on 1 unit)",
        )),
        (BatchSource::Rows { .. }, Loss::MeanSquaredError) => Ok(true),
        (BatchSource::Rows { .. }, _) => Err(Error::usage(
            "model",
            "an f32 row dataset holds regression targets, which need a linear output (mean squared error); add classification data with Trainer::add_dataset (u8 labels)",
        )),
        (BatchSource::Images { .. }, _) => Ok(false),
    }
}

/// The gather, and for augmented training batches the augmentation after it: the gather
/// then fills a batch of its own, which augment_images moves into x.
fn gather_augmented(
    gpu: &Gpu,
    model: &dyn Model,
    source: &BatchSource<'_>,
    train: bool,
    x: &Tensor,
    t: &Tensor,
) -> Result<Vec<Dispatch>> {
    let aug = match source {
        BatchSource::Images { augment, .. } if train && !augment.is_off() => *augment,
        _ => return Ok(vec![gather(gpu, source, x, t)?]),
    };
    let raw = Tensor::zeros(gpu, "gathered batch", &x.shape)?; // [B, C, H, W]
    let spec = RandomSpec {
        seed: AUGMENT_STREAM,
        counter: 0,
    };
    Ok(vec![
        gather(gpu, source, &raw, t)?,
        augment_images(gpu, &spec, &aug, model.input(), &raw, x)?,
    ])
}

/// The gather dispatch: the batch's samples into x `[B, C*H*W]` and the labels or targets.
fn gather(gpu: &Gpu, source: &BatchSource<'_>, x: &Tensor, t: &Tensor) -> Result<Dispatch> {
    let rows = x.view(0, &[x.shape[0], x.numel() / x.shape[0].max(1)]);
    match *source {
        BatchSource::Images {
            pixels,
            labels,
            order,
            ..
        } => gather_batch(gpu, pixels, labels, order, 0, &rows, t),
        BatchSource::Rows {
            features,
            targets,
            order,
        } => gather_rows_f32(gpu, features, targets, order, 0, &rows, t),
        BatchSource::Text {
            tokens,
            offset,
            len,
            seed,
        } => {
            let w = TextWindows {
                offset,
                len,
                batch: x.shape[0],
                seq_len: x.shape[1],
            };
            text_windows(gpu, &RandomSpec { seed, counter: 0 }, &w, tokens, x, t)
        }
    }
}
