//! Every GPU kernel against its CPU reference (f64) on random inputs and awkward shapes:
//! 1, primes, sizes that are no multiple of any tile, batch 1 and 128.

mod common;

use common::{assert_close, gpu};
use shadergrad::kernels::activation::*;
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::gather::*;
use shadergrad::kernels::loss::*;
use shadergrad::kernels::matmul::*;
use shadergrad::kernels::optim::*;
use shadergrad::kernels::pool::*;
use shadergrad::kernels::reduce::*;
use shadergrad::kernels::{f64s, run, run_all, Family, WG_1D};
use shadergrad::rng::Rng;
use shadergrad::schedule::{Decay, Schedule};
use shadergrad::tensor::Tensor;

fn upload(gpu: &shadergrad::gpu::Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(gpu, "test input", shape, data).unwrap()
}

/// Whether `test` can also check the subgroup variants of its kernels; says so when not
/// (the OpenGL backend has no subgroups), so that a variant is never left out silently.
/// `cargo test -- --show-output` (as `.ci/run` runs the OpenGL pass) prints the line.
fn subgroup_variants(gpu: &shadergrad::gpu::Gpu, test: &str) -> bool {
    if !gpu.subgroups() {
        eprintln!(
            "{test}: NOT TESTED here: the subgroup kernel variants, because {} has no \
             subgroups of at least 8 lanes (or SHADERGRAD_NO_SUBGROUPS=1); the engine runs \
             only the portable kernels on it, and those are tested",
            gpu.describe()
        );
    }
    gpu.subgroups()
}

/// An m x n x k product in every operand layout, with and without its epilogues.
fn layouts(m: usize, n: usize, k: usize) -> [MatmulSpec; 4] {
    [
        (false, false, false, false),
        (false, true, true, true),
        (true, false, false, false),
        (true, true, true, false),
    ]
    .map(|(ta, tb, bias, relu)| MatmulSpec {
        transpose_a: ta,
        transpose_b: tb,
        bias,
        relu,
        ..MatmulSpec::new(m, n, k)
    })
}

#[test]
fn matmul_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let subgroups = subgroup_variants(gpu, "matmul_matches_reference");
    let mut rng = Rng::new(1);
    let shapes = [
        (1, 1, 1),
        (1, 7, 3),
        (13, 1, 5),
        (17, 31, 29),
        (64, 64, 64),
        (128, 10, 128),
        (37, 130, 263),
        (128, 129, 5),
        (3, 5, 30_011),
    ];
    for &(m, n, k) in &shapes {
        for spec in layouts(m, n, k) {
            let (n, bias) = (spec.n, spec.bias);
            let a = rng.uniform_vec(m * k, -1.0, 1.0);
            let b = rng.uniform_vec(k * n, -1.0, 1.0);
            let bv = rng.uniform_vec(n, -1.0, 1.0);
            let (ta_, tb_, tbias) = (
                upload(gpu, &spec.a_shape(), &a),
                upload(gpu, &spec.b_shape(), &b),
                upload(gpu, &[n], &bv),
            );
            let want = matmul_ref(&spec, &f64s(&a), &f64s(&b), bias.then_some(&f64s(&bv)[..]));
            let mut kernels = vec![MatmulKernel::RegisterTile(Tiles {
                wg: 64,
                tm: 4,
                tn: 4,
            })];
            if subgroups {
                kernels.push(MatmulKernel::Subgroup { wg: 64 });
                kernels.push(MatmulKernel::Window { wg: 64 });
            }
            for kernel in kernels {
                let c = Tensor::zeros(gpu, "c", &[m, n]).unwrap();
                let d = matmul_with(gpu, &spec, kernel, &ta_, &tb_, bias.then_some(&tbias), &c)
                    .unwrap();
                run_all(gpu, &d).unwrap();
                assert_close(
                    &format!("matmul {spec:?} {kernel:?}"),
                    &c.to_f32(gpu).unwrap(),
                    &want,
                    1e-4,
                    1e-5 * k as f64,
                );
            }
        }
    }
}

#[test]
fn matmul_every_tile_shape_agrees() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(2);
    let spec = MatmulSpec {
        transpose_b: true,
        ..MatmulSpec::new(23, 71, 19)
    };
    let a = rng.uniform_vec(23 * 19, -1.0, 1.0);
    let b = rng.uniform_vec(19 * 71, -1.0, 1.0);
    let want = matmul_ref(&spec, &f64s(&a), &f64s(&b), None);
    let (ta, tb) = (
        upload(gpu, &spec.a_shape(), &a),
        upload(gpu, &spec.b_shape(), &b),
    );
    let mut kernels = vec![];
    for tm in [1, 3, 4, 8] {
        for tn in [1, 2, 4] {
            for wg in [32, 64] {
                kernels.push(MatmulKernel::RegisterTile(Tiles { wg, tm, tn }));
            }
        }
    }
    if subgroup_variants(gpu, "matmul_every_tile_shape_agrees") {
        kernels.extend([
            MatmulKernel::Subgroup { wg: 8 },
            MatmulKernel::Subgroup { wg: 64 },
            MatmulKernel::Window { wg: 8 },
            MatmulKernel::Window { wg: 64 },
        ]);
    }
    for kernel in kernels {
        let c = Tensor::zeros(gpu, "c", &[23, 71]).unwrap();
        let d = matmul_with(gpu, &spec, kernel, &ta, &tb, None, &c).unwrap();
        run_all(gpu, &d).unwrap();
        assert_close(
            &format!("matmul {kernel:?}"),
            &c.to_f32(gpu).unwrap(),
            &want,
            1e-4,
            1e-4,
        );
    }
}

fn conv_specs() -> Vec<Conv2dSpec> {
    let s = |batch, c_in, h, w, c_out, kh, kw, padding| Conv2dSpec {
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
        s(1, 1, 1, 1, 1, 1, 1, Padding::Valid),
        s(1, 1, 5, 5, 1, 3, 3, Padding::Valid),
        s(2, 3, 7, 5, 5, 3, 3, Padding::Same),
        s(3, 2, 11, 13, 7, 5, 3, Padding::Same),
        s(5, 4, 9, 9, 3, 2, 2, Padding::Same),
        s(17, 1, 28, 28, 32, 3, 3, Padding::Valid),
        s(128, 1, 28, 28, 32, 3, 3, Padding::Valid),
        s(3, 5, 6, 7, 13, 3, 3, Padding::Valid),
        s(2, 2, 9, 8, 9, 4, 5, Padding::Same),
    ]
}

