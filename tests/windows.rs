//! The uniform-window matmul (matmul_subgroup.wgsl's matmul_window) and the transpose that
//! feeds it: block planning without a GPU, then each against its f64 reference on shapes
//! that cut into several row, column and K blocks, with odd sizes and misaligned windows.

mod common;

use common::{assert_close, gpu};
#[allow(unused_imports)]
use shadergrad::kernels::conv2d::relu_pool_weight_rows;
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::matmul::*;
use shadergrad::kernels::pool::PoolSpec;
use shadergrad::kernels::transpose::{transpose, transpose_ref};
use shadergrad::kernels::{f64s, run, run_all};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;

fn spec(m: usize, n: usize, k: usize, ta: bool, tb: bool, bias: bool, relu: bool) -> MatmulSpec {
    MatmulSpec {
        transpose_a: ta,
        transpose_b: tb,
        bias,
        relu,
        ..MatmulSpec::new(m, n, k)
    }
}

/// A square-kernel conv: batch, input channels, height, width, output channels, kernel size.
fn conv(
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    padding: Padding,
) -> Conv2dSpec {
    Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        padding,
        stride: 1,
    }
}

#[test]
fn window_blocks_tile_the_product_exactly_once() {
    for slack in [0, 8, 64] {
        for s in [
            spec(37, 131, 1000, true, false, true, true),
            spec(200, 131, 300, false, false, true, true),
            spec(61, 300, 200, false, true, true, false),
            spec(128, 128, 5408, true, false, true, true),
            spec(128, 5408, 128, true, true, false, false),
            spec(1, 1, 1, false, false, false, false),
        ] {
            let blocks = windows(&s, slack).expect("these layouts cut into windows");
            let mut covered = vec![0u8; s.m * s.n * s.k];
            for b in &blocks {
                // Each window holds every element the block reads, and fits one binding.
                assert!(b.a_window.1 + slack <= 16384, "{b:?}");
                assert!(b.b_window.1 + slack <= 16384, "{b:?}");
                for i in b.m0..b.m0 + b.m {
                    for j in b.n0..b.n0 + b.n {
                        for kk in b.k0..b.k0 + b.k {
                            covered[(i * s.n + j) * s.k + kk] += 1;
                        }
                    }
                }
            }
            assert!(
                covered.iter().all(|&c| c == 1),
                "{s:?}: blocks overlap or leave gaps"
            );
        }
    }
    // A stored [M, K] with a long K leaves blocks of a few rows: not worth windows.
    assert!(windows(&spec(128, 128, 5408, false, true, true, true), 8).is_none());
    // Aligned 128-float rows fill whole windows: the seed CNN's Dense forward is 43 blocks.
    assert_eq!(
        windows(&spec(128, 128, 5408, true, false, true, true), 0)
            .unwrap()
            .len(),
        43
    );
}

