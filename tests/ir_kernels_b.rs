//! The graph IR's part-B kernels against their CPU references (f64) on random data and
//! awkward shapes (1, primes, rows longer than a workgroup, a row of 1), and
//! finite-difference checks of every backward rule (on the f64 references, which the GPU
//! backward kernels are then held to).

mod common;

use common::{assert_close, gpu};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::embedding::*;
use shadergrad::kernels::layernorm::*;
use shadergrad::kernels::pool::*;
use shadergrad::kernels::random::*;
use shadergrad::kernels::softmax::*;
use shadergrad::kernels::{f64s, run};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;

fn upload(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(gpu, "test input", shape, data).unwrap()
}

fn zeros(gpu: &Gpu, shape: &[usize]) -> Tensor {
    Tensor::zeros(gpu, "test output", shape).unwrap()
}

/// Central differences of the scalar `f` at `x` against the analytic gradient `grad`, at
/// up to 40 coordinates spread over x: |fd - grad| <= 1e-6 + 1e-5 |grad|.
fn fd_check(what: &str, f: impl Fn(&[f64]) -> f64, x: &[f64], grad: &[f64]) {
    let h = 1e-6;
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let mut xp = x.to_vec();
        xp[i] += h;
        let mut xm = x.to_vec();
        xm[i] -= h;
        let fd = (f(&xp) - f(&xm)) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() <= 1e-6 + 1e-5 * grad[i].abs(),
            "{what}: d/dx[{i}] finite difference {fd} vs backward {}",
            grad[i]
        );
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

// ---- softmax -------------------------------------------------------------------------------

fn softmax_specs() -> Vec<SoftmaxSpec> {
    let s = |rows, cols, causal, log, lanes| SoftmaxSpec {
        rows,
        cols,
        causal,
        log,
        lanes,
    };
    vec![
        s(1, 1, None, false, 0),
        s(1, 7, None, false, 0),
        s(3, 1, None, true, 0),
        s(5, 13, None, false, 1),
        s(5, 13, None, true, 8),
        s(37, 300, None, false, 0),
        s(37, 300, None, false, 256),
        s(7, 1000, None, true, 32),
        s(2 * 17, 17, Some(17), false, 0),
        s(2 * 17, 17, Some(17), false, 16),
        s(3 * 4 * 64, 64, Some(64), false, 0),
        s(6, 5, Some(3), false, 4),
        s(131, 65, None, false, 64),
    ]
}

#[test]
fn softmax_rows_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(11);
    for s in softmax_specs() {
        let n = s.rows * s.cols;
        let mut x = rng.uniform_vec(n, -4.0, 4.0);
        x[0] = 90.0; // large logits stay finite
        let dy = rng.uniform_vec(n, -1.0, 1.0);
        let (tx, tdy) = (upload(gpu, &[s.rows, s.cols], &x), upload(gpu, &[n], &dy));
        let tdy = tdy.view(0, &[s.rows, s.cols]);
        let (y, dx) = (zeros(gpu, &[s.rows, s.cols]), zeros(gpu, &[s.rows, s.cols]));
        let f = softmax_rows(gpu, &s, &tx, &y).unwrap();
        let b = softmax_rows_backward(gpu, &s, &y, &tdy, &dx).unwrap();
        run(gpu, &[&f, &b]).unwrap();
        let want_y = softmax_rows_ref(&s, &f64s(&x));
        let got_y = y.to_f32(gpu).unwrap();
        let what = format!("{s:?}");
        assert_close(&format!("{what} y"), &got_y, &want_y, 1e-5, 1e-6);
        assert_close(
            &format!("{what} dx"),
            &dx.to_f32(gpu).unwrap(),
            &softmax_rows_backward_ref(&s, &f64s(&got_y), &f64s(&dy)),
            1e-4,
            1e-6,
        );
        if let Some(t) = s.causal {
            for (i, &v) in got_y.iter().enumerate() {
                let (r, j) = (i / s.cols, i % s.cols);
                if j > r % t {
                    assert_eq!(v, 0.0, "{what}: masked y[{r}, {j}]");
                }
            }
        }
    }
}