#[test]
fn conv2d_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let subgroups = subgroup_variants(gpu, "conv2d_matches_reference");
    let mut rng = Rng::new(3);
    for s in conv_specs() {
        let n = |shape: [usize; 4]| shape.iter().product::<usize>();
        let x = rng.uniform_vec(n(s.x_shape()), -1.0, 1.0);
        let w = rng.uniform_vec(n(s.w_shape()), -1.0, 1.0);
        let b = rng.uniform_vec(s.c_out, -1.0, 1.0);
        let dy = rng.uniform_vec(n(s.y_shape()), -1.0, 1.0);
        let (tx, tw, tb, tdy) = (
            upload(gpu, &s.x_shape(), &x),
            upload(gpu, &s.w_shape(), &w),
            upload(gpu, &[s.c_out], &b),
            upload(gpu, &s.y_shape(), &dy),
        );
        let y = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape()).unwrap();
        let n_w = n(s.w_shape());
        let part = Tensor::zeros(gpu, "part", &[s.weight_chunks(), s.part_row()]).unwrap();
        let dw = Tensor::zeros(gpu, "dw", &[n_w]).unwrap();
        let (oh, ow) = s.out_hw();
        let db = Tensor::zeros(gpu, "db", &[s.c_out]).unwrap();
        let dims = (s.weight_chunks(), s.part_row(), 1);
        if subgroups {
            // The portable kernel too, wherever the subgroup one is the default.
            let y1 = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
            let fwd = conv2d_forward_with(
                gpu,
                Conv2dKernel::Direct,
                &s,
                &tx,
                &tw,
                Some(&tb),
                false,
                &y1,
            );
            run_all(gpu, &fwd.unwrap()).unwrap();
            let want = conv2d_forward_ref(&s, &f64s(&x), &f64s(&w), Some(&f64s(&b)), false);
            assert_close(
                &format!("conv2d_forward portable {s:?}"),
                &y1.to_f32(gpu).unwrap(),
                &want,
                1e-4,
                1e-5 * (s.c_in * s.kh * s.kw) as f64,
            );
            let part = Tensor::zeros(gpu, "part", &[s.weight_chunks(), s.part_row()]).unwrap();
            let dweight =
                conv2d_backward_weight_with(gpu, Conv2dKernel::Direct, &s, &tdy, &tx, &part);
            run_all(gpu, &dweight.unwrap()).unwrap();
            let got = part.to_f32(gpu).unwrap();
            let (n_w, (oh, ow)) = (n(s.w_shape()), s.out_hw());
            let sum = |j: usize| {
                (0..s.weight_chunks())
                    .map(|c| got[c * s.part_row() + j] as f64)
                    .sum::<f64>() as f32
            };
            let per_w = 1e-5 * (s.batch * oh * ow) as f64;
            let dw: Vec<f32> = (0..n_w).map(sum).collect();
            assert_close(
                &format!("conv2d_backward_weight portable {s:?}"),
                &dw,
                &conv2d_backward_weight_ref(&s, &f64s(&dy), &f64s(&x)),
                1e-4,
                per_w,
            );
            let db: Vec<f32> = (n_w..s.part_row()).map(sum).collect();
            assert_close(
                &format!("conv2d dbias portable {s:?}"),
                &db,
                &conv2d_backward_bias_ref(&s, &f64s(&dy)),
                1e-4,
                per_w,
            );
        }
        let ds = [
            conv2d_forward(gpu, &s, &tx, &tw, Some(&tb), true, &y).unwrap(),
            conv2d_backward_input(gpu, &s, &tdy, &tw, &dx).unwrap(),
            conv2d_backward_weight(gpu, &s, &tdy, &tx, &part).unwrap(),
            sum_outer_inner_range(gpu, &part, dims, 0, &dw).unwrap(),
            sum_outer_inner_range(gpu, &part, dims, n_w, &db).unwrap(),
        ];
        run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
        let (x, w, b, dy) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
        let taps = (s.c_in * s.kh * s.kw) as f64;
        assert_close(
            &format!("conv2d_forward {s:?}"),
            &y.to_f32(gpu).unwrap(),
            &conv2d_forward_ref(&s, &x, &w, Some(&b), true),
            1e-4,
            1e-5 * taps,
        );
        assert_close(
            &format!("conv2d_backward_input {s:?}"),
            &dx.to_f32(gpu).unwrap(),
            &conv2d_backward_input_ref(&s, &dy, &w),
            1e-4,
            1e-5 * (s.c_out * s.kh * s.kw) as f64,
        );
        let per_w = (s.batch * oh * ow) as f64;
        assert_close(
            &format!("conv2d_backward_weight {s:?}"),
            &dw.to_f32(gpu).unwrap(),
            &conv2d_backward_weight_ref(&s, &dy, &x),
            1e-4,
            1e-5 * per_w,
        );
        assert_close(
            &format!("conv2d dbias {s:?}"),
            &db.to_f32(gpu).unwrap(),
            &conv2d_backward_bias_ref(&s, &dy),
            1e-4,
            1e-5 * per_w,
        );
        assert!(s.weight_chunk() * oh * (ow + 1) <= shadergrad::kernels::LOOP_BUDGET);
    }
}

#[test]
fn max_pool2d_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(4);
    let s = |batch, channels, h, w, pool, stride| PoolSpec {
        batch,
        channels,
        h,
        w,
        pool,
        stride,
    };
    for s in [
        s(1, 1, 1, 1, 1, 1),
        s(1, 1, 2, 2, 2, 2),
        s(2, 3, 7, 5, 2, 2),
        s(3, 2, 9, 11, 3, 2),
        s(2, 5, 13, 13, 3, 1),
        s(128, 32, 26, 26, 2, 2),
    ] {
        let x = rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0);
        let dy = rng.uniform_vec(s.y_shape().iter().product(), -1.0, 1.0);
        let (tx, tdy) = (
            upload(gpu, &s.x_shape(), &x),
            upload(gpu, &s.y_shape(), &dy),
        );
        let y = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
        let arg = Tensor::zeros(gpu, "argmax", &s.y_shape()).unwrap();
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape()).unwrap();
        let f = max_pool2d_forward(gpu, &s, &tx, &arg, &y).unwrap();
        let b = max_pool2d_backward(gpu, &s, &tdy, &arg, &dx).unwrap();
        run(gpu, &[&f, &b]).unwrap();
        let (want_y, want_arg) = max_pool2d_forward_ref(&s, &f64s(&x));
        assert_close(
            &format!("max_pool2d_forward {s:?}"),
            &y.to_f32(gpu).unwrap(),
            &want_y,
            0.0,
            0.0,
        );
        assert_eq!(arg.to_u32(gpu).unwrap(), want_arg, "argmax {s:?}");
        assert_close(
            &format!("max_pool2d_backward {s:?}"),
            &dx.to_f32(gpu).unwrap(),
            &max_pool2d_backward_ref(&s, &f64s(&dy), &want_arg),
            1e-6,
            1e-6,
        );
    }
}

/// A NaN in a window wins (torch.max_pool2d): y is the window's first NaN, argmax its
/// position, and the backward routes dy there. lavapipe folds `v != v` to false, so the
/// shader tests the bits; this pins that down against the reference.
#[test]
fn max_pool2d_nan_wins() {
    let Some(gpu) = gpu() else { return };
    const NAN: f32 = f32::NAN;
    let s = |h, w, pool, stride| PoolSpec {
        batch: 1,
        channels: 1,
        h,
        w,
        pool,
        stride,
    };
    let cases: [(PoolSpec, Vec<f32>); 5] = [
        // The case: max([1, NaN, 2, 0.5]) is NaN, not 2.
        (s(2, 2, 2, 2), vec![1.0, NAN, 2.0, 0.5]),
        // NaN first in the window, then larger values.
        (s(2, 2, 2, 2), vec![NAN, 3.0, 2.0, 5.0]),
        // Two NaNs: the first (row-major) one is the argmax.
        (s(2, 2, 2, 2), vec![-1.0, 4.0, NAN, NAN]),
        // Overlapping windows (stride 1): every window holding the NaN gives NaN, the others
        // their maximum; the backward sums dy of those windows into the NaN's position.
        (
            s(3, 5, 2, 1),
            vec![
                0.1, 0.2, 0.3, 0.4, 0.5, 0.6, NAN, 0.8, 0.9, 1.0, -1.0, -2.0, -3.0, -4.0, -5.0,
            ],
        ),
        // Infinities are values, not NaN: -inf loses, +inf wins over finite values.
        (
            s(3, 3, 3, 3),
            vec![
                f32::NEG_INFINITY,
                1.0,
                f32::INFINITY,
                2.0,
                3.0,
                4.0,
                5.0,
                6.0,
                7.0,
            ],
        ),
    ];
    // The reference follows the rule (so the comparisons below are not vacuous).
    let (y, arg) = max_pool2d_forward_ref(&cases[0].0, &f64s(&cases[0].1));
    assert!(y[0].is_nan() && arg[0] == 1, "reference: {y:?} {arg:?}");
    for (s, x) in cases {
        let dy: Vec<f32> = (0..s.y_shape().iter().product::<usize>())
            .map(|i| 1.0 + i as f32)
            .collect();
        let (tx, tdy) = (
            upload(gpu, &s.x_shape(), &x),
            upload(gpu, &s.y_shape(), &dy),
        );
        let y = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
        let arg = Tensor::zeros(gpu, "argmax", &s.y_shape()).unwrap();
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape()).unwrap();
        let f = max_pool2d_forward(gpu, &s, &tx, &arg, &y).unwrap();
        let b = max_pool2d_backward(gpu, &s, &tdy, &arg, &dx).unwrap();
        run(gpu, &[&f, &b]).unwrap();
        let (want_y, want_arg) = max_pool2d_forward_ref(&s, &f64s(&x));
        let got_y = y.to_f32(gpu).unwrap();
        // Exact, with NaN equal to NaN (assert_close counts NaN and inf as mismatches).
        let same = |g: &f32, w: &f64| (g.is_nan() && w.is_nan()) || *g as f64 == *w;
        assert!(
            got_y.len() == want_y.len() && got_y.iter().zip(&want_y).all(|(g, w)| same(g, w)),
            "max_pool2d_forward {s:?} {x:?}: gpu {got_y:?}, reference {want_y:?}"
        );
        assert_eq!(arg.to_u32(gpu).unwrap(), want_arg, "argmax {s:?} {x:?}");
        assert_close(
            &format!("max_pool2d_backward {s:?} {x:?}"),
            &dx.to_f32(gpu).unwrap(),
            &max_pool2d_backward_ref(&s, &f64s(&dy), &want_arg),
            0.0,
            0.0,
        );
    }
}