#[test]
fn window_matmul_matches_reference_across_blocks() {
    let Some(gpu) = gpu() else { return };
    if !gpu.subgroups() {
        eprintln!(
            "window_matmul_matches_reference_across_blocks: NOT TESTED here: {} has no \
             subgroups of at least 8 lanes, so the engine never runs the window kernel on it",
            gpu.describe()
        );
        return;
    }
    let slack = gpu.limits.min_uniform_buffer_offset_alignment as usize / 4;
    let mut rng = Rng::new(11);
    for (s, min_blocks) in [
        (spec(37, 131, 1000, true, false, true, true), 3), // K blocks, accumulate + ReLU
        (spec(200, 131, 300, false, false, true, true), 8), // row and K blocks
        (spec(61, 300, 200, false, true, true, false), 4), // column blocks
        (spec(7, 3, 5, true, true, false, true), 1),
        (spec(1, 1, 1, false, false, true, false), 1),
        (spec(128, 128, 5408, true, false, true, true), 43), // Dense forward on x^T, W^T
        (spec(128, 5408, 128, true, true, false, false), 43), // dweight on gz, x^T
        (spec(128, 5408, 128, false, true, false, false), 43), // dinput on gz, W^T
    ] {
        let a = rng.uniform_vec(s.m * s.k, -1.0, 1.0);
        let b = rng.uniform_vec(s.k * s.n, -1.0, 1.0);
        let bias = rng.uniform_vec(s.n, -1.0, 1.0);
        let want = matmul_ref(&s, &f64s(&a), &f64s(&b), s.bias.then_some(&f64s(&bias)[..]));
        // A and B at the start of their buffers (aligned windows, full 64 KiB blocks) and
        // at odd offsets (misaligned windows, blocks with slack). Storage bindings such as
        // the bias stay aligned.
        for lead in [0, 3] {
            let put = |shape: &[usize], data: &[f32]| {
                let mut padded = vec![f32::NAN; lead];
                padded.extend(data);
                Tensor::from_f32(gpu, "operand", &[padded.len()], &padded)
                    .unwrap()
                    .view(lead, shape)
            };
            let (ta, tb) = (put(&s.a_shape(), &a), put(&s.b_shape(), &b));
            let tbias = Tensor::from_f32(gpu, "bias", &[s.n], &bias).unwrap();
            let c = Tensor::from_f32(gpu, "c", &[s.m, s.n], &vec![f32::NAN; s.m * s.n]).unwrap();
            let kernel = MatmulKernel::Window { wg: 64 };
            let bias_t = s.bias.then_some(&tbias);
            let ds = matmul_with(gpu, &s, kernel, &ta, &tb, bias_t, &c).unwrap();
            let most = windows(&s, slack).unwrap().len();
            assert!(
                ds.len() >= min_blocks && ds.len() <= most,
                "{s:?} lead {lead}: {} blocks",
                ds.len()
            );
            run_all(gpu, &ds).unwrap();
            assert_close(
                &format!("window matmul {s:?} lead {lead}"),
                &c.to_f32(gpu).unwrap(),
                &want,
                1e-4,
                1e-5 * s.k as f64,
            );
        }
    }
}

#[test]
fn transpose_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(12);
    for (rows, cols) in [(1, 1), (1, 7), (13, 1), (7, 13), (128, 5408), (257, 3)] {
        let x = rng.uniform_vec(rows * cols, -1.0, 1.0);
        let tx = Tensor::from_f32(gpu, "x", &[rows, cols], &x).unwrap();
        let ty = Tensor::zeros(gpu, "y", &[cols, rows]).unwrap();
        let d = transpose(gpu, &tx, &ty).unwrap();
        run(gpu, &[&d]).unwrap();
        // A permutation: exact.
        assert_close(
            &format!("transpose {rows}x{cols}"),
            &ty.to_f32(gpu).unwrap(),
            &transpose_ref(&f64s(&x), rows, cols),
            0.0,
            0.0,
        );
    }
    let bad = Tensor::zeros(gpu, "y", &[3, 3]).unwrap();
    let x = Tensor::zeros(gpu, "x", &[3, 4]).unwrap();
    let err = transpose(gpu, &x, &bad).err().unwrap().to_string();
    assert!(err.contains("transpose") && err.contains("[4, 3]"), "{err}");
}