#[test]
fn softmax_rows_backward_matches_finite_differences() {
    let mut rng = Rng::new(12);
    for s in softmax_specs()
        .into_iter()
        .filter(|s| s.rows * s.cols <= 2000)
    {
        let x = f64s(&rng.uniform_vec(s.rows * s.cols, -3.0, 3.0));
        let w = f64s(&rng.uniform_vec(s.rows * s.cols, -1.0, 1.0));
        // L = sum w * softmax(x): dL/dy = w.
        let y = softmax_rows_ref(&s, &x);
        let dx = softmax_rows_backward_ref(&s, &y, &w);
        fd_check(
            &format!("{s:?}"),
            |x| dot(&softmax_rows_ref(&s, x), &w),
            &x,
            &dx,
        );
    }
}

#[test]
fn softmax_rows_is_deterministic_and_refuses_bad_specs() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(13);
    let s = SoftmaxSpec {
        lanes: 64,
        ..SoftmaxSpec::new(9, 333)
    };
    let x = upload(gpu, &[9, 333], &rng.uniform_vec(9 * 333, -3.0, 3.0));
    let runs: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let y = zeros(gpu, &[9, 333]);
            run(gpu, &[&softmax_rows(gpu, &s, &x, &y).unwrap()]).unwrap();
            y.to_f32(gpu).unwrap()
        })
        .collect();
    assert_eq!(
        runs[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        runs[1].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let y = zeros(gpu, &[9, 333]);
    let bad = [
        SoftmaxSpec::new(9, 332),
        SoftmaxSpec {
            causal: Some(4),
            ..SoftmaxSpec::new(9, 333)
        },
        SoftmaxSpec {
            causal: Some(9),
            log: true,
            ..SoftmaxSpec::new(9, 333)
        },
        SoftmaxSpec {
            lanes: 3,
            ..SoftmaxSpec::new(9, 333)
        },
        SoftmaxSpec {
            lanes: 1,
            ..SoftmaxSpec::new(1, 9 * 333)
        },
    ];
    for s in bad {
        let err = softmax_rows(gpu, &s, &x, &y).err();
        assert!(err.is_some(), "{s:?} accepted");
        eprintln!("{s:?}: {}", err.unwrap());
    }
    // One row of 20,000 columns: one lane would pass the loop budget, so lanes are added.
    let long = SoftmaxSpec::new(1, 20_000);
    let xl = rng.uniform_vec(20_000, -3.0, 3.0);
    let (tx, y) = (upload(gpu, &[1, 20_000], &xl), zeros(gpu, &[1, 20_000]));
    run(gpu, &[&softmax_rows(gpu, &long, &tx, &y).unwrap()]).unwrap();
    assert_close(
        "softmax 1 x 20000",
        &y.to_f32(gpu).unwrap(),
        &softmax_rows_ref(&long, &f64s(&xl)),
        1e-4,
        1e-9,
    );
}

// ---- token cross-entropy -------------------------------------------------------------------

#[test]
fn token_cross_entropy_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(14);
    for (rows, classes, lanes) in [
        (1, 1, 0),
        (1, 65, 0),
        (7, 3, 4),
        (64 * 3, 65, 0),
        (13, 300, 256),
        (129, 256, 32),
        (5, 1, 1),
    ] {
        let s = CrossEntropySpec {
            rows,
            classes,
            lanes,
        };
        let mut z = rng.uniform_vec(rows * classes, -5.0, 5.0);
        z[0] = 80.0;
        let mut target: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
        if rows > 2 {
            target[1] = classes as u32 + 5; // no class: loss 0, gradient 0
        }
        let g = 0.37; // the incoming gradient: the rule must chain it
        let tz = upload(gpu, &[rows, classes], &z);
        let tt = Tensor::from_u32(gpu, "target", &[rows], &target).unwrap();
        let tg = upload(gpu, &[1], &[g]);
        let (loss, lse, dz) = (
            zeros(gpu, &[rows]),
            zeros(gpu, &[rows]),
            zeros(gpu, &[rows, classes]),
        );
        let f = token_cross_entropy(gpu, &s, &tz, &tt, &loss, &lse).unwrap();
        let b = token_cross_entropy_backward(gpu, &s, &tz, &tt, &lse, &tg, &dz).unwrap();
        run(gpu, &[&f, &b]).unwrap();
        let (want_loss, want_lse) = token_cross_entropy_ref(classes, &f64s(&z), &target);
        let what = format!("{s:?}");
        assert_close(
            &format!("{what} loss"),
            &loss.to_f32(gpu).unwrap(),
            &want_loss,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{what} lse"),
            &lse.to_f32(gpu).unwrap(),
            &want_lse,
            1e-6,
            1e-5,
        );
        let want_dz = token_cross_entropy_backward_ref(classes, &f64s(&z), &target, g as f64);
        assert_close(
            &format!("{what} dz"),
            &dz.to_f32(gpu).unwrap(),
            &want_dz,
            1e-4,
            1e-7,
        );
    }
}