#[test]
fn activations_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(5);
    for n in [1, 7, 64, 1000, 65 * 64 + 3] {
        for act in [Activation::Relu, Activation::Sigmoid] {
            let mut x = rng.uniform_vec(n, -6.0, 6.0);
            x[0] = if n > 1 { 100.0 } else { -100.0 }; // saturation must not overflow
            let dy = rng.uniform_vec(n, -1.0, 1.0);
            let (tx, tdy) = (upload(gpu, &[n], &x), upload(gpu, &[n], &dy));
            let y = Tensor::zeros(gpu, "y", &[n]).unwrap();
            let dx = Tensor::zeros(gpu, "dx", &[n]).unwrap();
            let f = activation_forward(gpu, act, &tx, &y).unwrap();
            let b = activation_backward(gpu, act, &tdy, &y, &dx).unwrap();
            run(gpu, &[&f, &b]).unwrap();
            let want_y = activation_forward_ref(act, &f64s(&x));
            let got_y = y.to_f32(gpu).unwrap();
            assert_close(
                &format!("{act:?} forward n={n}"),
                &got_y,
                &want_y,
                1e-6,
                1e-7,
            );
            assert_close(
                &format!("{act:?} backward n={n}"),
                &dx.to_f32(gpu).unwrap(),
                &activation_backward_ref(act, &f64s(&dy), &f64s(&got_y)),
                1e-5,
                1e-7,
            );
        }
    }
}

#[test]
fn losses_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(6);
    // The last two pass the one-invocation metrics budget: chunked partial totals.
    for (batch, classes) in [
        (1, 1),
        (1, 10),
        (7, 3),
        (128, 10),
        (129, 1),
        (5, 13),
        (4099, 7),
        (2048, 65),
    ] {
        for loss in [
            Loss::SoftmaxCrossEntropy,
            Loss::SigmoidBinaryCrossEntropy,
            Loss::MeanSquaredError,
        ] {
            if (loss == Loss::SigmoidBinaryCrossEntropy) != (classes == 1) {
                continue;
            }
            let mut z = rng.uniform_vec(batch * classes, -5.0, 5.0);
            z[0] = 80.0; // large logits stay finite
            let labels: Vec<u32> = (0..batch)
                .map(|_| rng.below(classes.max(2)) as u32 % classes.max(2) as u32)
                .map(|l| if classes == 1 { l } else { l % classes as u32 })
                .collect();
            let target = rng.uniform_vec(batch * classes, -1.0, 1.0);
            let tz = upload(gpu, &[batch, classes], &z);
            let tl = Tensor::from_u32(gpu, "label", &[batch], &labels).unwrap();
            let tt = upload(gpu, &[batch, classes], &target);
            let prob = Tensor::zeros(gpu, "prob", &[batch, classes]).unwrap();
            let per = Tensor::zeros(gpu, "loss", &[batch]).unwrap();
            let dz = Tensor::zeros(gpu, "dz", &[batch, classes]).unwrap();
            let metrics = Tensor::zeros(gpu, "metrics", &[METRICS_LEN]).unwrap();
            let t = LossTensors {
                z: &tz,
                label: Some(&tl),
                target: Some(&tt),
                prob: &prob,
            };
            let acc = if loss == Loss::MeanSquaredError {
                Accuracy::None
            } else {
                Accuracy::Classification
            };
            let mut ds = vec![
                loss_forward(gpu, loss, &t, &per).unwrap(),
                loss_backward(gpu, loss, &t, &dz).unwrap(),
            ];
            ds.extend(accumulate_metrics(gpu, &per, &prob, &tl, acc, &metrics).unwrap());
            run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
            let (want_p, want_l) =
                loss_forward_ref(loss, classes, &f64s(&z), &labels, &f64s(&target));
            let what = format!("{loss:?} B={batch} C={classes}");
            assert_close(
                &format!("{what} prob"),
                &prob.to_f32(gpu).unwrap(),
                &want_p,
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{what} loss"),
                &per.to_f32(gpu).unwrap(),
                &want_l,
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} dz"),
                &dz.to_f32(gpu).unwrap(),
                &loss_backward_ref(loss, classes, &want_p, &labels, &f64s(&target)),
                1e-5,
                1e-7,
            );
            let m = metrics.to_f32(gpu).unwrap();
            let (sum, correct) = accumulate_metrics_ref(&want_l, &want_p, &labels, classes);
            assert_close(
                &format!("{what} metrics loss sum"),
                &m[..1],
                &[sum],
                1e-5,
                1e-4,
            );
            if acc == Accuracy::Classification {
                assert_eq!(m[1] as usize, correct, "{what} correct count");
            }
            assert_eq!((m[2], m[3]), (batch as f32, 0.0), "{what} count and flag");
        }
    }
}

#[test]
fn metrics_flag_non_finite_loss() {
    let Some(gpu) = gpu() else { return };
    let z = [f32::NAN, 1.0, 2.0, 0.5];
    let tz = upload(gpu, &[2, 2], &z);
    let tl = Tensor::from_u32(gpu, "label", &[2], &[0, 1]).unwrap();
    let prob = Tensor::zeros(gpu, "prob", &[2, 2]).unwrap();
    let per = Tensor::zeros(gpu, "loss", &[2]).unwrap();
    let metrics = Tensor::zeros(gpu, "metrics", &[METRICS_LEN]).unwrap();
    let t = LossTensors {
        z: &tz,
        label: Some(&tl),
        target: None,
        prob: &prob,
    };
    let f = loss_forward(gpu, Loss::SoftmaxCrossEntropy, &t, &per).unwrap();
    let m = accumulate_metrics(gpu, &per, &prob, &tl, Accuracy::Classification, &metrics).unwrap();
    run(gpu, &[&f, &m[0]]).unwrap();
    assert_eq!(metrics.to_f32(gpu).unwrap()[3], 1.0);
}

#[test]
fn sum_outer_inner_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(7);
    for dims in [
        (1, 1, 1),
        (128, 10, 1),
        (3, 7, 5),
        (17, 32, 676),
        (40, 32, 676),
        (1, 70001, 1),
        (16, 320, 1),
    ] {
        let x = rng.uniform_vec(dims.0 * dims.1 * dims.2, -1.0, 1.0);
        let tx = upload(gpu, &[x.len()], &x);
        let out = Tensor::zeros(gpu, "out", &[dims.1]).unwrap();
        run(gpu, &[&sum_outer_inner(gpu, &tx, dims, &out).unwrap()]).unwrap();
        assert_close(
            &format!("sum_outer_inner {dims:?}"),
            &out.to_f32(gpu).unwrap(),
            &sum_outer_inner_ref(&f64s(&x), dims),
            1e-5,
            1e-5 * (dims.0 * dims.2) as f64,
        );
    }
    // A column range, and the loop budget refusing what llvmpipe would silently cut short.
    let x = rng.uniform_vec(6 * 9, -1.0, 1.0);
    let tx = upload(gpu, &[54], &x);
    let out = Tensor::zeros(gpu, "out", &[4]).unwrap();
    run(
        gpu,
        &[&sum_outer_inner_range(gpu, &tx, (6, 9, 1), 5, &out).unwrap()],
    )
    .unwrap();
    assert_close(
        "sum_outer_inner_range",
        &out.to_f32(gpu).unwrap(),
        &sum_outer_inner_ref(&f64s(&x), (6, 9, 1))[5..],
        1e-5,
        1e-5,
    );
    let big = Tensor::zeros(gpu, "big", &[128 * 32 * 676]).unwrap();
    let err = sum_outer_inner(
        gpu,
        &big,
        (128, 32, 676),
        &Tensor::zeros(gpu, "o", &[32]).unwrap(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("loop iterations"), "{err}");
}