#[test]
fn windowed_conv2d_forward_matches_reference() {
    let Some(gpu) = gpu() else { return };
    if !gpu.subgroups() {
        eprintln!(
            "windowed_conv2d_forward_matches_reference: NOT TESTED here: {} has no subgroups \
             of at least 8 lanes, so the engine never runs the window kernel on it",
            gpu.describe()
        );
        return;
    }
    let mut rng = Rng::new(13);
    for (s, min_dispatches) in [
        (conv(128, 1, 28, 28, 32, 3, Padding::Valid), 7), // the seed CNN: 20 images a window
        (conv(3, 2, 7, 5, 11, 3, Padding::Same), 1),
        (conv(1, 1, 1, 1, 1, 1, Padding::Valid), 1),
        (conv(31, 5, 13, 17, 3, 2, Padding::Valid), 3), // 1,105 floats an image: 14 a window
    ] {
        let x = rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0);
        let w = rng.uniform_vec(s.w_shape().iter().product(), -1.0, 1.0);
        let b = rng.uniform_vec(s.c_out, -1.0, 1.0);
        for relu in [false, true] {
            let tx = Tensor::from_f32(gpu, "x", &s.x_shape(), &x).unwrap();
            let tw = Tensor::from_f32(gpu, "w", &s.w_shape(), &w).unwrap();
            let tb = Tensor::from_f32(gpu, "b", &[s.c_out], &b).unwrap();
            let y = Tensor::zeros(gpu, "y", &s.y_shape()).unwrap();
            let ds = conv2d_forward_windowed(gpu, &s, &tx, &tw, Some(&tb), relu, &y)
                .unwrap()
                .expect("these shapes fit windows");
            assert!(
                ds.len() >= min_dispatches.min(s.batch),
                "{s:?}: {} dispatches",
                ds.len()
            );
            run_all(gpu, &ds).unwrap();
            let want = conv2d_forward_ref(&s, &f64s(&x), &f64s(&w), Some(&f64s(&b)), relu);
            let taps = (s.c_in * s.kh * s.kw) as f64;
            assert_close(
                &format!("windowed conv2d_forward {s:?} relu {relu}"),
                &y.to_f32(gpu).unwrap(),
                &want,
                1e-4,
                1e-6 * taps,
            );
        }
    }
}

#[test]
fn fused_conv_relu_pool_matches_reference() {
    let Some(gpu) = gpu() else { return };
    if !gpu.subgroups() {
        eprintln!(
            "fused_conv_relu_pool_matches_reference: NOT TESTED here: {} has no subgroups of \
             at least 8 lanes, so the engine never runs the fused kernel on it",
            gpu.describe()
        );
        return;
    }
    let mut rng = Rng::new(14);
    for (s, pool, stride) in [
        (conv(128, 1, 28, 28, 32, 3, Padding::Valid), 2, 2), // the seed CNN
        (conv(3, 2, 9, 8, 11, 3, Padding::Same), 3, 2),      // overlapping windows
        (conv(5, 3, 11, 13, 5, 2, Padding::Valid), 2, 3),    // odd edges left over
        (conv(1, 1, 2, 2, 1, 1, Padding::Valid), 2, 2),
    ] {
        let [b, co, oh, ow] = s.y_shape();
        let ps = PoolSpec {
            batch: b,
            channels: co,
            h: oh,
            w: ow,
            pool,
            stride,
        };
        let x = rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0);
        let w = rng.uniform_vec(s.w_shape().iter().product(), -1.0, 1.0);
        let bias = rng.uniform_vec(co, -0.5, 0.5);
        let tx = Tensor::from_f32(gpu, "x", &s.x_shape(), &x).unwrap();
        let tw = Tensor::from_f32(gpu, "w", &s.w_shape(), &w).unwrap();
        let tb = Tensor::from_f32(gpu, "b", &[co], &bias).unwrap();
        let y = Tensor::zeros(gpu, "y", &ps.y_shape()).unwrap();
        let arg = Tensor::zeros(gpu, "argmax", &ps.y_shape()).unwrap();
        let ds = conv2d_relu_pool_windowed(gpu, &s, &ps, &tx, &tw, &tb, &y, &arg)
            .unwrap()
            .expect("these shapes fit windows");
        run_all(gpu, &ds).unwrap();
        let (x, w, bias) = (f64s(&x), f64s(&w), f64s(&bias));
        let (want_y, want_arg) = conv2d_relu_pool_ref(&s, &ps, &x, &w, &bias);
        let tol = 1e-6 * (s.c_in * s.kh * s.kw) as f64;
        assert_close(
            &format!("fused conv relu pool {s:?} pool {pool} stride {stride}"),
            &y.to_f32(gpu).unwrap(),
            &want_y,
            1e-4,
            tol,
        );
        // The argmax must point into its window at a value equal to the max (ties between
        // values closer than f32 rounding may pick either); nearly always the same one.
        let z = conv2d_forward_ref(&s, &x, &w, Some(&bias), true);
        let got_arg = arg.to_u32(gpu).unwrap();
        let (ph, pw) = ps.out_hw();
        let mut same = 0;
        for (o, (&g, &want)) in got_arg.iter().zip(&want_arg).enumerate() {
            let (py, px, plane) = ((o / pw) % ph, o % pw, o / (ph * pw));
            let (gy, gx) = (g as usize / ow, g as usize % ow);
            assert!(
                (py * stride..py * stride + pool).contains(&gy)
                    && (px * stride..px * stride + pool).contains(&gx),
                "{s:?}: argmax {g} of pooled pixel {o} outside its window"
            );
            let at = plane * oh * ow + g as usize;
            assert!(
                (z[at] - want_y[o]).abs() <= 1e-4 * want_y[o].abs() + tol,
                "{s:?} {o}"
            );
            same += (g == want) as usize;
        }
        assert!(
            same * 100 >= got_arg.len() * 99,
            "{s:?}: {same} of {} argmax agree",
            got_arg.len()
        );
    }
}

