//! Finite-difference gradient checks of every backward kernel. For a random upstream gradient
//! G the scalar is L(x) = sum(G ⊙ forward(x)) (for the losses, the batch-mean loss itself),
//! and each backward's gradient is compared with central differences of L:
//! on the CPU references in f64 for every input element (eps 1e-6), and on the GPU kernels
//! in f32 for a sample of elements (eps 1e-2), re-running the forward dispatch per step.
//! Adam, SGD and gather have no backward and are not checked here.

mod common;

use common::gpu;
use shadergrad::gpu::Gpu;
use shadergrad::kernels::activation::*;
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::loss::*;
use shadergrad::kernels::matmul::*;
use shadergrad::kernels::pool::*;
use shadergrad::kernels::reduce::*;
use shadergrad::kernels::{f64s, run, Dispatch};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;

/// (eps, rtol, atol) of one comparison: |fd - backward| <= atol + rtol * |fd|.
#[derive(Clone, Copy)]
struct Tol(f64, f64, f64);

const CPU: Tol = Tol(1e-6, 1e-6, 1e-6);
const GPU: Tol = Tol(1e-2, 2e-2, 2e-3);
/// Elements checked per GPU tensor.
const GPU_SAMPLES: usize = 24;

/// Compare each backward gradient `grads[j]` (named) of `inputs[j]` with central differences
/// of `loss`, on every element or, given `sample`, on GPU_SAMPLES random ones.
/// `loss(inputs, j)` sees one element of `inputs[j]` stepped; it returns None where the step
/// crosses a kink (a max-pool argmax flips, a ReLU mask changes): that element is skipped,
/// but at least half must be checked.
fn check_grads(
    what: &str,
    Tol(eps, rtol, atol): Tol,
    inputs: &mut [Vec<f64>],
    grads: &[(&str, Vec<f64>)],
    mut sample: Option<&mut Rng>,
    mut loss: impl FnMut(&[Vec<f64>], usize) -> Option<f64>,
) {
    for (j, (name, grad)) in grads.iter().enumerate() {
        assert_eq!(inputs[j].len(), grad.len(), "{what} {name}");
        let mut at: Vec<usize> = (0..grad.len()).collect();
        if let Some(rng) = &mut sample {
            rng.shuffle(&mut at);
            at.truncate(GPU_SAMPLES);
        }
        let (mut checked, mut bad) = (0, String::new());
        for &i in &at {
            let x = inputs[j][i];
            let [up, down] = [eps, -eps].map(|step| {
                inputs[j][i] = x + step;
                loss(inputs, j)
            });
            inputs[j][i] = x;
            let (Some(up), Some(down)) = (up, down) else {
                continue;
            };
            checked += 1;
            let fd = (up - down) / (2.0 * eps);
            let close = (fd - grad[i]).abs() <= atol + rtol * fd.abs(); // false for NaN
            if !close {
                bad += &format!("\n  [{i}] backward {} finite difference {fd}", grad[i]);
            }
        }
        loss(inputs, j); // puts a GPU copy of inputs[j] back as it was
        let n = at.len();
        assert!(
            2 * checked >= n,
            "{what} {name}: {checked} of {n} checkable"
        );
        assert!(
            bad.is_empty(),
            "{what} {name} (eps {eps} rtol {rtol} atol {atol}):{bad}"
        );
    }
}

/// [`check_grads`] in f64 on every element.
fn cpu_check(
    what: &str,
    mut inputs: Vec<Vec<f64>>,
    grads: &[(&str, Vec<f64>)],
    loss: impl Fn(&[Vec<f64>]) -> Option<f64>,
) {
    check_grads(what, CPU, &mut inputs, grads, None, |v, _| loss(v));
}