#[test]
fn token_cross_entropy_backward_matches_finite_differences() {
    let mut rng = Rng::new(15);
    for (rows, classes) in [(1, 1), (3, 7), (11, 5)] {
        let z = f64s(&rng.uniform_vec(rows * classes, -3.0, 3.0));
        let mut target: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
        target[0] = classes as u32; // no class
        let g = -1.7;
        // L = g * mean_n loss[n]
        let loss = |z: &[f64]| {
            let (l, _) = token_cross_entropy_ref(classes, z, &target);
            g * l.iter().sum::<f64>() / rows as f64
        };
        let dz = token_cross_entropy_backward_ref(classes, &z, &target, g);
        fd_check(&format!("xent {rows}x{classes}"), loss, &z, &dz);
    }
}

#[test]
fn token_cross_entropy_refuses_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let s = CrossEntropySpec {
        rows: 4,
        classes: 5,
        lanes: 0,
    };
    let z = zeros(gpu, &[4, 5]);
    let t = Tensor::from_u32(gpu, "t", &[3], &[0, 1, 2]).unwrap();
    let (l, lse) = (zeros(gpu, &[4]), zeros(gpu, &[4]));
    let e = token_cross_entropy(gpu, &s, &z, &t, &l, &lse)
        .err()
        .unwrap();
    assert!(e.to_string().contains("token_xent_forward"), "{e}");
}

// ---- layer norm ----------------------------------------------------------------------------