#[test]
fn optimizers_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(8);
    for n in [1, 63, 1000, 693_962] {
        let cosine = Schedule {
            decay: Decay::Cosine {
                horizon: 4,
                min_lr: 1e-4,
            },
            warmup: 1,
        };
        let step = Schedule {
            decay: Decay::Step {
                every: 2,
                gamma: 0.5,
            },
            warmup: 0,
        };
        for opt in [
            Optimizer::adam(1e-3),
            Optimizer::sgd(0.05, 0.9),
            Optimizer::sgd(0.1, 0.0),
            Optimizer::adamw(1e-2, 0.1).with_schedule(cosine),
            Optimizer::nesterov(0.05, 0.9).with_schedule(step),
            Optimizer {
                weight_decay: 0.05,
                ..Optimizer::sgd(0.05, 0.9)
            },
        ] {
            let mut p = f64s(&rng.uniform_vec(n, -1.0, 1.0));
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let tp = upload(gpu, &[n], &p.iter().map(|&x| x as f32).collect::<Vec<_>>());
            let (tm, tv, tg) = (
                Tensor::zeros(gpu, "m", &[n]).unwrap(),
                Tensor::zeros(gpu, "v", &[n]).unwrap(),
                Tensor::zeros(gpu, "g", &[n]).unwrap(),
            );
            let d = optimizer_step(gpu, &opt, &tg, &tp, &tm, &tv).unwrap();
            for t in 1..=3u64 {
                let g = rng.uniform_vec(n, -1.0, 1.0);
                tg.write_f32(gpu, &g).unwrap();
                gpu.queue
                    .write_buffer(&d.params, 0, bytemuck::bytes_of(&step_params(&opt, n, t)));
                run(gpu, &[&d]).unwrap();
                optimizer_step_ref(&opt, t, &f64s(&g), &mut p, &mut m, &mut v);
            }
            assert_close(
                &format!("{opt:?} n={n} param"),
                &tp.to_f32(gpu).unwrap(),
                &p,
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{opt:?} n={n} m"),
                &tm.to_f32(gpu).unwrap(),
                &m,
                1e-5,
                1e-6,
            );
        }
    }
}

/// Clipping by the global norm: the two norm passes against an f64 sum of squares (awkward
/// sizes: 1, a prime, a non-multiple of a block, the CNN's flat size), the clipped update
/// against the reference with the clip active (0.5) and idle (1e6), and the norm's bits
/// identical from run to run.
#[test]
fn clipped_optimizers_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(18);
    for n in [1, 257, 4099, 693_962] {
        for opt in [
            Optimizer::adamw(1e-3, 0.01).with_clip_norm(Some(0.5)),
            Optimizer::sgd(0.05, 0.9).with_clip_norm(Some(0.5)),
            Optimizer::adam(1e-3).with_clip_norm(Some(1e6)),
        ] {
            let mut p = f64s(&rng.uniform_vec(n, -1.0, 1.0));
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let tp = upload(gpu, &[n], &p.iter().map(|&x| x as f32).collect::<Vec<_>>());
            let (tm, tv, tg) = (
                Tensor::zeros(gpu, "m", &[n]).unwrap(),
                Tensor::zeros(gpu, "v", &[n]).unwrap(),
                Tensor::zeros(gpu, "g", &[n]).unwrap(),
            );
            let norm = norm_buffer(gpu, n).unwrap();
            let [d1, d2] = grad_sumsq(gpu, &tg, &tp, &tm, &tv, &norm).unwrap();
            let up = optimizer_update(gpu, &opt, &tg, &tp, &tm, &tv, &norm).unwrap();
            for t in 1..=3u64 {
                let g = rng.uniform_vec(n, -1.0, 1.0);
                tg.write_f32(gpu, &g).unwrap();
                gpu.queue
                    .write_buffer(&up.params, 0, bytemuck::bytes_of(&step_params(&opt, n, t)));
                run(gpu, &[&d1, &d2, &up]).unwrap();
                let sumsq = norm.to_f32(gpu).unwrap()[0];
                let want = grad_sumsq_ref(&f64s(&g));
                assert_close(&format!("sum g^2 n={n}"), &[sumsq], &[want], 1e-5, 1e-6);
                // Same gradients, same bits.
                run(gpu, &[&d1, &d2]).unwrap();
                assert_eq!(norm.to_f32(gpu).unwrap()[0].to_bits(), sumsq.to_bits());
                optimizer_step_ref(&opt, t, &f64s(&g), &mut p, &mut m, &mut v);
            }
            assert_close(
                &format!("{opt:?} n={n} param"),
                &tp.to_f32(gpu).unwrap(),
                &p,
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{opt:?} n={n} m"),
                &tm.to_f32(gpu).unwrap(),
                &m,
                1e-5,
                1e-6,
            );
        }
    }
}

#[test]
fn gather_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(9);
    for (n, p, batch, start) in [
        (1, 1, 1, 0),
        (10, 784, 3, 2),
        (37, 5, 7, 11),
        (300, 784, 128, 100),
    ] {
        let images: Vec<u8> = (0..n * p).map(|_| rng.below(256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
        let mut order: Vec<u32> = (0..n as u32).cycle().take(start + batch + 3).collect();
        rng.shuffle(&mut order);
        let packed: Vec<u32> = images
            .chunks(p)
            .flat_map(shadergrad::data::pack_u8_to_u32)
            .collect();
        let tpix = Tensor::from_u32(gpu, "pixels", &[packed.len()], &packed).unwrap();
        let plab = shadergrad::data::pack_u8_to_u32(&labels);
        let tlab = Tensor::from_u32(gpu, "labels", &[plab.len()], &plab).unwrap();
        let tord = Tensor::from_u32(gpu, "order", &[order.len()], &order).unwrap();
        let x = Tensor::zeros(gpu, "x", &[batch, p]).unwrap();
        let y = Tensor::zeros(gpu, "y", &[batch]).unwrap();
        run(
            gpu,
            &[&gather_batch(gpu, &tpix, &tlab, &tord, start, &x, &y).unwrap()],
        )
        .unwrap();
        let (want_x, want_y) = gather_batch_ref(&images, &labels, p, &order[start..start + batch]);
        assert_close(
            &format!("gather n={n} p={p}"),
            &x.to_f32(gpu).unwrap(),
            &want_x,
            1e-7,
            0.0,
        );
        assert_eq!(y.to_u32(gpu).unwrap(), want_y);
    }
}

#[test]
fn gather_rows_f32_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(10);
    // (rows, features D, targets T, batch, start): D = T = 1, D > T, D < T, MNIST-sized rows.
    for (n, d, t, batch, start) in [
        (1, 1, 1, 1, 0),
        (10, 3, 2, 4, 2),
        (37, 1, 5, 7, 11),
        (300, 784, 10, 128, 100),
    ] {
        let mut features = rng.uniform_vec(n * d, -1e3, 1e3);
        let targets = rng.uniform_vec(n * t, -1.0, 1.0);
        features[0] = -0.0;
        features[n * d - 1] = f32::MAX;
        let mut order: Vec<u32> = (0..n as u32).cycle().take(start + batch + 3).collect();
        rng.shuffle(&mut order);
        let tf = upload(gpu, &[n, d], &features);
        let tt = upload(gpu, &[n, t], &targets);
        let tord = Tensor::from_u32(gpu, "order", &[order.len()], &order).unwrap();
        let x = Tensor::zeros(gpu, "x", &[batch, d]).unwrap();
        let y = Tensor::zeros(gpu, "target", &[batch, t]).unwrap();
        run(
            gpu,
            &[&gather_rows_f32(gpu, &tf, &tt, &tord, start, &x, &y).unwrap()],
        )
        .unwrap();
        let (want_x, want_y) =
            gather_rows_f32_ref(&features, &targets, d, t, &order[start..start + batch]);
        // Rows are copied bit for bit.
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let want_bits = |v: &[f64]| v.iter().map(|&f| (f as f32).to_bits()).collect::<Vec<_>>();
        let what = format!("gather_rows_f32 n={n} d={d} t={t} batch={batch}");
        assert_eq!(
            bits(&x.to_f32(gpu).unwrap()),
            want_bits(&want_x),
            "{what}: x"
        );
        assert_eq!(
            bits(&y.to_f32(gpu).unwrap()),
            want_bits(&want_y),
            "{what}: target"
        );
    }
    // Mismatched shapes are refused before anything runs.
    let f = upload(gpu, &[4, 3], &[0.0; 12]);
    let t = upload(gpu, &[5, 1], &[0.0; 5]);
    let o = Tensor::from_u32(gpu, "order", &[4], &[0, 1, 2, 3]).unwrap();
    let (x, y) = (
        Tensor::zeros(gpu, "x", &[2, 3]).unwrap(),
        Tensor::zeros(gpu, "target", &[2, 1]).unwrap(),
    );
    let err = gather_rows_f32(gpu, &f, &t, &o, 0, &x, &y)
        .err()
        .expect("4 feature rows with 5 target rows")
        .to_string();
    assert!(err.contains("targets have shape"), "{err}");
}