fn dot(g: &[f64], y: &[f64]) -> f64 {
    assert_eq!(g.len(), y.len());
    g.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// The shared GPU and the test's random numbers; None (skip) without an adapter.
struct Dev {
    gpu: &'static Gpu,
    rng: Rng,
}

fn dev(seed: u64) -> Option<Dev> {
    Some(Dev {
        gpu: gpu()?,
        rng: Rng::new(seed),
    })
}

impl Dev {
    fn upload(&self, shape: &[usize], data: &[f32]) -> Tensor {
        Tensor::from_f32(self.gpu, "gradcheck input", shape, data).unwrap()
    }

    fn zeros(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.gpu, "gradcheck output", shape).unwrap()
    }

    fn run(&self, dispatches: &[&Dispatch]) {
        run(self.gpu, dispatches).unwrap();
    }

    /// [`check_grads`] of GPU gradients on a sample of elements: `inputs` lists (name, input
    /// tensor, its gradient from the backward kernels); each step is uploaded into the input
    /// tensor, `forward` re-run, and `loss` gives L from its outputs (None to skip).
    fn check(
        &mut self,
        what: &str,
        inputs: &[(&str, &Tensor, &Tensor)],
        forward: &[&Dispatch],
        mut loss: impl FnMut() -> Option<f64>,
    ) {
        let gpu = self.gpu;
        let mut xs: Vec<_> = inputs.iter().map(|(_, x, _)| read(gpu, x)).collect();
        let grads: Vec<_> = inputs
            .iter()
            .map(|&(name, _, g)| (name, read(gpu, g)))
            .collect();
        check_grads(what, GPU, &mut xs, &grads, Some(&mut self.rng), |v, j| {
            let x32: Vec<f32> = v[j].iter().map(|&x| x as f32).collect();
            inputs[j].1.write_f32(gpu, &x32).unwrap();
            run(gpu, forward).unwrap();
            loss()
        });
    }
}

/// A GPU tensor's values.
fn read(gpu: &Gpu, t: &Tensor) -> Vec<f64> {
    f64s(&t.to_f32(gpu).unwrap())
}

fn positive(y: &[f64]) -> Vec<bool> {
    y.iter().map(|&v| v > 0.0).collect()
}

// ---- matmul and Dense --------------------------------------------------------------------

/// The matmuls giving the gradients of A and B, in their stored layouts, from dZ [M, N]
/// (dZ = G, or G through the ReLU): each is (spec, whether dZ is its first operand; the
/// other operand is B for dA and A for dB).
fn backward_specs(s: &MatmulSpec) -> [(MatmulSpec, bool); 2] {
    let mm = |m, n, k, transpose_a, transpose_b| MatmulSpec {
        transpose_a,
        transpose_b,
        ..MatmulSpec::new(m, n, k)
    };
    let da = match s.transpose_a {
        false => (mm(s.m, s.k, s.n, false, !s.transpose_b), true), // dZ · op(B)^T
        true => (mm(s.k, s.m, s.n, s.transpose_b, true), false),   // op(B) · dZ^T
    };
    let db = match s.transpose_b {
        false => (mm(s.k, s.n, s.m, !s.transpose_a, false), false), // op(A)^T · dZ
        true => (mm(s.n, s.k, s.m, true, s.transpose_a), true),     // dZ^T · op(A)
    };
    [da, db]
}

fn operands<T>(dz_first: bool, dz: T, other: T) -> (T, T) {
    if dz_first {
        (dz, other)
    } else {
        (other, dz)
    }
}

/// Every transpose combination on awkward shapes, without (matmul) or with the epilogue of
/// a Dense layer (bias, with ReLU on about half of them).
fn matmul_specs(dense: bool) -> Vec<MatmulSpec> {
    let mut specs = Vec::new();
    for (m, n, k) in [(1, 1, 1), (3, 7, 5), (13, 2, 17), (9, 11, 1)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut s = MatmulSpec::new(m, n, k);
            (s.transpose_a, s.transpose_b, s.bias) = (ta, tb, dense);
            s.relu = dense && (m + ta as usize) % 2 == 1;
            specs.push(s);
        }
    }
    specs
}

/// A, B, bias, G.
fn matmul_inputs(s: &MatmulSpec, rng: &mut Rng) -> [Vec<f32>; 4] {
    [s.m * s.k, s.k * s.n, s.n, s.m * s.n].map(|n| rng.uniform_vec(n, -1.0, 1.0))
}