#[test]
fn layer_norm_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(21);
    for (rows, cols, lanes) in [
        (1, 1, 0),
        (1, 7, 0),
        (3, 1, 4),
        (5, 13, 1),
        (64, 128, 0),
        (65, 128, 32),
        (129, 300, 256),
        (64 * 3 + 1, 31, 0),
        (17, 1000, 64),
    ] {
        let s = LayerNormSpec {
            lanes,
            ..LayerNormSpec::new(rows, cols)
        };
        let n = rows * cols;
        let mut x = rng.uniform_vec(n, -2.0, 2.0);
        for v in x.iter_mut().take(cols) {
            *v += 50.0; // a large offset: the two-pass variance must not cancel
        }
        let gamma = rng.uniform_vec(cols, 0.5, 1.5);
        let beta = rng.uniform_vec(cols, -1.0, 1.0);
        let dy = rng.uniform_vec(n, -1.0, 1.0);
        let (tx, tg, tb, tdy) = (
            upload(gpu, &[rows, cols], &x),
            upload(gpu, &[cols], &gamma),
            upload(gpu, &[cols], &beta),
            upload(gpu, &[rows, cols], &dy),
        );
        let (y, dx) = (zeros(gpu, &[rows, cols]), zeros(gpu, &[rows, cols]));
        let (mean, rstd) = (zeros(gpu, &[rows]), zeros(gpu, &[rows]));
        // dgamma and dbeta as neighbouring views of one buffer, as in a flat gradient buffer.
        let at = cols.next_multiple_of(64); // 256-byte aligned
        let grads = zeros(gpu, &[at + cols]);
        let (dgamma, dbeta) = (grads.view(0, &[cols]), grads.view(at, &[cols]));
        let partial = zeros(gpu, &[s.partial_len().max(1)]);
        let stats = LayerNormStats {
            mean: &mean,
            rstd: &rstd,
        };
        let pgrads = LayerNormParamGrads {
            dgamma: &dgamma,
            dbeta: &dbeta,
            partial: (s.partial_len() > 0).then_some(&partial),
        };
        let mut ds = vec![
            layer_norm(gpu, &s, &tx, &tg, &tb, &y, &stats).unwrap(),
            layer_norm_backward_input(gpu, &s, &tx, &tg, &stats, &tdy, &dx).unwrap(),
        ];
        ds.extend(layer_norm_backward_params(gpu, &s, &tx, &stats, &tdy, &pgrads).unwrap());
        run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
        let (x64, g64) = (f64s(&x), f64s(&gamma));
        let (want_y, want_mean, want_rstd) = layer_norm_ref(&s, &x64, &g64, &f64s(&beta));
        let (want_dx, want_dg, want_db) = layer_norm_backward_ref(&s, &x64, &g64, &f64s(&dy));
        let what = format!("{s:?}");
        let y_got = y.to_f32(gpu).unwrap();
        assert_close(&format!("{what} y"), &y_got, &want_y, 1e-4, 1e-4);
        assert_close(
            &format!("{what} mean"),
            &mean.to_f32(gpu).unwrap(),
            &want_mean,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{what} rstd"),
            &rstd.to_f32(gpu).unwrap(),
            &want_rstd,
            1e-3,
            1e-5,
        );
        assert_close(
            &format!("{what} dx"),
            &dx.to_f32(gpu).unwrap(),
            &want_dx,
            1e-3,
            1e-4,
        );
        let atol = 1e-5 * rows as f64;
        assert_close(
            &format!("{what} dgamma"),
            &dgamma.to_f32(gpu).unwrap(),
            &want_dg,
            1e-4,
            atol,
        );
        assert_close(
            &format!("{what} dbeta"),
            &dbeta.to_f32(gpu).unwrap(),
            &want_db,
            1e-4,
            atol,
        );
    }
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(22);
    for (rows, cols) in [(1, 1), (1, 5), (4, 7), (3, 16)] {
        let s = LayerNormSpec::new(rows, cols);
        let x = f64s(&rng.uniform_vec(rows * cols, -2.0, 2.0));
        let gamma = f64s(&rng.uniform_vec(cols, 0.5, 1.5));
        let beta = f64s(&rng.uniform_vec(cols, -1.0, 1.0));
        let w = f64s(&rng.uniform_vec(rows * cols, -1.0, 1.0));
        let (dx, dgamma, dbeta) = layer_norm_backward_ref(&s, &x, &gamma, &w);
        let what = format!("{s:?}");
        let l = |x: &[f64], g: &[f64], b: &[f64]| dot(&layer_norm_ref(&s, x, g, b).0, &w);
        fd_check(&format!("{what} dx"), |x| l(x, &gamma, &beta), &x, &dx);
        fd_check(
            &format!("{what} dgamma"),
            |g| l(&x, g, &beta),
            &gamma,
            &dgamma,
        );
        fd_check(
            &format!("{what} dbeta"),
            |b| l(&x, &gamma, b),
            &beta,
            &dbeta,
        );
    }
}

