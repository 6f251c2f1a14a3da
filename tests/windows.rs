//! The uniform-window matmul (matmul_subgroup.wgsl's matmul_window) and the transpose that
//! feeds it: block planning without a GPU, then each against its f64 reference on shapes
//! that cut into several row, column and K blocks, with odd sizes and misaligned windows.

mod common;

use common::{assert_close, gpu};
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::matmul::*;
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
    let conv = |batch, c_in, h, w, c_out, k, padding| Conv2dSpec {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh: k,
        kw: k,
        padding,
    };
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