fn matmul_cpu(s: &MatmulSpec, rng: &mut Rng) {
    let [a, b, bias, g] = matmul_inputs(s, rng).map(|v| f64s(&v));
    let fwd = |v: &[Vec<f64>]| matmul_ref(s, &v[0], &v[1], s.bias.then_some(&v[2][..]));
    let c = fwd(&[a.clone(), b.clone(), bias.clone()]);
    let dz = match s.relu {
        true => activation_backward_ref(Activation::Relu, &g, &c),
        false => g.clone(),
    };
    let grad = |(spec, dz_first): (MatmulSpec, bool), other: &[f64]| {
        let (p, q) = operands(dz_first, &dz[..], other);
        matmul_ref(&spec, p, q, None)
    };
    let [sa, sb] = backward_specs(s);
    let mut grads = vec![("dA", grad(sa, &b)), ("dB", grad(sb, &a))];
    if s.bias {
        grads.push(("dbias", sum_outer_inner_ref(&dz, (s.m, s.n, 1))));
    }
    cpu_check(&format!("{s:?}"), vec![a, b, bias], &grads, |v| {
        let y = fwd(v);
        (!s.relu || positive(&y) == positive(&c)).then(|| dot(&g, &y))
    });
}

fn matmul_gpu(d: &mut Dev, s: &MatmulSpec) {
    let [a, b, bias, g] = matmul_inputs(s, &mut d.rng);
    let (ta, tb) = (d.upload(&s.a_shape(), &a), d.upload(&s.b_shape(), &b));
    let (tbias, tg) = (d.upload(&[s.n], &bias), d.upload(&[s.m, s.n], &g));
    let (c, relu_dz) = (d.zeros(&[s.m, s.n]), d.zeros(&[s.m, s.n]));
    let (da, db, dbias) = (
        d.zeros(&s.a_shape()),
        d.zeros(&s.b_shape()),
        d.zeros(&[s.n]),
    );
    let (gpu, dz) = (d.gpu, if s.relu { &relu_dz } else { &tg });
    let grad = |(spec, dz_first): (MatmulSpec, bool), other: &Tensor, out: &Tensor| {
        let (p, q) = operands(dz_first, dz, other);
        matmul(gpu, &spec, p, q, None, out).unwrap()
    };
    let [sa, sb] = backward_specs(s);
    let fwd = matmul(gpu, s, &ta, &tb, s.bias.then_some(&tbias), &c).unwrap();
    let mut ds: Vec<Dispatch> = grad(sa, &tb, &da);
    ds.extend(grad(sb, &ta, &db));
    if s.relu {
        ds.insert(
            0,
            activation_backward(gpu, Activation::Relu, &tg, &c, &relu_dz).unwrap(),
        );
    }
    let mut inputs = vec![("dA", &ta, &da), ("dB", &tb, &db)];
    if s.bias {
        ds.push(sum_outer_inner(gpu, dz, (s.m, s.n, 1), &dbias).unwrap());
        inputs.push(("dbias", &tbias, &dbias));
    }
    d.run(&fwd.iter().chain(&ds).collect::<Vec<_>>());
    let (g, mask) = (f64s(&g), positive(&read(gpu, &c)));
    d.check(
        &format!("{s:?}"),
        &inputs,
        &fwd.iter().collect::<Vec<_>>(),
        || {
            let y = read(gpu, &c);
            (!s.relu || positive(&y) == mask).then(|| dot(&g, &y))
        },
    );
}

#[test]
fn matmul_gradients_cpu() {
    let mut rng = Rng::new(11);
    matmul_specs(false)
        .iter()
        .for_each(|s| matmul_cpu(s, &mut rng));
}

#[test]
fn matmul_gradients_gpu() {
    let Some(mut d) = dev(12) else { return };
    matmul_specs(false)
        .iter()
        .for_each(|s| matmul_gpu(&mut d, s));
}

/// y = relu?(x · W + b): dx, dW through the matmul backward, dbias = column sums of dZ.
#[test]
fn dense_gradients_cpu() {
    let mut rng = Rng::new(13);
    matmul_specs(true)
        .iter()
        .for_each(|s| matmul_cpu(s, &mut rng));
}