#[test]
fn layer_norm_refuses_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let s = LayerNormSpec::new(200, 8);
    let x = zeros(gpu, &[200, 8]);
    let (mean, rstd, g) = (zeros(gpu, &[200]), zeros(gpu, &[200]), zeros(gpu, &[8]));
    let stats = LayerNormStats {
        mean: &mean,
        rstd: &rstd,
    };
    let wrong = zeros(gpu, &[7]);
    assert!(layer_norm(gpu, &s, &x, &wrong, &g, &x.clone(), &stats).is_err());
    // 200 rows make 4 blocks: the partial scratch is required.
    let grads = LayerNormParamGrads {
        dgamma: &g,
        dbeta: &wrong,
        partial: None,
    };
    let e = layer_norm_backward_params(gpu, &s, &x, &stats, &x, &grads)
        .err()
        .unwrap();
    eprintln!("{e}");
    let grads = LayerNormParamGrads {
        dgamma: &g,
        dbeta: &g.clone(),
        partial: None,
    };
    let e = layer_norm_backward_params(gpu, &s, &x, &stats, &x, &grads)
        .err()
        .unwrap();
    assert!(e.to_string().contains("partial_len"), "{e}");
}

// ---- embedding -----------------------------------------------------------------------------

/// (table, idx, dy, y, dtable, scratch) on the GPU for `idx` of shape [B, T].
fn embedding_case(
    gpu: &Gpu,
    rng: &mut Rng,
    vocab: usize,
    dim: usize,
    bt: [usize; 2],
    idx: &[u32],
) -> (Vec<f32>, Vec<f32>, [Tensor; 6]) {
    let n = bt[0] * bt[1];
    let table = rng.uniform_vec(vocab * dim, -1.0, 1.0);
    let dy = rng.uniform_vec(n * dim, -1.0, 1.0);
    let tensors = [
        upload(gpu, &[vocab, dim], &table),
        Tensor::from_u32(gpu, "idx", &bt, idx).unwrap(),
        upload(gpu, &[bt[0], bt[1], dim], &dy),
        zeros(gpu, &[bt[0], bt[1], dim]),
        zeros(gpu, &[vocab, dim]),
        zeros(gpu, &[embedding_scratch_len(vocab, n)]),
    ];
    (table, dy, tensors)
}

#[test]
fn embedding_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(31);
    for (vocab, dim, bt) in [
        (1, 1, [1, 1]),
        (7, 3, [1, 13]),
        (65, 128, [3, 64]),
        (5, 7, [4, 250]),      // many repeats of each row
        (300, 1, [2, 17]),     // most rows unused
        (512, 256, [64, 128]), // the size the brief names
    ] {
        let n = bt[0] * bt[1];
        let mut idx: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        if n > 3 {
            idx[1] = vocab as u32; // out of range: zero row, no gradient
            idx[2] = u32::MAX;
        }
        let (table, dy, [tt, ti, tdy, y, dtable, scratch]) =
            embedding_case(gpu, &mut rng, vocab, dim, bt, &idx);
        let mut ds = vec![embedding(gpu, &tt, &ti, &y).unwrap()];
        ds.extend(embedding_backward(gpu, &ti, &tdy, &scratch, &dtable).unwrap());
        run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
        let what = format!("V={vocab} D={dim} N={n}");
        assert_close(
            &format!("{what} y"),
            &y.to_f32(gpu).unwrap(),
            &embedding_ref(&f64s(&table), dim, &idx),
            0.0,
            0.0,
        );
        let got = dtable.to_f32(gpu).unwrap();
        let want = embedding_backward_ref(vocab, dim, &idx, &f64s(&dy));
        assert_close(&format!("{what} dtable"), &got, &want, 1e-5, 1e-5);
        // Reruns are bit-identical (the sum order is fixed).
        run(gpu, &ds.iter().collect::<Vec<_>>()).unwrap();
        let again = dtable.to_f32(gpu).unwrap();
        assert!(
            got.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: rerun differs"
        );
    }
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let mut rng = Rng::new(32);
    let (vocab, dim) = (6, 3);
    let idx = [0u32, 5, 5, 2, 9, 0, 5];
    let table = f64s(&rng.uniform_vec(vocab * dim, -1.0, 1.0));
    let w = f64s(&rng.uniform_vec(idx.len() * dim, -1.0, 1.0));
    let dtable = embedding_backward_ref(vocab, dim, &idx, &w);
    fd_check(
        "embedding",
        |t| dot(&embedding_ref(t, dim, &idx), &w),
        &table,
        &dtable,
    );
}