#[test]
fn adapter_meets_the_kernels_needs() {
    let Some(gpu) = gpu() else { return };
    let l = &gpu.limits;
    // What the kernels use at most: the storage buffers of the widest shader file, 256
    // invocations per 1-D workgroup, tensor views at 256-byte offsets.
    let storage = shadergrad::kernels::Shader::ALL
        .iter()
        .map(|s| {
            let m = naga::front::wgsl::parse_str(s.source()).unwrap();
            m.global_variables
                .iter()
                .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
                .count() as u32
        })
        .max()
        .unwrap();
    eprintln!(
        "adapter {}: subgroups {}, {} storage buffers per stage, {} invocations per \
         workgroup, storage offset alignment {} B, max binding {} MiB",
        gpu.describe(),
        if gpu.subgroups() {
            "yes"
        } else {
            "NO (portable kernels only)"
        },
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_invocations_per_workgroup,
        l.min_storage_buffer_offset_alignment,
        l.max_storage_buffer_binding_size >> 20,
    );
    assert!(
        l.max_storage_buffers_per_shader_stage >= storage,
        "{storage} storage buffers"
    );
    assert!(l.max_compute_invocations_per_workgroup >= WG_1D as u32);
    assert!(l.max_compute_workgroup_size_x >= WG_1D as u32);
    assert!(l.min_storage_buffer_offset_alignment as u64 <= shadergrad::tensor::ALIGN_BYTES);
}

/// One matmul of `spec` with `kernel` on random data against [`matmul_ref`].
fn check_matmul(
    gpu: &shadergrad::gpu::Gpu,
    rng: &mut Rng,
    spec: &MatmulSpec,
    kernel: MatmulKernel,
) {
    let (bt, m, n, k) = (spec.batch, spec.m, spec.n, spec.k);
    let a = rng.uniform_vec(bt * m * k, -1.0, 1.0);
    let b = rng.uniform_vec(spec.b_len(), -1.0, 1.0);
    let bv = rng.uniform_vec(n, -1.0, 1.0);
    let [a0, a1] = spec.a_shape();
    let [b0, b1] = spec.b_shape();
    let ta = upload(gpu, &[bt, a0, a1], &a);
    let tb = upload(gpu, &[spec.b_len() / (b0 * b1), b0, b1], &b);
    let tbias = upload(gpu, &[n], &bv);
    let want = matmul_ref(
        spec,
        &f64s(&a),
        &f64s(&b),
        spec.bias.then_some(&f64s(&bv)[..]),
    );
    let c = Tensor::zeros(gpu, "c", &[bt, m, n]).unwrap();
    let d = matmul_with(gpu, spec, kernel, &ta, &tb, spec.bias.then_some(&tbias), &c).unwrap();
    run_all(gpu, &d).unwrap();
    assert_close(
        &format!("matmul {spec:?} {kernel:?}"),
        &c.to_f32(gpu).unwrap(),
        &want,
        1e-4,
        1e-5 * k as f64,
    );
}

/// Attention's layout of one head: operand [z = zo * h + zi, rows, cols] inside a buffer of
/// rows `3 * h * cols + 1` wide (q, k and v side by side, plus one column of slack), in
/// slot `slot` of three: a real two-level batch. Its view and the buffer's length.
fn head_view(bo: usize, h: usize, rows: usize, cols: usize, slot: usize) -> (Strided, usize) {
    let w = 3 * h * cols + 1;
    let v = Strided {
        offset: slot * h * cols,
        split: h,
        outer: rows * w,
        inner: cols,
        row: w,
        col: 1,
    };
    (v, bo * rows * w)
}

/// A product of `bo * h` heads reading A and B and writing C through two-level strided
/// views, run on each of `kernels` (and, with `offered`, every candidate of the adapter's
/// family, which must not be the window kernel) against the reference read through the same
/// views; C's other elements untouched. The window kernel refuses such a product.
fn check_viewed(
    gpu: &shadergrad::gpu::Gpu,
    rng: &mut Rng,
    (bo, h, m, n, k): (usize, usize, usize, usize, usize),
    (ta, tb): (bool, bool),
    kernels: &[MatmulKernel],
    offered: bool,
) {
    let base = MatmulSpec {
        batch: bo * h,
        transpose_a: ta,
        transpose_b: tb,
        bias: tb,
        relu: ta && !tb,
        ..MatmulSpec::new(m, n, k)
    };
    let [a0, a1] = base.a_shape();
    let [b0, b1] = base.b_shape();
    let (av, a_len) = head_view(bo, h, a0, a1, 1);
    let (bv, b_len) = head_view(bo, h, b0, b1, 2);
    // C as [bo, m, h, n + 2] from element 3 on: the heads' outputs merged in place.
    let wn = n + 2;
    let cv = Strided {
        offset: 3,
        split: h,
        outer: m * h * wn,
        inner: wn,
        row: h * wn,
        col: 1,
    };
    let c_len = 3 + bo * m * h * wn + 4;
    let spec = MatmulSpec {
        a_view: Some(av),
        b_view: Some(bv),
        c_view: Some(cv),
        ..base
    };
    let a = rng.uniform_vec(a_len, -1.0, 1.0);
    let b = rng.uniform_vec(b_len, -1.0, 1.0);
    let bias = rng.uniform_vec(n, -1.0, 1.0);
    let want = matmul_ref(
        &spec,
        &f64s(&a),
        &f64s(&b),
        spec.bias.then_some(&f64s(&bias)[..]),
    );
    // The expected C buffer: sentinels, and the product at the view's elements.
    let mut want_c = vec![7.0f64; c_len];
    for z in 0..spec.batch {
        for i in 0..m {
            for j in 0..n {
                want_c[cv.at(z, i, j)] = want[(z * m + i) * n + j];
            }
        }
    }
    let (ta_, tb_, tbias) = (
        upload(gpu, &[a_len], &a),
        upload(gpu, &[b_len], &b),
        upload(gpu, &[n], &bias),
    );
    let mut kernels = kernels.to_vec();
    if offered {
        let offered = matmul_candidates(gpu, &spec);
        assert!(!offered.is_empty(), "no candidate for {spec:?}");
        for kernel in &offered {
            assert!(
                !matches!(kernel, MatmulKernel::Window { .. }),
                "{kernel:?} offered for strided views"
            );
        }
        kernels.extend(offered);
    }
    for kernel in kernels {
        let c = upload(gpu, &[c_len], &vec![7.0; c_len]);
        let d = matmul_with(
            gpu,
            &spec,
            kernel,
            &ta_,
            &tb_,
            spec.bias.then_some(&tbias),
            &c,
        )
        .unwrap();
        run_all(gpu, &d).unwrap();
        assert_close(
            &format!("viewed matmul {spec:?} {kernel:?}"),
            &c.to_f32(gpu).unwrap(),
            &want_c,
            1e-4,
            1e-5 * k as f64,
        );
    }
    let c = Tensor::zeros(gpu, "c", &[c_len]).unwrap();
    let window = MatmulKernel::Window { wg: 64 };
    let r = matmul_with(
        gpu,
        &spec,
        window,
        &ta_,
        &tb_,
        spec.bias.then_some(&tbias),
        &c,
    );
    assert!(r.is_err(), "{window:?} accepted strided views");
}

const LAYOUTS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// Matmuls reading A and B and writing C through two-level strided views (attention's
/// heads read and written in place), every operand layout, on the register-tile, subgroup
/// and tiled kernels and every candidate of the adapter's family.
#[test]
fn viewed_matmul_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let subgroups = subgroup_variants(gpu, "viewed_matmul_matches_reference");
    let mut rng = Rng::new(17);
    let mut kernels = vec![
        MatmulKernel::RegisterTile(Tiles {
            wg: 64,
            tm: 4,
            tn: 4,
        }),
        MatmulKernel::RegisterTile(Tiles {
            wg: 32,
            tm: 3,
            tn: 1,
        }),
        MatmulKernel::Tiled(TileConfig::new(64, 64, 16, 4, 4)),
        MatmulKernel::Tiled(TileConfig::new(32, 64, 8, 2, 8)),
    ];
    if subgroups {
        kernels.push(MatmulKernel::Subgroup { wg: 64 });
        kernels.push(MatmulKernel::Subgroup { wg: 8 });
    }
    for shape in [
        (2, 3, 5, 7, 3),
        (3, 1, 17, 33, 9),
        (1, 5, 1, 1, 1),
        (2, 2, 37, 65, 13),
    ] {
        for layout in LAYOUTS {
            check_viewed(gpu, &mut rng, shape, layout, &kernels, true);
        }
    }
}