/// A conv with ReLU and max pool, its parameters and the upstream gradient: the fused
/// forward on the GPU, then the fused dweight/dbias summed over their partial rows.
struct FusedCase {
    s: Conv2dSpec,
    ps: PoolSpec,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    g: Vec<f32>,
}

impl FusedCase {
    fn new(rng: &mut Rng, s: Conv2dSpec, pool: usize, stride: usize) -> Self {
        let [b, co, oh, ow] = s.y_shape();
        let ps = PoolSpec {
            batch: b,
            channels: co,
            h: oh,
            w: ow,
            pool,
            stride,
        };
        let numel = |shape: &[usize]| shape.iter().product::<usize>();
        FusedCase {
            x: rng.uniform_vec(numel(&s.x_shape()), -1.0, 1.0),
            w: rng.uniform_vec(numel(&s.w_shape()), -1.0, 1.0),
            bias: rng.uniform_vec(co, -0.5, 0.5),
            g: rng.uniform_vec(numel(&ps.y_shape()), -1.0, 1.0),
            s,
            ps,
        }
    }

    /// (dweight, dbias, pooled y, argmax) from the GPU.
    fn gpu_grads(&self, gpu: &shadergrad::gpu::Gpu) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>) {
        let (s, ps) = (&self.s, &self.ps);
        let up = |shape: &[usize], v: &[f32]| Tensor::from_f32(gpu, "t", shape, v).unwrap();
        let (tx, tw, tb) = (
            up(&s.x_shape(), &self.x),
            up(&s.w_shape(), &self.w),
            up(&[s.c_out], &self.bias),
        );
        let tg = up(&ps.y_shape(), &self.g);
        let y = Tensor::zeros(gpu, "y", &ps.y_shape()).unwrap();
        let arg = Tensor::zeros(gpu, "argmax", &ps.y_shape()).unwrap();
        let rows = relu_pool_weight_rows(gpu, s, ps).unwrap();
        let part = Tensor::zeros(gpu, "part", &[rows, s.part_row()]).unwrap();
        let mut ds = conv2d_relu_pool_windowed(gpu, s, ps, &tx, &tw, &tb, &y, &arg)
            .unwrap()
            .unwrap();
        ds.extend(
            conv2d_relu_pool_backward_weight_windowed(gpu, s, ps, &tx, &tg, &y, &arg, &part)
                .unwrap()
                .expect("these shapes fit windows"),
        );
        run_all(gpu, &ds).unwrap();
        let part = part.to_f32(gpu).unwrap();
        let width = s.part_row();
        let n_w = width - s.c_out;
        let col =
            |c: usize| -> f32 { (0..rows).map(|r| part[r * width + c] as f64).sum::<f64>() as f32 };
        (
            (0..n_w).map(col).collect(),
            (n_w..width).map(col).collect(),
            y.to_f32(gpu).unwrap(),
            arg.to_u32(gpu).unwrap(),
        )
    }

    /// sum(g * pool(relu(conv(x, w) + bias))) in f64.
    fn loss(&self, w: &[f64], bias: &[f64]) -> f64 {
        let (y, _) = conv2d_relu_pool_ref(&self.s, &self.ps, &f64s(&self.x), w, bias);
        y.iter().zip(&self.g).map(|(a, &b)| a * b as f64).sum()
    }
}