#[test]
fn embedding_refuses_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let table = zeros(gpu, &[10, 4]);
    let idx = Tensor::from_u32(gpu, "idx", &[3], &[0, 1, 2]).unwrap();
    for y_shape in [&[3, 5][..], &[4, 4], &[12]] {
        let y = zeros(gpu, y_shape);
        let e = embedding(gpu, &table, &idx, &y).err();
        assert!(e.is_some(), "y {y_shape:?} accepted");
    }
    let dy = zeros(gpu, &[3, 4]);
    let small = zeros(gpu, &[22]);
    let e = embedding_backward(gpu, &idx, &dy, &small, &table)
        .err()
        .unwrap();
    assert!(e.to_string().contains("embedding_scratch_len"), "{e}");
    let big = Tensor::from_u32(gpu, "idx", &[20_000], &vec![0; 20_000]).unwrap();
    let (dy, scratch) = (
        zeros(gpu, &[20_000, 4]),
        zeros(gpu, &[embedding_scratch_len(10, 20_000)]),
    );
    let e = embedding_backward(gpu, &big, &dy, &scratch, &table)
        .err()
        .unwrap();
    eprintln!("{e}");
}

/// Measurement, not a test: `cargo test --release --test ir_kernels_b -- --ignored
/// --nocapture timings`. Each figure waits for the GPU.
#[test]
#[ignore]
fn timings() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(33);
    let time = |what: &str, ds: &[shadergrad::kernels::Dispatch]| {
        let refs: Vec<_> = ds.iter().collect();
        run(gpu, &refs).unwrap(); // warm-up (pipelines, first touch)
        let reps = 5;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            run(gpu, &refs).unwrap();
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("{what}: {ms:.2} ms");
    };
    let (vocab, dim, bt) = (512, 256, [64, 128]);
    let n = bt[0] * bt[1];
    let idx: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    let (_, _, [tt, ti, tdy, y, dtable, scratch]) =
        embedding_case(gpu, &mut rng, vocab, dim, bt, &idx);
    time(
        &format!("embedding forward V={vocab} D={dim} N={n}"),
        &[embedding(gpu, &tt, &ti, &y).unwrap()],
    );
    let ds = embedding_backward(gpu, &ti, &tdy, &scratch, &dtable).unwrap();
    time(
        &format!("embedding backward (sort + gather) V={vocab} D={dim} N={n}"),
        &ds,
    );
    let [sort, gather] = <[_; 2]>::try_from(ds).ok().unwrap();
    time("  of which the sort", &[sort]);
    time("  of which the gather", &[gather]);
    // Row kernels at small-GPT shapes, one lane per row (the CPU default) vs 32 lanes.
    for lanes in [1, 32] {
        let s = SoftmaxSpec {
            causal: Some(64),
            lanes,
            ..SoftmaxSpec::new(32 * 4 * 64, 64)
        };
        let x = upload(gpu, &[s.rows, 64], &rng.uniform_vec(s.rows * 64, -3.0, 3.0));
        let y = zeros(gpu, &[s.rows, 64]);
        time(
            &format!("causal softmax [{} x 64], {lanes} lanes per row", s.rows),
            &[softmax_rows(gpu, &s, &x, &y).unwrap()],
        );
        let ln = LayerNormSpec {
            lanes,
            ..LayerNormSpec::new(8192, 128)
        };
        let (xl, yl) = (zeros(gpu, &[8192, 128]), zeros(gpu, &[8192, 128]));
        let (g, b) = (zeros(gpu, &[128]), zeros(gpu, &[128]));
        let (mean, rstd) = (zeros(gpu, &[8192]), zeros(gpu, &[8192]));
        let stats = LayerNormStats {
            mean: &mean,
            rstd: &rstd,
        };
        time(
            &format!("layer_norm [8192 x 128], {lanes} lanes per row"),
            &[layer_norm(gpu, &ln, &xl, &g, &b, &yl, &stats).unwrap()],
        );
        let xs = CrossEntropySpec {
            rows: 8192,
            classes: 65,
            lanes,
        };
        let z = upload(gpu, &[8192, 65], &rng.uniform_vec(8192 * 65, -3.0, 3.0));
        let t = Tensor::from_u32(gpu, "t", &[8192], &vec![3; 8192]).unwrap();
        let (loss, lse) = (zeros(gpu, &[8192]), zeros(gpu, &[8192]));
        time(
            &format!("token cross-entropy [8192 x 65], {lanes} lanes per row"),
            &[token_cross_entropy(gpu, &xs, &z, &t, &loss, &lse).unwrap()],
        );
    }
    let zero_idx = vec![0u32; n];
    let ti0 = Tensor::from_u32(gpu, "idx", &bt, &zero_idx).unwrap();
    time(
        &format!("embedding backward, every index 0, V={vocab} D={dim} N={n}"),
        &embedding_backward(gpu, &ti0, &tdy, &scratch, &dtable).unwrap(),
    );
}

