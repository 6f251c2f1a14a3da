//! The kernel tests' small cases, run in the page: each kernel the seed CNN trains with,
//! on the browser's adapter, against its CPU reference (f64) with tests/kernels.rs's
//! tolerances. Shapes: 1, primes and sizes that are no multiple of any tile.

use serde_json::{json, Value};

use shadergrad::gpu::Gpu;
use shadergrad::kernels::activation::*;
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::loss::*;
use shadergrad::kernels::matmul::*;
use shadergrad::kernels::optim::*;
use shadergrad::kernels::pool::*;
use shadergrad::kernels::reduce::*;
use shadergrad::kernels::{f64s, run, run_all};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;
use shadergrad::Result;

/// The outcome of one check, for the page and the browser test.
struct Checks {
    gpu: &'static Gpu,
    out: Vec<Value>,
}

impl Checks {
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_f32(self.gpu, "check input", shape, data)
    }

    /// Compare `t`'s contents with `want`: |got - want| <= atol + rtol * |want|.
    async fn close(
        &mut self,
        what: String,
        t: &Tensor,
        want: &[f64],
        rtol: f64,
        atol: f64,
    ) -> Result<()> {
        let got = t.to_f32_async(self.gpu).await?;
        self.compare(what, &got, want, rtol, atol);
        Ok(())
    }

    fn compare(&mut self, what: String, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
        let mut bad = 0;
        let mut worst = (0usize, 0.0f64);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            // NaN compares false, so a NaN on either side counts as a mismatch.
            let close = err <= atol + rtol * w.abs();
            if !close {
                bad += 1;
            }
            if err.is_nan() || err > worst.1 {
                worst = (i, err);
            }
        }
        let ok = bad == 0 && got.len() == want.len();
        let detail = if got.len() != want.len() {
            format!("{} values, expected {}", got.len(), want.len())
        } else {
            format!(
                "{bad} of {} differ; worst |error| {:.3e} at [{}] (rtol {rtol}, atol {atol:.1e})",
                got.len(),
                worst.1,
                worst.0
            )
        };
        self.out
            .push(json!({"name": what, "ok": ok, "detail": detail}));
    }
}

pub async fn all(gpu: &'static Gpu) -> Result<Vec<Value>> {
    let mut c = Checks {
        gpu,
        out: Vec::new(),
    };
    let mut rng = Rng::new(1);
    matmul(&mut c, &mut rng).await?;
    conv2d(&mut c, &mut rng).await?;
    max_pool(&mut c, &mut rng).await?;
    activations(&mut c, &mut rng).await?;
    losses(&mut c, &mut rng).await?;
    adam(&mut c, &mut rng).await?;
    blocking_refused(&mut c)?;
    gpu.check("kernel checks")?;
    Ok(c.out)
}