#[test]
fn dense_gradients_gpu() {
    let Some(mut d) = dev(14) else { return };
    matmul_specs(true)
        .iter()
        .for_each(|s| matmul_gpu(&mut d, s));
}

// ---- conv2d ------------------------------------------------------------------------------

/// Odd shapes, both paddings, even kernels (asymmetric same padding), a kernel as large as
/// the image or larger than it (same), and batch 17 (several dweight chunks).
fn conv_specs() -> Vec<Conv2dSpec> {
    let s = |[batch, c_in, h, w, c_out, kh, kw]: [usize; 7], padding| Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        padding,
        stride: 1,
    };
    vec![
        s([1, 1, 1, 1, 1, 1, 1], Padding::Valid),
        s([1, 1, 4, 3, 2, 4, 3], Padding::Valid),
        s([2, 3, 7, 5, 5, 3, 3], Padding::Same),
        s([3, 2, 5, 6, 2, 2, 3], Padding::Same),
        s([17, 2, 5, 4, 3, 3, 2], Padding::Valid),
        s([2, 1, 3, 5, 1, 5, 4], Padding::Same),
    ]
}

/// x, weight, bias, G.
fn conv_inputs(s: &Conv2dSpec, rng: &mut Rng) -> [Vec<f32>; 4] {
    let n = |shape: [usize; 4]| shape.iter().product::<usize>();
    let sizes = [n(s.x_shape()), n(s.w_shape()), s.c_out, n(s.y_shape())];
    sizes.map(|n| rng.uniform_vec(n, -1.0, 1.0))
}

#[test]
fn conv2d_gradients_cpu() {
    let mut rng = Rng::new(21);
    for s in conv_specs() {
        let [x, w, b, g] = conv_inputs(&s, &mut rng).map(|v| f64s(&v));
        let grads = [
            ("dx", conv2d_backward_input_ref(&s, &g, &w)),
            ("dw", conv2d_backward_weight_ref(&s, &g, &x)),
            ("db", conv2d_backward_bias_ref(&s, &g)),
        ];
        cpu_check(&format!("{s:?}"), vec![x, w, b], &grads, |v| {
            let y = conv2d_forward_ref(&s, &v[0], &v[1], Some(&v[2]), false);
            Some(dot(&g, &y))
        });
    }
}

#[test]
fn conv2d_gradients_gpu() {
    let Some(mut d) = dev(22) else { return };
    for s in conv_specs() {
        let [x, w, b, g] = conv_inputs(&s, &mut d.rng);
        let (tx, tw) = (d.upload(&s.x_shape(), &x), d.upload(&s.w_shape(), &w));
        let (tb, tg) = (d.upload(&[s.c_out], &b), d.upload(&s.y_shape(), &g));
        let (y, dx) = (d.zeros(&s.y_shape()), d.zeros(&s.x_shape()));
        let (dw, db) = (d.zeros(&s.w_shape()), d.zeros(&[s.c_out]));
        let part = d.zeros(&[s.weight_chunks(), s.part_row()]);
        let dims = (s.weight_chunks(), s.part_row(), 1);
        let gpu = d.gpu;
        let fwd = conv2d_forward(gpu, &s, &tx, &tw, Some(&tb), false, &y).unwrap();
        let ds = [
            fwd,
            conv2d_backward_input(gpu, &s, &tg, &tw, &dx).unwrap(),
            conv2d_backward_weight(gpu, &s, &tg, &tx, &part).unwrap(),
            sum_outer_inner_range(gpu, &part, dims, 0, &dw).unwrap(),
            sum_outer_inner_range(gpu, &part, dims, dw.numel(), &db).unwrap(),
        ];
        d.run(&ds.iter().collect::<Vec<_>>());
        let inputs = [("dx", &tx, &dx), ("dw", &tw, &dw), ("db", &tb, &db)];
        let g = f64s(&g);
        d.check(&format!("{s:?}"), &inputs, &[&ds[0]], || {
            Some(dot(&g, &read(gpu, &y)))
        });
    }
}