// ---- random numbers ------------------------------------------------------------------------

#[test]
fn philox_matches_known_answers() {
    // Random123's kat_vectors for philox4x32_10.
    assert_eq!(
        philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn random_uniform_is_bit_exact_and_uniform() {
    let Some(gpu) = gpu() else { return };
    for (n, seed, counter) in [
        (1, 0, 0),
        (3, 42, 1),
        (5, u64::MAX, u64::MAX),
        (1023, 7, 1 << 40),
        (200_003, 42, 3),
    ] {
        let spec = RandomSpec { seed, counter };
        let y = zeros(gpu, &[n]);
        run(gpu, &[&random_uniform(gpu, &spec, &y).unwrap()]).unwrap();
        let got = y.to_f32(gpu).unwrap();
        assert_eq!(
            bits(&got),
            bits(&random_uniform_ref(&spec, n)),
            "{spec:?} n={n}"
        );
        assert!(got.iter().all(|&u| (0.0..1.0).contains(&u)));
        if n > 100_000 {
            // Mean 1/2 and variance 1/12, within 5 standard errors.
            let m = got.iter().map(|&u| u as f64).sum::<f64>() / n as f64;
            let v = got.iter().map(|&u| (u as f64 - m).powi(2)).sum::<f64>() / n as f64;
            let se = (1.0f64 / 12.0 / n as f64).sqrt();
            assert!((m - 0.5).abs() < 5.0 * se, "mean {m}");
            // The sample variance's standard error: sqrt((mu4 - sigma^4) / n).
            let se_v = ((1.0f64 / 80.0 - 1.0 / 144.0) / n as f64).sqrt();
            assert!((v - 1.0 / 12.0).abs() < 5.0 * se_v, "variance {v}");
        }
    }
}

#[test]
fn dropout_mask_is_bit_exact_and_unbiased() {
    let Some(gpu) = gpu() else { return };
    let n = 100_001;
    for p in [0.0f32, 0.1, 0.5, 0.9] {
        let spec = RandomSpec {
            seed: 1234,
            counter: 0,
        };
        let mask = zeros(gpu, &[n]);
        let d = dropout_mask(gpu, &spec, p, &mask).unwrap();
        run(gpu, &[&d]).unwrap();
        let first = mask.to_f32(gpu).unwrap();
        assert_eq!(bits(&first), bits(&dropout_mask_ref(&spec, p, n)), "p={p}");
        let kept = first.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
        let se = (p as f64 * (1.0 - p as f64) / n as f64).sqrt();
        assert!(
            (kept - (1.0 - p as f64)).abs() <= 5.0 * se + 1e-9,
            "p={p}: kept {kept}"
        );
        let mean = first.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
        assert!(
            (mean - 1.0).abs() < 5.0 * se / (1.0 - p as f64) + 1e-6,
            "p={p}: E[mask] {mean}"
        );
        // The executor rewrites the counter between steps: same dispatch, fresh numbers.
        write_counter(gpu, &d, 17);
        run(gpu, &[&d]).unwrap();
        let next = mask.to_f32(gpu).unwrap();
        let spec17 = RandomSpec {
            counter: 17,
            ..spec
        };
        assert_eq!(
            bits(&next),
            bits(&dropout_mask_ref(&spec17, p, n)),
            "p={p} counter 17"
        );
        if p > 0.0 {
            assert_ne!(bits(&next), bits(&first), "p={p}: counter changes nothing");
        }
    }
    let mask = zeros(gpu, &[4]);
    let spec = RandomSpec {
        seed: 0,
        counter: 0,
    };
    for p in [1.0, -0.1, f32::NAN] {
        assert!(
            dropout_mask(gpu, &spec, p, &mask).is_err(),
            "p={p} accepted"
        );
    }
}

// ---- average pooling -----------------------------------------------------------------------

fn pool_specs() -> Vec<PoolSpec> {
    let s = |batch, channels, h, w, pool, stride| PoolSpec {
        batch,
        channels,
        h,
        w,
        pool,
        stride,
    };
    vec![
        s(1, 1, 1, 1, 1, 1),
        s(1, 1, 2, 2, 2, 2),
        s(2, 3, 7, 5, 2, 2),   // odd sizes: the last row/column is in no window
        s(3, 2, 9, 11, 3, 2),  // overlapping windows
        s(2, 5, 13, 13, 3, 1), // heavy overlap
        s(1, 2, 5, 5, 5, 1),   // global average pooling
        s(4, 7, 6, 6, 2, 3),   // stride past the window: gaps
        s(16, 32, 26, 26, 2, 2),
    ]
}

#[test]
fn avg_pool2d_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(41);
    for s in pool_specs() {
        let x = rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0);
        let dy = rng.uniform_vec(s.y_shape().iter().product(), -1.0, 1.0);
        let (tx, tdy) = (
            upload(gpu, &s.x_shape(), &x),
            upload(gpu, &s.y_shape(), &dy),
        );
        let (y, dx) = (zeros(gpu, &s.y_shape()), zeros(gpu, &s.x_shape()));
        let f = avg_pool2d_forward(gpu, &s, &tx, &y).unwrap();
        let b = avg_pool2d_backward(gpu, &s, &tdy, &dx).unwrap();
        run(gpu, &[&f, &b]).unwrap();
        assert_close(
            &format!("avg_pool2d_forward {s:?}"),
            &y.to_f32(gpu).unwrap(),
            &avg_pool2d_forward_ref(&s, &f64s(&x)),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("avg_pool2d_backward {s:?}"),
            &dx.to_f32(gpu).unwrap(),
            &avg_pool2d_backward_ref(&s, &f64s(&dy)),
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn avg_pool2d_backward_matches_finite_differences() {
    let mut rng = Rng::new(42);
    for s in pool_specs().into_iter().take(7) {
        let x = f64s(&rng.uniform_vec(s.x_shape().iter().product(), -1.0, 1.0));
        let w = f64s(&rng.uniform_vec(s.y_shape().iter().product(), -1.0, 1.0));
        fd_check(
            &format!("{s:?}"),
            |x| dot(&avg_pool2d_forward_ref(&s, x), &w),
            &x,
            &avg_pool2d_backward_ref(&s, &w),
        );
    }
}

#[test]
fn avg_pool2d_refuses_bad_specs() {
    let Some(gpu) = gpu() else { return };
    let s = PoolSpec {
        batch: 1,
        channels: 1,
        h: 3,
        w: 3,
        pool: 4,
        stride: 1,
    };
    let t = zeros(gpu, &[1, 1, 3, 3]);
    let e = avg_pool2d_forward(gpu, &s, &t, &t.clone()).err().unwrap();
    assert!(e.to_string().contains("avg_pool2d_forward"), "{e}");
}