/// The tiled kernel (the gpu family's) on viewed products large enough to run several
/// blocks of C with edge blocks (primes), the edge-free (FIT) path, big 128 x 128 blocks,
/// and split-K with its reduce pass writing C through the view.
#[test]
fn tiled_viewed_matmul_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(18);
    let mid = TileConfig::new(64, 64, 16, 4, 4);
    let split = |splits| TileConfig {
        splits,
        ..TileConfig::new(32, 32, 16, 4, 4)
    };
    let cases = [
        // Edge blocks in M, N and K; split-K in 3 splits with a short last one.
        ((2, 2, 67, 131, 97), vec![mid, split(3)]),
        // Every dimension a multiple of the tile: the unguarded path, and 2 even splits.
        ((1, 2, 64, 128, 64), vec![mid, split(2)]),
        // Big blocks of 8 x 8 over a 1 x 1 head and a prime batch.
        (
            (3, 1, 131, 129, 17),
            vec![TileConfig::new(128, 128, 8, 8, 8)],
        ),
    ];
    for (shape, configs) in cases {
        let kernels: Vec<_> = configs.into_iter().map(MatmulKernel::Tiled).collect();
        for layout in LAYOUTS {
            check_viewed(gpu, &mut rng, shape, layout, &kernels, false);
        }
    }
}

/// The tiled kernel (the gpu family's) on awkward shapes, every operand layout and
/// epilogue, the fit (edge-free) and guarded paths, several tile shapes and split-K.
#[test]
fn tiled_matmul_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(11);
    let configs = [
        TileConfig::new(64, 64, 16, 4, 4),
        TileConfig::new(32, 32, 16, 4, 4),
        TileConfig::new(128, 128, 8, 8, 8),
        TileConfig::new(32, 64, 8, 2, 8),
        TileConfig {
            splits: 3,
            ..TileConfig::new(32, 32, 16, 4, 4)
        },
    ];
    let shapes = [
        (1, 1, 1),
        (1, 7, 3),
        (13, 1, 5),
        (17, 31, 29),
        (64, 64, 64),
        (128, 128, 32),
        (37, 130, 263),
    ];
    for &(m, n, k) in &shapes {
        for spec in layouts(m, n, k) {
            for t in configs {
                check_matmul(gpu, &mut rng, &spec, MatmulKernel::Tiled(t));
            }
        }
    }
}

/// Split-K where K is long: the candidates' default for Dense1 of the seed CNN (128 x 128 x
/// 5408, bias + ReLU) and a K beyond one invocation's loop budget.
#[test]
fn tiled_matmul_split_k_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(12);
    let dense1 = MatmulSpec {
        transpose_b: true,
        bias: true,
        relu: true,
        ..MatmulSpec::new(128, 128, 5408)
    };
    let long = MatmulSpec::new(3, 5, 30_011);
    for spec in [dense1, long] {
        let split = TileConfig {
            splits: 8,
            ..TileConfig::new(32, 32, 16, 4, 4)
        };
        check_matmul(gpu, &mut rng, &spec, MatmulKernel::Tiled(split));
        check_matmul(
            gpu,
            &mut rng,
            &spec,
            MatmulKernel::Tiled(TileConfig::new(64, 64, 16, 4, 4)),
        );
    }
    // Split-K results are the same bits run after run (fixed reduction order).
    let spec = dense1;
    let a = rng.uniform_vec(128 * 5408, -1.0, 1.0);
    let b = rng.uniform_vec(128 * 5408, -1.0, 1.0);
    let (ta, tb) = (
        upload(gpu, &spec.a_shape(), &a),
        upload(gpu, &spec.b_shape(), &b),
    );
    let bias = upload(gpu, &[128], &[0.5; 128]);
    let kernel = MatmulKernel::Tiled(TileConfig {
        splits: 8,
        ..TileConfig::new(32, 32, 16, 4, 4)
    });
    let mut runs = vec![];
    for _ in 0..2 {
        let c = Tensor::zeros(gpu, "c", &[128, 128]).unwrap();
        run_all(
            gpu,
            &matmul_with(gpu, &spec, kernel, &ta, &tb, Some(&bias), &c).unwrap(),
        )
        .unwrap();
        runs.push(c.to_f32(gpu).unwrap());
    }
    assert!(runs[0] == runs[1], "split-K is not deterministic");
}

/// Batched products (B per product or shared) on the kernels that take batches, and every
/// candidate of the adapter's family for a few shapes.
#[test]
fn batched_matmul_and_candidates_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(13);
    for (bt, m, n, k) in [
        (2, 1, 1, 1),
        (3, 17, 31, 29),
        (5, 64, 64, 64),
        (2, 37, 70, 130),
    ] {
        for (shared_b, tb) in [(false, false), (true, true), (true, false)] {
            let spec = MatmulSpec {
                batch: bt,
                shared_b,
                transpose_b: tb,
                bias: true,
                ..MatmulSpec::new(m, n, k)
            };
            let kernels = [
                MatmulKernel::Tiled(TileConfig::new(64, 64, 16, 4, 4)),
                MatmulKernel::Tiled(TileConfig {
                    splits: 2,
                    ..TileConfig::new(32, 32, 16, 4, 4)
                }),
                MatmulKernel::RegisterTile(Tiles {
                    wg: 64,
                    tm: 4,
                    tn: 4,
                }),
            ];
            for kernel in kernels {
                check_matmul(gpu, &mut rng, &spec, kernel);
            }
            if gpu.subgroups() {
                // Batched by workgroup z (attention's [B*H, T, T] products).
                check_matmul(gpu, &mut rng, &spec, MatmulKernel::Subgroup { wg: 64 });
            }
            let candidates = matmul_candidates(gpu, &spec);
            assert!(!candidates.is_empty(), "no candidate for {spec:?}");
            for kernel in candidates {
                assert!(
                    !matches!(kernel, MatmulKernel::Window { .. }),
                    "{kernel:?} offered for a batch"
                );
                check_matmul(gpu, &mut rng, &spec, kernel);
            }
        }
    }
    // Attention's layouts: transposed A (dK = dSᵀ Q), transposed B (S = Q Kᵀ), both.
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let spec = MatmulSpec {
            batch: 7,
            transpose_a: ta,
            transpose_b: tb,
            ..MatmulSpec::new(13, 33, 9)
        };
        for kernel in matmul_candidates(gpu, &spec) {
            check_matmul(gpu, &mut rng, &spec, kernel);
        }
    }
    for spec in [
        MatmulSpec::new(1, 1, 1),
        MatmulSpec {
            transpose_b: true,
            bias: true,
            relu: true,
            ..MatmulSpec::new(128, 128, 784)
        },
        MatmulSpec::new(33, 10, 128),
    ] {
        let candidates = matmul_candidates(gpu, &spec);
        assert!(!candidates.is_empty(), "no candidate for {spec:?}");
        for kernel in candidates {
            check_matmul(gpu, &mut rng, &spec, kernel);
        }
    }
}

/// Forward, input gradient and weight gradient (+ dbias, summed over the partial rows on
/// the host) of `s` with `kernel` against the references; Subgroup skips backward_input,
/// Window the passes its candidate lists do not offer for `s`.
fn check_conv_kernel(
    gpu: &shadergrad::gpu::Gpu,
    rng: &mut Rng,
    s: &Conv2dSpec,
    kernel: Conv2dKernel,
) {
    let n = |shape: [usize; 4]| shape.iter().product::<usize>();
    let x = rng.uniform_vec(n(s.x_shape()), -1.0, 1.0);
    let w = rng.uniform_vec(n(s.w_shape()), -1.0, 1.0);
    let b = rng.uniform_vec(s.c_out, -1.0, 1.0);
    let dy = rng.uniform_vec(n(s.y_shape()), -1.0, 1.0);
    let (tx, tw, tb, tdy) = (
        upload(gpu, &s.x_shape(), &x),
        upload(gpu, &s.w_shape(), &w),
        upload(gpu, &[s.c_out], &b),
        upload(gpu, &s.y_shape(), &dy),
    );
    let (x, w, b, dy) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
    let what = format!("{kernel:?} {s:?}");
    let y = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
    let fwd = conv2d_forward_with(gpu, kernel, s, &tx, &tw, Some(&tb), true, &y);
    run_all(gpu, &fwd.unwrap()).unwrap();
    assert_close(
        &format!("conv2d_forward {what}"),
        &y.to_f32(gpu).unwrap(),
        &conv2d_forward_ref(s, &x, &w, Some(&b), true),
        1e-4,
        1e-5 * (s.c_in * s.kh * s.kw) as f64,
    );
    // Subgroup has no input gradient; Window runs what its candidate lists offer.
    let offered =
        |list: Vec<Conv2dKernel>| kernel != Conv2dKernel::Window || list.contains(&kernel);
    if kernel != Conv2dKernel::Subgroup && offered(conv2d_backward_input_candidates(gpu, s)) {
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape()).unwrap();
        let dinput = conv2d_backward_input_with(gpu, kernel, s, &tdy, &tw, &dx);
        run_all(gpu, &dinput.unwrap()).unwrap();
        assert_close(
            &format!("conv2d_backward_input {what}"),
            &dx.to_f32(gpu).unwrap(),
            &conv2d_backward_input_ref(s, &dy, &w),
            1e-4,
            1e-5 * (s.c_out * s.kh * s.kw) as f64,
        );
    }
    if !offered(conv2d_backward_weight_candidates(gpu, s)) {
        return;
    }
    let rows = conv2d_backward_weight_rows(gpu, kernel, s);
    let part = Tensor::zeros(gpu, "part", &[rows, s.part_row()]).unwrap();
    let dweight = conv2d_backward_weight_with(gpu, kernel, s, &tdy, &tx, &part);
    run_all(gpu, &dweight.unwrap()).unwrap();
    let got = part.to_f32(gpu).unwrap();
    let sum = |j: usize| {
        (0..rows)
            .map(|c| got[c * s.part_row() + j] as f64)
            .sum::<f64>() as f32
    };
    let (oh, ow) = s.out_hw();
    let n_w = n(s.w_shape());
    let atol = 1e-5 * (s.batch * oh * ow) as f64;
    let dw: Vec<f32> = (0..n_w).map(sum).collect();
    assert_close(
        &format!("conv2d_backward_weight {what}"),
        &dw,
        &conv2d_backward_weight_ref(s, &dy, &x),
        1e-4,
        atol,
    );
    let db: Vec<f32> = (n_w..s.part_row()).map(sum).collect();
    assert_close(
        &format!("conv2d dbias {what}"),
        &db,
        &conv2d_backward_bias_ref(s, &dy),
        1e-4,
        atol,
    );
}