/// Every kernel the engine may pick here for each product, in the operand layouts and
/// epilogues the CNN uses.
async fn matmul(c: &mut Checks, rng: &mut Rng) -> Result<()> {
    for (m, n, k) in [
        (1, 1, 1),
        (13, 1, 5),
        (17, 31, 29),
        (128, 10, 128),
        (37, 130, 263),
    ] {
        for (ta, tb, bias, relu) in [
            (false, false, false, false),
            (false, true, true, true),
            (true, false, false, false),
        ] {
            let spec = MatmulSpec {
                transpose_a: ta,
                transpose_b: tb,
                bias,
                relu,
                ..MatmulSpec::new(m, n, k)
            };
            let a = rng.uniform_vec(m * k, -1.0, 1.0);
            let b = rng.uniform_vec(k * n, -1.0, 1.0);
            let bv = rng.uniform_vec(n, -1.0, 1.0);
            let (ta_, tb_, tbias) = (
                c.upload(&spec.a_shape(), &a)?,
                c.upload(&spec.b_shape(), &b)?,
                c.upload(&[n], &bv)?,
            );
            let want = matmul_ref(&spec, &f64s(&a), &f64s(&b), bias.then_some(&f64s(&bv)[..]));
            for kernel in matmul_candidates(c.gpu, &spec) {
                let out = Tensor::zeros(c.gpu, "c", &[m, n])?;
                let d = matmul_with(
                    c.gpu,
                    &spec,
                    kernel,
                    &ta_,
                    &tb_,
                    bias.then_some(&tbias),
                    &out,
                )?;
                run_all(c.gpu, &d)?;
                c.close(
                    format!(
                        "matmul {m}x{n}x{k} ta={ta} tb={tb} bias={bias} relu={relu} {kernel:?}"
                    ),
                    &out,
                    &want,
                    1e-4,
                    1e-5 * k as f64,
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn conv2d(c: &mut Checks, rng: &mut Rng) -> Result<()> {
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
    for s in [
        s(1, 1, 1, 1, 1, 1, 1, Padding::Valid),
        s(2, 3, 7, 5, 5, 3, 3, Padding::Same),
        s(3, 2, 11, 13, 7, 5, 3, Padding::Same),
        s(17, 1, 28, 28, 32, 3, 3, Padding::Valid),
    ] {
        let n = |shape: [usize; 4]| shape.iter().product::<usize>();
        let x = rng.uniform_vec(n(s.x_shape()), -1.0, 1.0);
        let w = rng.uniform_vec(n(s.w_shape()), -1.0, 1.0);
        let b = rng.uniform_vec(s.c_out, -1.0, 1.0);
        let dy = rng.uniform_vec(n(s.y_shape()), -1.0, 1.0);
        let (tx, tw, tb, tdy) = (
            c.upload(&s.x_shape(), &x)?,
            c.upload(&s.w_shape(), &w)?,
            c.upload(&[s.c_out], &b)?,
            c.upload(&s.y_shape(), &dy)?,
        );
        let gpu = c.gpu;
        let y = Tensor::zeros(gpu, "y", &s.y_shape())?;
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape())?;
        let n_w = n(s.w_shape());
        let part = Tensor::zeros(gpu, "part", &[s.weight_chunks(), s.part_row()])?;
        let dw = Tensor::zeros(gpu, "dw", &[n_w])?;
        let db = Tensor::zeros(gpu, "db", &[s.c_out])?;
        let dims = (s.weight_chunks(), s.part_row(), 1);
        let ds = [
            conv2d_forward(gpu, &s, &tx, &tw, Some(&tb), true, &y)?,
            conv2d_backward_input(gpu, &s, &tdy, &tw, &dx)?,
            conv2d_backward_weight(gpu, &s, &tdy, &tx, &part)?,
            sum_outer_inner_range(gpu, &part, dims, 0, &dw)?,
            sum_outer_inner_range(gpu, &part, dims, n_w, &db)?,
        ];
        run(gpu, &ds.iter().collect::<Vec<_>>())?;
        let (x, w, b, dy) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
        let (oh, ow) = s.out_hw();
        let taps = (s.c_in * s.kh * s.kw) as f64;
        let per_w = 1e-5 * (s.batch * oh * ow) as f64;
        let at = format!(
            "{}x{}x{}x{} -> {} ({}x{}, {:?})",
            s.batch, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.padding
        );
        c.close(
            format!("conv2d_forward+relu {at}"),
            &y,
            &conv2d_forward_ref(&s, &x, &w, Some(&b), true),
            1e-4,
            1e-5 * taps,
        )
        .await?;
        c.close(
            format!("conv2d_backward_input {at}"),
            &dx,
            &conv2d_backward_input_ref(&s, &dy, &w),
            1e-4,
            1e-5 * (s.c_out * s.kh * s.kw) as f64,
        )
        .await?;
        c.close(
            format!("conv2d_backward_weight {at}"),
            &dw,
            &conv2d_backward_weight_ref(&s, &dy, &x),
            1e-4,
            per_w,
        )
        .await?;
        c.close(
            format!("conv2d dbias {at}"),
            &db,
            &conv2d_backward_bias_ref(&s, &dy),
            1e-4,
            per_w,
        )
        .await?;
    }
    Ok(())
}

async fn max_pool(c: &mut Checks, rng: &mut Rng) -> Result<()> {
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
        s(2, 3, 7, 5, 2, 2),
        s(3, 2, 9, 11, 3, 2),
        s(4, 32, 26, 26, 2, 2),
    ] {
        let x = rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0);
        let dy = rng.uniform_vec(s.y_shape().iter().product(), -1.0, 1.0);
        let (tx, tdy) = (c.upload(&s.x_shape(), &x)?, c.upload(&s.y_shape(), &dy)?);
        let gpu = c.gpu;
        let y = Tensor::zeros(gpu, "y", &s.y_shape())?;
        let arg = Tensor::zeros(gpu, "argmax", &s.y_shape())?;
        let dx = Tensor::zeros(gpu, "dx", &s.x_shape())?;
        let f = max_pool2d_forward(gpu, &s, &tx, &arg, &y)?;
        let b = max_pool2d_backward(gpu, &s, &tdy, &arg, &dx)?;
        run(gpu, &[&f, &b])?;
        let (want_y, want_arg) = max_pool2d_forward_ref(&s, &f64s(&x));
        let at = format!("{:?}", s.x_shape());
        c.close(
            format!("max_pool2d_forward {at} pool {}", s.pool),
            &y,
            &want_y,
            0.0,
            0.0,
        )
        .await?;
        let got_arg: Vec<f32> = arg
            .to_u32_async(gpu)
            .await?
            .iter()
            .map(|&i| i as f32)
            .collect();
        let want: Vec<f64> = want_arg.iter().map(|&i| i as f64).collect();
        c.compare(format!("max_pool2d argmax {at}"), &got_arg, &want, 0.0, 0.0);
        c.close(
            format!("max_pool2d_backward {at}"),
            &dx,
            &max_pool2d_backward_ref(&s, &f64s(&dy), &want_arg),
            1e-6,
            1e-6,
        )
        .await?;
    }
    Ok(())
}

async fn activations(c: &mut Checks, rng: &mut Rng) -> Result<()> {
    for n in [1, 7, 1000, 65 * 64 + 3] {
        for act in [Activation::Relu, Activation::Sigmoid] {
            let mut x = rng.uniform_vec(n, -6.0, 6.0);
            x[0] = if n > 1 { 100.0 } else { -100.0 };
            let dy = rng.uniform_vec(n, -1.0, 1.0);
            let (tx, tdy) = (c.upload(&[n], &x)?, c.upload(&[n], &dy)?);
            let gpu = c.gpu;
            let y = Tensor::zeros(gpu, "y", &[n])?;
            let dx = Tensor::zeros(gpu, "dx", &[n])?;
            let f = activation_forward(gpu, act, &tx, &y)?;
            let b = activation_backward(gpu, act, &tdy, &y, &dx)?;
            run(gpu, &[&f, &b])?;
            let got_y = y.to_f32_async(gpu).await?;
            c.compare(
                format!("{act:?} forward n={n}"),
                &got_y,
                &activation_forward_ref(act, &f64s(&x)),
                1e-6,
                1e-7,
            );
            c.close(
                format!("{act:?} backward n={n}"),
                &dx,
                &activation_backward_ref(act, &f64s(&dy), &f64s(&got_y)),
                1e-5,
                1e-7,
            )
            .await?;
        }
    }
    Ok(())
}

/// Softmax cross-entropy forward and backward, and the metrics it accumulates.
async fn losses(c: &mut Checks, rng: &mut Rng) -> Result<()> {
    for (batch, classes) in [(1, 10), (7, 3), (128, 10), (5, 13)] {
        let loss = Loss::SoftmaxCrossEntropy;
        let mut z = rng.uniform_vec(batch * classes, -5.0, 5.0);
        z[0] = 80.0;
        let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
        let gpu = c.gpu;
        let tz = c.upload(&[batch, classes], &z)?;
        let tl = Tensor::from_u32(gpu, "label", &[batch], &labels)?;
        let prob = Tensor::zeros(gpu, "prob", &[batch, classes])?;
        let per = Tensor::zeros(gpu, "loss", &[batch])?;
        let dz = Tensor::zeros(gpu, "dz", &[batch, classes])?;
        let metrics = Tensor::zeros(gpu, "metrics", &[METRICS_LEN])?;
        let t = LossTensors {
            z: &tz,
            label: Some(&tl),
            target: None,
            prob: &prob,
        };
        let mut ds = vec![
            loss_forward(gpu, loss, &t, &per)?,
            loss_backward(gpu, loss, &t, &dz)?,
        ];
        ds.extend(accumulate_metrics(
            gpu,
            &per,
            &prob,
            &tl,
            Accuracy::Classification,
            &metrics,
        )?);
        run(gpu, &ds.iter().collect::<Vec<_>>())?;
        let (want_p, want_l) = loss_forward_ref(loss, classes, &f64s(&z), &labels, &[]);
        let what = format!("softmax cross-entropy B={batch} C={classes}");
        c.close(format!("{what} prob"), &prob, &want_p, 1e-5, 1e-6)
            .await?;
        c.close(format!("{what} loss"), &per, &want_l, 1e-5, 1e-5)
            .await?;
        c.close(
            format!("{what} dz"),
            &dz,
            &loss_backward_ref(loss, classes, &want_p, &labels, &[]),
            1e-5,
            1e-7,
        )
        .await?;
        let (sum, correct) = accumulate_metrics_ref(&want_l, &want_p, &labels, classes);
        let want_m = [sum, correct as f64, batch as f64, 0.0];
        c.close(
            format!("{what} metrics"),
            &metrics.view(0, &[4]),
            &want_m,
            1e-5,
            1e-4,
        )
        .await?;
    }
    Ok(())
}

/// Three Adam steps against the reference, on sizes up to the CNN's parameter count.
async fn adam(c: &mut Checks, rng: &mut Rng) -> Result<()> {
    let gpu = c.gpu;
    for n in [1, 63, 1000, 693_962] {
        let opt = Optimizer::adam(1e-3);
        let mut p = f64s(&rng.uniform_vec(n, -1.0, 1.0));
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let tp = c.upload(&[n], &p.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
        let (tm, tv, tg) = (
            Tensor::zeros(gpu, "m", &[n])?,
            Tensor::zeros(gpu, "v", &[n])?,
            Tensor::zeros(gpu, "g", &[n])?,
        );
        let d = optimizer_step(gpu, &opt, &tg, &tp, &tm, &tv)?;
        for t in 1..=3u64 {
            let g = rng.uniform_vec(n, -1.0, 1.0);
            tg.write_f32(gpu, &g)?;
            gpu.queue
                .write_buffer(&d.params, 0, bytemuck::bytes_of(&step_params(&opt, n, t)));
            run(gpu, &[&d])?;
            optimizer_step_ref(&opt, t, &f64s(&g), &mut p, &mut m, &mut v);
        }
        c.close(format!("adam n={n} param"), &tp, &p, 1e-5, 1e-6)
            .await?;
        c.close(format!("adam n={n} m"), &tm, &m, 1e-5, 1e-6)
            .await?;
    }
    Ok(())
}

/// A blocking readback in the browser is an error naming its async form, not a hang.
fn blocking_refused(c: &mut Checks) -> Result<()> {
    let t = c.upload(&[3], &[1.0, 2.0, 3.0])?;
    let (ok, detail) = match t.to_f32(c.gpu) {
        Ok(v) => (false, format!("returned {v:?} without waiting")),
        Err(e) => (e.to_string().contains("to_f32_async"), e.to_string()),
    };
    c.out
        .push(json!({"name": "blocking readback refused", "ok": ok, "detail": detail}));
    Ok(())
}