// ---- max_pool2d --------------------------------------------------------------------------

/// Odd sizes, windows that overlap (stride < pool), skip pixels (stride > pool) or cover the
/// whole image. Inputs are uniform random, hence distinct; steps that flip an argmax are
/// skipped.
fn pool_specs() -> Vec<PoolSpec> {
    let specs = [[1, 1, 1, 1, 1, 1], [2, 3, 7, 5, 2, 2], [3, 2, 9, 11, 3, 2]];
    let more = [[1, 2, 5, 5, 3, 1], [2, 1, 7, 8, 2, 3], [1, 1, 3, 3, 3, 1]];
    let spec = |[batch, channels, h, w, pool, stride]: [usize; 6]| PoolSpec {
        batch,
        channels,
        h,
        w,
        pool,
        stride,
    };
    specs.into_iter().chain(more).map(spec).collect()
}

/// x, G.
fn pool_inputs(s: &PoolSpec, rng: &mut Rng) -> [Vec<f32>; 2] {
    let sizes = [s.x_shape(), s.y_shape()].map(|shape| shape.iter().product());
    sizes.map(|n| rng.uniform_vec(n, -1.0, 1.0))
}

#[test]
fn max_pool2d_gradients_cpu() {
    let mut rng = Rng::new(31);
    for s in pool_specs() {
        let [x, g] = pool_inputs(&s, &mut rng).map(|v| f64s(&v));
        let (_, arg) = max_pool2d_forward_ref(&s, &x);
        let grads = [("dx", max_pool2d_backward_ref(&s, &g, &arg))];
        cpu_check(&format!("{s:?}"), vec![x], &grads, |v| {
            let (y, a) = max_pool2d_forward_ref(&s, &v[0]);
            (a == arg).then(|| dot(&g, &y))
        });
    }
}

#[test]
fn max_pool2d_gradients_gpu() {
    let Some(mut d) = dev(32) else { return };
    for s in pool_specs() {
        let [x, g] = pool_inputs(&s, &mut d.rng);
        let (tx, tg) = (d.upload(&s.x_shape(), &x), d.upload(&s.y_shape(), &g));
        let (y, arg, dx) = (
            d.zeros(&s.y_shape()),
            d.zeros(&s.y_shape()),
            d.zeros(&s.x_shape()),
        );
        let gpu = d.gpu;
        let fwd = max_pool2d_forward(gpu, &s, &tx, &arg, &y).unwrap();
        d.run(&[&fwd, &max_pool2d_backward(gpu, &s, &tg, &arg, &dx).unwrap()]);
        let (g, arg0) = (f64s(&g), arg.to_u32(gpu).unwrap());
        d.check(&format!("{s:?}"), &[("dx", &tx, &dx)], &[&fwd], || {
            (arg.to_u32(gpu).unwrap() == arg0).then(|| dot(&g, &read(gpu, &y)))
        });
    }
}

// ---- activations -------------------------------------------------------------------------

/// Each activation at a few sizes (1, small, past one 64-wide workgroup): x and G. ReLU
/// inputs keep |x| >= 0.1, clear of the kink for either step; sigmoid's span [-6, 6].
fn activation_cases(rng: &mut Rng) -> Vec<(Activation, Vec<f32>, Vec<f32>)> {
    let mut cases = Vec::new();
    for act in [Activation::Relu, Activation::Sigmoid] {
        for n in [1, 7, 131] {
            let lo = if act == Activation::Relu { 0.1 } else { 0.0 };
            let mut x = rng.uniform_vec(n, lo, 6.0);
            x.iter_mut().for_each(|v| *v *= [1.0, -1.0][rng.below(2)]);
            cases.push((act, x, rng.uniform_vec(n, -1.0, 1.0)));
        }
    }
    cases
}