/// The implicit-GEMM conv (the gpu family's, c_in >= 8) and the direct kernels with stride
/// 1 and 2, valid and same padding, on awkward shapes; and every candidate of each pass.
#[test]
fn conv2d_implicit_gemm_and_stride_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(14);
    let s = |[batch, c_in, h, w, c_out, kh, kw, stride]: [usize; 8], padding| Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        padding,
        stride,
    };
    let specs = [
        s([1, 8, 1, 1, 1, 1, 1, 1], Padding::Valid),
        s([2, 8, 7, 5, 5, 3, 3, 1], Padding::Same),
        s([3, 9, 11, 13, 7, 5, 3, 2], Padding::Same),
        s([2, 16, 9, 9, 33, 3, 3, 2], Padding::Valid),
        s([5, 8, 13, 10, 3, 2, 2, 2], Padding::Same),
        s([17, 11, 8, 8, 70, 3, 3, 1], Padding::Valid),
        s([3, 2, 9, 8, 9, 4, 5, 2], Padding::Same),
        s([2, 1, 28, 28, 4, 3, 3, 2], Padding::Valid),
    ];
    let gemm = [
        TileConfig::new(64, 64, 16, 4, 4),
        TileConfig::new(32, 32, 16, 4, 4),
        TileConfig::new(32, 64, 8, 2, 8),
    ];
    for spec in &specs {
        check_conv_kernel(gpu, &mut rng, spec, Conv2dKernel::Direct);
        for t in gemm {
            check_conv_kernel(gpu, &mut rng, spec, Conv2dKernel::ImplicitGemm(t));
        }
        for k in conv2d_forward_candidates(gpu, spec) {
            assert!(
                spec.stride == 1 || k != Conv2dKernel::Subgroup,
                "{k:?} for stride 2"
            );
            check_conv_kernel(gpu, &mut rng, spec, k);
        }
        let all = [
            conv2d_backward_input_candidates(gpu, spec),
            conv2d_backward_weight_candidates(gpu, spec),
        ];
        for (pass, list) in all.iter().enumerate() {
            assert!(!list.is_empty(), "no candidate for pass {pass} of {spec:?}");
        }
        let gemm_offered = all[1]
            .iter()
            .any(|k| matches!(k, Conv2dKernel::ImplicitGemm(_)));
        if gpu.family() == Family::Gpu && spec.c_in >= IMPLICIT_GEMM_MIN_C_IN {
            assert!(
                gemm_offered,
                "gpu family offers no implicit GEMM for {spec:?}"
            );
        }
    }
}

/// The window conv kernels (implicit GEMMs on uniform windows, the window family's): several
/// images a window and one, row blocks past 32 channels, even kernels (uneven same
/// padding), stride 2 (forward and dweight only), kernels larger than the output, weight
/// gradients cut into slices; and refusals where an image does not fit a window.
#[test]
fn conv2d_window_matches_reference() {
    let Some(gpu) = gpu() else { return };
    if gpu.family() != Family::Window {
        eprintln!(
            "conv2d_window_matches_reference: NOT TESTED here: the window conv kernels run in \
             the window family only, and {} runs the {} family",
            gpu.describe(),
            gpu.family()
        );
        return;
    }
    let mut rng = Rng::new(15);
    let s = |[batch, c_in, h, w, c_out, kh, kw, stride]: [usize; 8], padding| Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        padding,
        stride,
    };
    let specs = [
        s([3, 5, 7, 6, 11, 3, 3, 1], Padding::Same),
        s([2, 16, 28, 28, 16, 3, 3, 1], Padding::Same), // one 28 x 28 x 16 image a window
        s([3, 3, 9, 8, 37, 4, 2, 1], Padding::Same),
        s([4, 7, 11, 13, 5, 3, 3, 2], Padding::Valid),
        s([1, 1, 1, 1, 1, 1, 1, 1], Padding::Valid),
        s([3, 32, 7, 7, 33, 3, 3, 1], Padding::Same),
        s([5, 2, 5, 5, 3, 5, 5, 1], Padding::Valid),
        s([9, 1, 28, 28, 8, 3, 3, 1], Padding::Valid),
    ];
    for spec in &specs {
        for pass in [
            conv2d_forward_candidates(gpu, spec),
            conv2d_backward_weight_candidates(gpu, spec),
        ] {
            assert_eq!(pass.first(), Some(&Conv2dKernel::Window), "{spec:?}");
        }
        let input = conv2d_backward_input_candidates(gpu, spec).contains(&Conv2dKernel::Window);
        assert_eq!(input, spec.stride == 1, "input gradient of {spec:?}");
        check_conv_kernel(gpu, &mut rng, spec, Conv2dKernel::Window);
    }
    // 40 x 20 x 21 floats an image (x and dy): more than a window holds.
    let big = s([2, 40, 20, 21, 40, 3, 3, 1], Padding::Same);
    for list in [
        conv2d_forward_candidates(gpu, &big),
        conv2d_backward_input_candidates(gpu, &big),
        conv2d_backward_weight_candidates(gpu, &big),
    ] {
        assert!(!list.contains(&Conv2dKernel::Window), "{list:?}");
    }
    let (x, w, y) = (
        Tensor::zeros(gpu, "x", &big.x_shape()).unwrap(),
        Tensor::zeros(gpu, "w", &big.w_shape()).unwrap(),
        Tensor::zeros(gpu, "y", &big.y_shape()).unwrap(),
    );
    let err = conv2d_forward_with(gpu, Conv2dKernel::Window, &big, &x, &w, None, false, &y)
        .err()
        .expect("an image larger than a window is refused");
    assert!(err.to_string().contains("window"), "{err}");
}

/// Runs batch norm's backward for `t` (after its training forward) and checks dx, dgamma
/// and dbeta against the reference's `(dx, dgamma, dbeta)`; atol grows with the values a
/// channel sums.
fn check_batch_norm_backward(
    gpu: &shadergrad::gpu::Gpu,
    what: &str,
    s: &shadergrad::kernels::batchnorm::BatchNormSpec,
    t: &shadergrad::kernels::batchnorm::BatchNormTensors,
    sc: &shadergrad::kernels::batchnorm::BatchNormScratch,
    dy: &Tensor,
    (want_dx, want_dgamma, want_dbeta): (Vec<f64>, Vec<f64>, Vec<f64>),
) {
    use shadergrad::kernels::batchnorm::*;
    let zeros = |shape: &[usize]| Tensor::zeros(gpu, "out", shape).unwrap();
    let c = s.channels;
    let (dx, dgamma, dbeta) = (zeros(&t.x.shape), zeros(&[c]), zeros(&[c]));
    let grads = BatchNormGrads {
        dy,
        dx: &dx,
        dgamma: &dgamma,
        dbeta: &dbeta,
    };
    run_all(gpu, &batch_norm_backward(gpu, s, t, &grads, sc).unwrap()).unwrap();
    let atol = 1e-5 * (s.count() as f64).sqrt();
    for (name, got, want, rtol) in [
        ("dx", &dx, &want_dx, 1e-3),
        ("dgamma", &dgamma, &want_dgamma, 1e-4),
        ("dbeta", &dbeta, &want_dbeta, 1e-4),
    ] {
        let what = format!("{what} {name}");
        assert_close(&what, &got.to_f32(gpu).unwrap(), want, rtol, atol);
    }
}