#[test]
fn fused_conv_relu_pool_backward_weight_matches_reference() {
    let Some(gpu) = gpu() else { return };
    if !gpu.subgroups() {
        eprintln!(
            "fused_conv_relu_pool_backward_weight_matches_reference: NOT TESTED here: {} has \
             no subgroups of at least 8 lanes, so the engine never runs the fused kernels on it",
            gpu.describe()
        );
        return;
    }
    let mut rng = Rng::new(15);
    for (s, pool, stride) in [
        (conv(128, 1, 28, 28, 32, 3, Padding::Valid), 2, 2), // the seed CNN: 43 dispatches
        (conv(3, 2, 9, 8, 11, 3, Padding::Same), 3, 2),
        (conv(5, 3, 11, 13, 5, 2, Padding::Valid), 2, 3),
        (conv(2, 1, 9, 9, 3, 4, Padding::Valid), 2, 2), // 16 taps: two tap groups
        (conv(1, 1, 2, 2, 1, 1, Padding::Valid), 2, 2),
    ] {
        let case = FusedCase::new(&mut rng, s, pool, stride);
        let (dw, db, y, arg) = case.gpu_grads(gpu);
        let (want_dw, want_db) = conv2d_relu_pool_backward_weight_ref(
            &s,
            &case.ps,
            &f64s(&case.x),
            &f64s(&case.g),
            &f64s(&y),
            &arg,
        );
        let terms = (s.batch * case.ps.y_shape()[2] * case.ps.y_shape()[3]) as f64;
        let what = format!("fused dweight {s:?} pool {pool} stride {stride}");
        assert_close(&what, &dw, &want_dw, 1e-4, 1e-6 * terms);
        assert_close(
            &format!("fused dbias {s:?}"),
            &db,
            &want_db,
            1e-4,
            1e-6 * terms,
        );
    }
}

#[test]
fn fused_conv_relu_pool_gradients_pass_finite_differences() {
    let Some(gpu) = gpu() else { return };
    if !gpu.subgroups() {
        eprintln!(
            "fused_conv_relu_pool_gradients_pass_finite_differences: NOT TESTED here: {} has \
             no subgroups of at least 8 lanes",
            gpu.describe()
        );
        return;
    }
    let mut rng = Rng::new(16);
    let s = Conv2dSpec {
        batch: 2,
        c_in: 2,
        h: 7,
        w: 6,
        c_out: 3,
        kh: 3,
        kw: 3,
        padding: Padding::Same,
        stride: 1,
    };
    let case = FusedCase::new(&mut rng, s, 2, 2);
    let (dw, db, _, _) = case.gpu_grads(gpu);
    let (w, bias) = (f64s(&case.w), f64s(&case.bias));
    let eps = 1e-5;
    let numeric = |which: usize, i: usize| {
        let (mut wp, mut bp) = (w.clone(), bias.clone());
        let (mut wm, mut bm) = (w.clone(), bias.clone());
        if which == 0 {
            wp[i] += eps;
            wm[i] -= eps;
        } else {
            bp[i] += eps;
            bm[i] -= eps;
        }
        (case.loss(&wp, &bp) - case.loss(&wm, &bm)) / (2.0 * eps)
    };
    let want_dw: Vec<f64> = (0..w.len()).map(|i| numeric(0, i)).collect();
    let want_db: Vec<f64> = (0..bias.len()).map(|i| numeric(1, i)).collect();
    assert_close(
        "fused dweight vs finite differences",
        &dw,
        &want_dw,
        1e-3,
        1e-4,
    );
    assert_close(
        "fused dbias vs finite differences",
        &db,
        &want_db,
        1e-3,
        1e-4,
    );
}