#[test]
fn activation_gradients_cpu() {
    for (act, x, g) in activation_cases(&mut Rng::new(41)) {
        let (x, g) = (f64s(&x), f64s(&g));
        let dx = activation_backward_ref(act, &g, &activation_forward_ref(act, &x));
        let what = format!("{act:?} n={}", x.len());
        cpu_check(&what, vec![x], &[("dx", dx)], |v| {
            Some(dot(&g, &activation_forward_ref(act, &v[0])))
        });
    }
}

#[test]
fn activation_gradients_gpu() {
    let Some(mut d) = dev(42) else { return };
    for (act, x, g) in activation_cases(&mut d.rng) {
        let n = x.len();
        let (tx, tg) = (d.upload(&[n], &x), d.upload(&[n], &g));
        let (y, dx) = (d.zeros(&[n]), d.zeros(&[n]));
        let gpu = d.gpu;
        let fwd = activation_forward(gpu, act, &tx, &y).unwrap();
        d.run(&[&fwd, &activation_backward(gpu, act, &tg, &y, &dx).unwrap()]);
        let (g, what) = (f64s(&g), format!("{act:?} n={n}"));
        d.check(&what, &[("dx", &tx, &dx)], &[&fwd], || {
            Some(dot(&g, &read(gpu, &y)))
        });
    }
}

// ---- losses ------------------------------------------------------------------------------

/// (loss, [B, C], logits in [-5, 5], labels (0/1 for the binary loss), targets in [-1, 1]).
/// L is the batch-mean loss, i.e. G = 1/B on the per-sample loss.
type LossCase = (Loss, [usize; 2], Vec<f32>, Vec<u32>, Vec<f32>);

fn loss_cases(rng: &mut Rng) -> Vec<LossCase> {
    let mut cases = Vec::new();
    for (loss, shapes) in [
        (Loss::SoftmaxCrossEntropy, &[[1, 10], [7, 3], [5, 13]][..]),
        (Loss::SigmoidBinaryCrossEntropy, &[[1, 1], [13, 1]]),
        (Loss::MeanSquaredError, &[[1, 1], [7, 3], [4, 5]]),
    ] {
        for &[b, c] in shapes {
            let z = rng.uniform_vec(b * c, -5.0, 5.0);
            let labels = (0..b).map(|_| rng.below(c.max(2)) as u32).collect();
            cases.push((loss, [b, c], z, labels, rng.uniform_vec(b * c, -1.0, 1.0)));
        }
    }
    cases
}

#[test]
fn loss_gradients_cpu() {
    for (loss, [b, c], z, labels, target) in loss_cases(&mut Rng::new(51)) {
        let (z, target) = (f64s(&z), f64s(&target));
        let (prob, _) = loss_forward_ref(loss, c, &z, &labels, &target);
        let dz = loss_backward_ref(loss, c, &prob, &labels, &target);
        let what = format!("{loss:?} B={b} C={c}");
        cpu_check(&what, vec![z], &[("dz", dz)], |v| {
            let (_, per_sample) = loss_forward_ref(loss, c, &v[0], &labels, &target);
            Some(per_sample.iter().sum::<f64>() / b as f64)
        });
    }
}

#[test]
fn loss_gradients_gpu() {
    let Some(mut d) = dev(52) else { return };
    for (loss, [b, c], z, labels, target) in loss_cases(&mut d.rng) {
        let (tz, tt) = (d.upload(&[b, c], &z), d.upload(&[b, c], &target));
        let tl = Tensor::from_u32(d.gpu, "label", &[b], &labels).unwrap();
        let (prob, dz, per_sample) = (d.zeros(&[b, c]), d.zeros(&[b, c]), d.zeros(&[b]));
        let t = LossTensors {
            z: &tz,
            label: Some(&tl),
            target: Some(&tt),
            prob: &prob,
        };
        let gpu = d.gpu;
        let fwd = loss_forward(gpu, loss, &t, &per_sample).unwrap();
        d.run(&[&fwd, &loss_backward(gpu, loss, &t, &dz).unwrap()]);
        let what = format!("{loss:?} B={b} C={c}");
        d.check(&what, &[("dz", &tz, &dz)], &[&fwd], || {
            Some(read(gpu, &per_sample).iter().sum::<f64>() / b as f64)
        });
    }
}
