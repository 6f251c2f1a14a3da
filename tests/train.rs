//! Whole training steps through `Trainer`: one step of the seed CNN and the MLP against a
//! CPU reference composed from the kernels' f64 references, learning on an MNIST subset, no
//! host readbacks inside steps, seeded determinism, and odd batch sizes.

mod common;

use common::mnist;

use common::assert_close;
use shadergrad::executor::Trainer;
use shadergrad::fit::{epoch_order, split_sources, train_epoch, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::activation::{activation_backward_ref, Activation as Act};
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::f64s;
use shadergrad::kernels::gather::gather_batch_ref;
use shadergrad::kernels::loss::{loss_backward_ref, loss_forward_ref, Loss};
use shadergrad::kernels::matmul::{matmul_ref, MatmulSpec};
use shadergrad::kernels::optim::{optimizer_step_ref, Optimizer};
use shadergrad::kernels::pool::*;
use shadergrad::kernels::reduce::sum_outer_inner_ref;
use shadergrad::model::{Activation, Layer, Sequential};

const LR: f32 = 1e-3;
const PIXELS: usize = 28 * 28;

/// A trainer (Adam, lr 1e-3) holding the first `n` MNIST training images; returns it and
/// the dataset id.
fn trainer(gpu: &Gpu, model: Sequential, seed: u64, n: usize) -> (Trainer<'_>, usize) {
    let train = &mnist().train;
    let mut t = Trainer::new(gpu, model, Optimizer::adam(LR), seed).unwrap();
    let ds = t
        .add_dataset(&train.images[..n * PIXELS], &train.labels[..n])
        .unwrap();
    (t, ds)
}

/// The parameters' bit patterns, for exact comparison.
fn bits(params: &[Vec<f32>]) -> Vec<u32> {
    params.iter().flatten().map(|v| v.to_bits()).collect()
}

// ---------------------------------------------------------------- CPU reference step

/// What the reference forward keeps of a layer for the backward.
struct Saved {
    /// Per-sample input shape.
    in_shape: Vec<usize>,
    input: Vec<f64>,
    output: Vec<f64>,
    /// ReLU applied after the affine part (the last layer's softmax is fused into the loss).
    relu: bool,
    argmax: Vec<u32>,
}

/// One training step in f64: per-sample loss, probabilities, gradients, updated parameters.
type RefStep = (Vec<f64>, Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>);

/// The kernels' specs for a layer whose per-sample input shape is `in_shape` [C, H, W].
fn conv_spec(batch: usize, in_shape: &[usize], weight: &[usize], padding: Padding) -> Conv2dSpec {
    let (c_out, kh, kw) = (weight[0], weight[2], weight[3]);
    let (c_in, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        padding,
        stride: 1,
    }
}

fn pool_spec(batch: usize, in_shape: &[usize], pool: usize, stride: usize) -> PoolSpec {
    let (channels, h, w) = (in_shape[0], in_shape[1], in_shape[2]);
    PoolSpec {
        batch,
        channels,
        h,
        w,
        pool,
        stride,
    }
}

/// Forward, softmax cross-entropy (mean over the batch), backward and Adam update 1 of
/// `model` from parameters `p0` on the gathered batch `x` [B, P], `label` [B], composed
/// only from the kernels' CPU references.
fn reference_step(model: &Sequential, p0: &[Vec<f32>], x: Vec<f64>, label: &[u32]) -> RefStep {
    let batch = label.len();
    let specs = model.params().unwrap();
    let shapes = model.shapes().unwrap();
    let p: Vec<Vec<f64>> = p0.iter().map(|v| f64s(v)).collect();
    // Index of each layer's weight (its bias follows).
    let owner = |i: usize| specs.iter().position(|s| s.layer == i).unwrap();
    let last = model.layers.len() - 1;

    let mut saved = Vec::new();
    let mut cur = x;
    let mut shape = model.input.to_vec();
    for (i, layer) in model.layers.iter().enumerate() {
        let relu_if = |a: &Activation| *a == Activation::Relu && i != last;
        let (output, relu, argmax) = match layer {
            Layer::Conv2d {
                padding,
                activation,
                ..
            } => {
                let (wi, relu) = (owner(i), relu_if(activation));
                let s = conv_spec(batch, &shape, &specs[wi].shape, *padding);
                let y = conv2d_forward_ref(&s, &cur, &p[wi], Some(&p[wi + 1]), relu);
                (y, relu, vec![])
            }
            Layer::Dense { units, activation } => {
                let (wi, relu) = (owner(i), relu_if(activation));
                let n_in = shape.iter().product();
                let mut spec = MatmulSpec::new(batch, *units, n_in);
                (spec.transpose_b, spec.bias, spec.relu) = (true, true, relu);
                let y = matmul_ref(&spec, &cur, &p[wi], Some(&p[wi + 1]));
                (y, relu, vec![])
            }
            Layer::MaxPool2d { pool, stride } => {
                let s = pool_spec(batch, &shape, *pool, *stride);
                let (y, arg) = max_pool2d_forward_ref(&s, &cur);
                (y, false, arg)
            }
            Layer::Flatten => (cur.clone(), false, vec![]),
            other => panic!("the reference step does not model {}", other.kind()),
        };
        let input = std::mem::replace(&mut cur, output.clone());
        let in_shape = std::mem::replace(&mut shape, shapes[i].clone());
        saved.push(Saved {
            in_shape,
            input,
            output,
            relu,
            argmax,
        });
    }

    let (classes, sce) = (shape[0], Loss::SoftmaxCrossEntropy);
    let (prob, loss) = loss_forward_ref(sce, classes, &cur, label, &[]);
    let mut g = loss_backward_ref(sce, classes, &prob, label, &[]);
    let mut grads = vec![Vec::new(); specs.len()];
    for (i, layer) in model.layers.iter().enumerate().rev() {
        let sv = &saved[i];
        if sv.relu {
            g = activation_backward_ref(Act::Relu, &g, &sv.output);
        }
        g = match layer {
            Layer::Conv2d { padding, .. } => {
                let wi = owner(i);
                let s = conv_spec(batch, &sv.in_shape, &specs[wi].shape, *padding);
                grads[wi] = conv2d_backward_weight_ref(&s, &g, &sv.input);
                grads[wi + 1] = conv2d_backward_bias_ref(&s, &g);
                conv2d_backward_input_ref(&s, &g, &p[wi])
            }
            Layer::Dense { units, .. } => {
                let (wi, n_in) = (owner(i), sv.in_shape.iter().product());
                // dW [OUT, IN] = g^T x, db = column sums of g, dx [B, IN] = g W
                let mut dw = MatmulSpec::new(*units, n_in, batch);
                dw.transpose_a = true;
                grads[wi] = matmul_ref(&dw, &g, &sv.input, None);
                grads[wi + 1] = sum_outer_inner_ref(&g, (batch, *units, 1));
                matmul_ref(&MatmulSpec::new(batch, n_in, *units), &g, &p[wi], None)
            }
            Layer::MaxPool2d { pool, stride } => {
                let s = pool_spec(batch, &sv.in_shape, *pool, *stride);
                max_pool2d_backward_ref(&s, &g, &sv.argmax)
            }
            _ => g,
        };
    }

    let mut params = p;
    for (param, grad) in params.iter_mut().zip(&grads) {
        let (mut m, mut v) = (vec![0.0; grad.len()], vec![0.0; grad.len()]);
        optimizer_step_ref(&Optimizer::adam(LR), 1, grad, param, &mut m, &mut v);
    }
    (loss, prob, grads, params)
}

/// Compare parameters after Adam's first step. At t = 1 (m = (1 - beta1) g, v = (1 - beta2) g²
/// and bias correction) the update is lr * g / (|g| + eps / sqrt(1 - beta2)), eps / sqrt(1 -
/// beta2) ~ 3.2e-6: about lr * sign(g), not shrinking with |g|. So where |g| is tiny (< 1e-6)
/// a rounding-level difference in g (f32 on the GPU, f64 here) can flip the update's sign,
/// a difference of up to 2 lr: there only the bound |update| <= lr of Adam's first step is
/// checked. Everywhere else the parameter must match to 1e-5, a hundredth of lr.
fn assert_adam_step(what: &str, before: &[f32], after: &[f32], want: &[f64], grad: &[f64]) {
    let lr = LR as f64;
    let tiny = |i: &usize| grad[*i].abs() < 1e-6;
    let (relaxed, strict): (Vec<usize>, Vec<usize>) = (0..grad.len()).partition(tiny);
    let got: Vec<f32> = strict.iter().map(|&i| after[i]).collect();
    let expected: Vec<f64> = strict.iter().map(|&i| want[i]).collect();
    assert_close(&format!("{what} (|g| >= 1e-6)"), &got, &expected, 0.0, 1e-5);
    for i in relaxed {
        let moved = (after[i] as f64 - before[i] as f64).abs();
        let g = grad[i];
        assert!(moved <= lr * 1.001, "{what}[{i}]: g {g}, moved {moved}");
    }
}

/// One Adam step of `model` on 5 real MNIST images against [`reference_step`].
fn check_one_step(gpu: &Gpu, name: &str, model: Sequential) {
    let (mut t, ds) = trainer(gpu, model.clone(), 11, mnist().train.n);
    // The batch is order[2..7]: samples from the start, the end and the middle of the set.
    let order = [0, 1, 59_999, 12_345, 7, 42, 30_000];
    let (start, batch) = (2, 5);
    let src = t.add_source(ds, &order).unwrap();
    let before = t.read_params().unwrap();
    t.step(src, start, batch, true).unwrap();
    assert_eq!(t.steps, 1);

    let after = t.read_params().unwrap();
    let grads = t.store.read(gpu, &t.store.grads).unwrap();
    let plan = t.outputs(src, batch, true).unwrap();
    let loss = plan.loss.to_f32(gpu).unwrap();
    let prob = plan.prob.to_f32(gpu).unwrap();
    let gathered = plan.label.to_u32(gpu).unwrap();
    let train = &mnist().train;
    let picked = &order[start..start + batch];
    let (x, label) = gather_batch_ref(&train.images, &train.labels, PIXELS, picked);
    let (ref_loss, ref_prob, ref_grads, ref_params) = reference_step(&model, &before, x, &label);

    assert_eq!(gathered, label, "{name} gathered labels");
    assert_close(&format!("{name} loss"), &loss, &ref_loss, 1e-4, 1e-6);
    assert_close(&format!("{name} prob"), &prob, &ref_prob, 1e-4, 1e-6);
    for (k, spec) in t.store.specs.iter().enumerate() {
        let (what, want) = (format!("{name} {}", spec.name), &ref_grads[k]);
        assert!(want.iter().any(|&g| g != 0.0), "{what}: zero gradient");
        // Observed errors on lavapipe are below 1e-7 absolute.
        assert_close(&format!("{what} gradient"), &grads[k], want, 1e-3, 1e-6);
        assert_adam_step(&what, &before[k], &after[k], &ref_params[k], want);
    }
}

#[test]
fn one_step_matches_cpu_reference() {
    let Some(gpu) = common::gpu() else { return };
    for (name, model) in models() {
        check_one_step(gpu, name, model);
    }
}

// ---------------------------------------------------------------- training behaviour

#[test]
fn training_reduces_loss_on_a_subset() {
    let Some(gpu) = common::gpu() else { return };
    // 3,000 images: the first 2,000 train, the last 1,000 (never trained on) validate.
    let (n, split_at) = (3000, 1.0 / 3.0);
    let cfg = quiet(5, 32, split_at);
    let (mut t, ds) = trainer(gpu, Sequential::mnist_mlp(), 3, n);
    let split = split_sources(&mut t, ds, n, split_at).unwrap();
    let val = split.val.expect("a validation source");
    let n_val = t.source_len(val);
    assert!(n_val + split.n_train == n && (990..=1010).contains(&n_val));

    let initial = t.evaluate(val, cfg.batch_size).unwrap();
    assert_eq!(initial.count, n_val);
    // Glorot-initialised logits are small: near-uniform output, loss near ln 10 = 2.30.
    assert!((1.8..3.2).contains(&initial.loss), "{initial:?}");

    let logs: Vec<_> = (1..=cfg.epochs)
        .map(|e| train_epoch(&mut t, &split, &cfg, e, &|| false).unwrap())
        .collect();
    let steps_per_epoch = split.n_train.div_ceil(cfg.batch_size); // 63
    assert_eq!(t.steps as usize, cfg.epochs * steps_per_epoch);
    let (first, last) = (&logs[0].loss, &logs[cfg.epochs - 1]);
    let (val_loss, val_acc) = (last.val_loss.unwrap(), last.val_accuracy.unwrap());
    // Observed on lavapipe: initial 2.39, epoch 1 loss 1.07, epoch 5 loss 0.20,
    // val_loss 0.30, val_accuracy 0.91.
    assert!(last.loss < 0.5 * first, "loss {first} -> {last:?}");
    assert!(val_loss < 0.3 * initial.loss, "{initial:?} -> {last:?}");
    assert!(val_acc > 0.8, "chance is 0.1: {last:?}");
}

/// Fit settings without a progress bar.
fn quiet(epochs: usize, batch_size: usize, validation_split: f64) -> FitConfig {
    FitConfig {
        epochs,
        batch_size,
        validation_split,
        verbose: false,
        ..FitConfig::default()
    }
}

/// The models the tests train: the seed CNN and the MLP.
fn models() -> [(&'static str, Sequential); 2] {
    [
        ("cnn", Sequential::mnist_cnn()),
        ("mlp", Sequential::mnist_mlp()),
    ]
}

#[test]
fn training_step_reads_nothing_back() {
    let Some(_shared) = common::gpu() else { return };
    // The readback counter belongs to one Gpu, and the shared one is read concurrently by
    // the other tests of this binary: count on a device of this test's own.
    let own = Gpu::new().unwrap();
    let gpu = &own;
    let (mut t, ds) = trainer(gpu, Sequential::mnist_cnn(), 5, 32);
    let src = t.add_source(ds, &epoch_order(5, 1, 32)).unwrap();
    let before = gpu.readbacks();
    for s in 0..10 {
        t.step(src, (s % 4) * 8, 8, true).unwrap();
    }
    assert_eq!(gpu.readbacks(), before, "training steps read GPU data back");
    let m = t.read_metrics().unwrap();
    assert_eq!(gpu.readbacks(), before + 1, "read_metrics is one readback");
    assert_eq!(m.count, 80);
    assert!(m.loss.is_finite() && !m.non_finite, "{m:?}");
}

/// Parameters after three CNN training steps of 8 from initialisation seed `seed`.
fn params_after_steps(gpu: &Gpu, seed: u64) -> Vec<u32> {
    let (mut t, ds) = trainer(gpu, Sequential::mnist_cnn(), seed, 24);
    let src = t.add_source(ds, &epoch_order(9, 1, 24)).unwrap();
    for s in 0..3 {
        t.step(src, s * 8, 8, true).unwrap();
    }
    bits(&t.read_params().unwrap())
}

#[test]
fn same_seed_same_numbers() {
    let Some(gpu) = common::gpu() else { return };
    let a = params_after_steps(gpu, 21);
    let b = params_after_steps(gpu, 21);
    let c = params_after_steps(gpu, 22);
    let init = bits(&Sequential::mnist_cnn().init_params(21).unwrap());
    assert!(a != init, "training did not change the parameters");
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(differ == 0, "same seed: {differ} parameters differ");
    assert!(a != c, "different seeds gave identical parameters");
}

#[test]
fn partial_and_odd_batches() {
    let Some(gpu) = common::gpu() else { return };
    let n = 24; // 16 train and 8 validation samples: batch 7 leaves partial batches in both
    for ((name, model), batch) in models().iter().flat_map(|m| [(m, 1), (m, 7)]) {
        let what = format!("{name} batch {batch}");
        let cfg = quiet(1, batch, 0.3);
        let (mut t, ds) = trainer(gpu, model.clone(), 4, n);
        let split = split_sources(&mut t, ds, n, cfg.validation_split).unwrap();
        let (n_train, n_val) = (split.n_train, n - split.n_train);
        let partial = n_train % batch != 0 && n_val % batch != 0;
        assert!(batch == 1 || partial, "{what}: {n_train} + {n_val} samples");

        let log = train_epoch(&mut t, &split, &cfg, 1, &|| false).unwrap();
        assert_eq!(t.steps as usize, n_train.div_ceil(batch), "{what}: steps");
        // After the epoch the metrics hold the validation pass.
        let count = t.read_metrics().unwrap().count;
        assert_eq!(count, n_val, "{what}: validation count");
        let (vl, va) = (log.val_loss.unwrap(), log.val_accuracy.unwrap());
        for v in [log.loss, vl] {
            assert!(v.is_finite() && v > 0.0, "{what}: {log:?}");
        }
        for a in [log.accuracy, va] {
            assert!((0.0..=1.0).contains(&a), "{what}: {log:?}");
        }
        let params = t.read_params().unwrap();
        assert!(params.iter().flatten().all(|v| v.is_finite()), "{what}");
    }
}

/// A model with dropout between its dense layers (not expressible as a `Sequential`).
struct DropoutMlp;

impl shadergrad::nn::Model for DropoutMlp {
    fn input(&self) -> [usize; 3] {
        [1, 28, 28]
    }
    fn loss(&self) -> shadergrad::kernels::loss::Loss {
        shadergrad::kernels::loss::Loss::SoftmaxCrossEntropy
    }
    fn forward(
        &self,
        g: &mut shadergrad::graph::Graph,
        x: shadergrad::graph::Id,
    ) -> shadergrad::Result<shadergrad::graph::Id> {
        let h = g.flatten(x)?;
        let h = shadergrad::nn::Dense::new(g, "fc1", 784, 64, 0).forward(g, h)?;
        let h = g.relu(h)?;
        let h = g.dropout(h, 0.5)?;
        shadergrad::nn::Dense::new(g, "fc2", 64, 10, 1).forward(g, h)
    }
}

#[test]
fn dropout_runs_are_bit_identical_and_masks_change_each_step() {
    let Some(gpu) = common::gpu() else { return };
    let run = |seed: u64| {
        let m = mnist();
        let mut t = Trainer::new(gpu, DropoutMlp, Optimizer::adam(1e-3), seed).unwrap();
        let set = t
            .add_dataset(&m.train.images[..256 * 784], &m.train.labels[..256])
            .unwrap();
        let order: Vec<u32> = (0..256).collect();
        let src = t.add_source(set, &order).unwrap();
        let mut losses = Vec::new();
        for _ in 0..3 {
            t.reset_metrics();
            // The same batch each time: only the masks (and the parameters) change.
            t.step(src, 0, 128, true).unwrap();
            losses.push(t.read_metrics().unwrap().loss);
        }
        (bits(&t.read_params().unwrap()), losses)
    };
    let (a, la) = run(5);
    let (b, lb) = run(5);
    assert_eq!(a, b, "same seed, same bits");
    assert_eq!(la, lb);
    let (c, _) = run(6);
    assert_ne!(a, c, "another seed draws other masks");
    // Evaluation has no dropout: two evaluations of the same parameters agree exactly.
    let m = mnist();
    let mut t = Trainer::new(gpu, DropoutMlp, Optimizer::adam(1e-3), 5).unwrap();
    let set = t
        .add_dataset(&m.train.images[..256 * 784], &m.train.labels[..256])
        .unwrap();
    let order: Vec<u32> = (0..256).collect();
    let src = t.add_source(set, &order).unwrap();
    let e1 = t.evaluate(src, 128).unwrap();
    let e2 = t.evaluate(src, 128).unwrap();
    assert_eq!(e1.loss, e2.loss);
}