/// Batch norm, training and evaluation forward and backward, with and without the fused
/// ReLU, against the f64 references: one value a channel, BatchNorm1d ([B, C], S = 1),
/// primes, more chunks than one (batch past the partial sums' split), channels far from zero
/// mean (the shifted sums), more channels than the uniform coefficients hold.
#[test]
fn batch_norm_matches_reference() {
    use shadergrad::kernels::batchnorm::*;
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(16);
    for (shape, offset) in [
        (vec![1, 1, 1, 1], 0.0),
        (vec![3, 5, 7, 6], 3.0),
        (vec![17, 3], -2.0),
        (vec![2, 7, 13, 11], 0.5),
        (vec![130, 4, 3, 1], 40.0),
        (vec![9, 16, 28, 28], 1.0),
        (vec![8, 1031], 0.01), // past the uniform coefficients: read from storage
    ] {
        for relu in [false, true] {
            let s = BatchNormSpec::of_shape(&shape, 1e-5, relu).unwrap();
            let (full, c) = (shape.iter().product::<usize>(), s.channels);
            // Channel c centred near offset * c, spread 1..2.
            let x: Vec<f32> = rng
                .uniform_vec(full, -1.0, 1.0)
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    v * (1.0 + (j / s.spatial % c) as f32 / c as f32)
                        + offset * (j / s.spatial % c) as f32
                })
                .collect();
            let gamma = rng.uniform_vec(c, 0.5, 1.5);
            let beta = rng.uniform_vec(c, -0.5, 0.5);
            let dy = rng.uniform_vec(full, -1.0, 1.0);
            let (tx, tg, tb, tdy) = (
                upload(gpu, &shape, &x),
                upload(gpu, &[c], &gamma),
                upload(gpu, &[c], &beta),
                upload(gpu, &shape, &dy),
            );
            let zeros = |shape: &[usize]| Tensor::zeros(gpu, "out", shape).unwrap();
            let (y, mean, var) = (zeros(&shape), zeros(&[c]), zeros(&[c]));
            let (part, coef) = (zeros(&[s.part_len()]), zeros(&[s.coef_len()]));
            let sc = BatchNormScratch {
                part: &part,
                coef: &coef,
            };
            let t = BatchNormTensors {
                x: &tx,
                gamma: &tg,
                beta: &tb,
                y: &y,
                mean: &mean,
                var: &var,
                argmax: None,
            };
            run_all(gpu, &batch_norm_train(gpu, &s, &t, &sc).unwrap()).unwrap();
            let (x, gamma, beta, dy) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&dy));
            let (want_mean, want_var) = batch_norm_stats_ref(&s, &x);
            let what = format!("batch_norm {shape:?} relu {relu}");
            assert_close(
                &format!("{what} mean"),
                &mean.to_f32(gpu).unwrap(),
                &want_mean,
                1e-5,
                1e-5,
            );
            assert_close(
                &format!("{what} var"),
                &var.to_f32(gpu).unwrap(),
                &want_var,
                1e-4,
                1e-5,
            );
            let want_y = batch_norm_apply_ref(&s, &x, [&gamma, &beta, &want_mean, &want_var]);
            assert_close(
                &format!("{what} y"),
                &y.to_f32(gpu).unwrap(),
                &want_y,
                1e-4,
                1e-4,
            );
            let want = batch_norm_backward_ref(&s, &x, [&gamma, &beta], &dy);
            check_batch_norm_backward(gpu, &what, &s, &t, &sc, &tdy, want);
            // Evaluation: given statistics (here a made-up running mean and var).
            let run_mean = rng.uniform_vec(c, -1.0, 1.0);
            let run_var = rng.uniform_vec(c, 0.1, 2.0);
            let (tm, tv) = (upload(gpu, &[c], &run_mean), upload(gpu, &[c], &run_var));
            let t = BatchNormTensors {
                x: &tx,
                gamma: &tg,
                beta: &tb,
                y: &y,
                mean: &tm,
                var: &tv,
                argmax: None,
            };
            run_all(gpu, &batch_norm_eval(gpu, &s, &t, &sc).unwrap()).unwrap();
            let want =
                batch_norm_apply_ref(&s, &x, [&gamma, &beta, &f64s(&run_mean), &f64s(&run_var)]);
            assert_close(
                &format!("{what} eval y"),
                &y.to_f32(gpu).unwrap(),
                &want,
                1e-4,
                1e-4,
            );
        }
    }
}

/// Batch norm, ReLU and a max pool fused (training and evaluation forward, backward)
/// against the composed references: pools of 2 and 3, planes whose last rows and columns
/// no window covers (their gradient is the batch norm's alone), one-window planes.
#[test]
fn batch_norm_pool_matches_reference() {
    use shadergrad::kernels::batchnorm::*;
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(17);
    for (shape, pool) in [
        (vec![3, 5, 7, 6], 2),
        (vec![2, 3, 7, 8], 3),
        (vec![9, 16, 28, 28], 2),
        (vec![4, 2, 2, 3], 2),
        (vec![130, 4, 4, 4], 2),
    ] {
        let s = BatchNormSpec {
            pool,
            ..BatchNormSpec::of_shape(&shape, 1e-5, true).unwrap()
        };
        let (full, c) = (shape.iter().product::<usize>(), s.channels);
        let (ph, pw) = s.pooled_hw();
        let pooled = [shape[0], c, ph, pw];
        let x = rng.uniform_vec(full, -1.0, 1.0);
        let gamma = rng.uniform_vec(c, 0.5, 1.5);
        let beta = rng.uniform_vec(c, -0.5, 0.5);
        let dy = rng.uniform_vec(s.y_len(), -1.0, 1.0);
        let (tx, tg, tb, tdy) = (
            upload(gpu, &shape, &x),
            upload(gpu, &[c], &gamma),
            upload(gpu, &[c], &beta),
            upload(gpu, &pooled, &dy),
        );
        let zeros = |shape: &[usize]| Tensor::zeros(gpu, "out", shape).unwrap();
        let (y, argmax, mean, var) = (zeros(&pooled), zeros(&pooled), zeros(&[c]), zeros(&[c]));
        let (part, coef) = (zeros(&[s.part_len()]), zeros(&[s.coef_len()]));
        let sc = BatchNormScratch {
            part: &part,
            coef: &coef,
        };
        let t = BatchNormTensors {
            x: &tx,
            gamma: &tg,
            beta: &tb,
            y: &y,
            mean: &mean,
            var: &var,
            argmax: Some(&argmax),
        };
        run_all(gpu, &batch_norm_train(gpu, &s, &t, &sc).unwrap()).unwrap();
        let (x, gamma, beta, dy) = (f64s(&x), f64s(&gamma), f64s(&beta), f64s(&dy));
        let (want_mean, want_var) = batch_norm_stats_ref(&s, &x);
        let (want_y, want_arg) =
            batch_norm_pool_ref(&s, &x, [&gamma, &beta, &want_mean, &want_var]);
        let what = format!("batch_norm_pool {shape:?} pool {pool}");
        assert_close(
            &format!("{what} y"),
            &y.to_f32(gpu).unwrap(),
            &want_y,
            1e-4,
            1e-4,
        );
        let want_arg: Vec<f64> = want_arg.iter().map(|&a| a as f64).collect();
        assert_close(
            &format!("{what} argmax"),
            &argmax.to_f32(gpu).unwrap(),
            &want_arg,
            0.0,
            0.0,
        );
        let want = batch_norm_pool_backward_ref(&s, &x, [&gamma, &beta], &dy);
        check_batch_norm_backward(gpu, &what, &s, &t, &sc, &tdy, want);
        // Evaluation with given statistics.
        let (rm, rv) = (rng.uniform_vec(c, -0.5, 0.5), rng.uniform_vec(c, 0.2, 2.0));
        let (tm, tv) = (upload(gpu, &[c], &rm), upload(gpu, &[c], &rv));
        let t = BatchNormTensors {
            mean: &tm,
            var: &tv,
            ..t
        };
        run_all(gpu, &batch_norm_eval(gpu, &s, &t, &sc).unwrap()).unwrap();
        let (want, _) = batch_norm_pool_ref(&s, &x, [&gamma, &beta, &f64s(&rm), &f64s(&rv)]);
        assert_close(
            &format!("{what} eval y"),
            &y.to_f32(gpu).unwrap(),
            &want,
            1e-4,
            1e-4,
        );
    }
}
