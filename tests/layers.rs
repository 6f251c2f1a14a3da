//! Layers with state: BatchNorm's running statistics are updated on the GPU in training
//! graphs exactly as PyTorch updates them, and evaluation graphs normalise with them.

mod common;

use shadergrad::graph::session::Session;
use shadergrad::graph::{DType, Graph};
use shadergrad::nn::BatchNorm;
use shadergrad::rng::Rng;

/// Per-channel mean and biased variance of x [B, C, H, W] (f64).
fn channel_stats(x: &[f32], [b, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
    let n = (b * h * w) as f64;
    let at = |i: usize, ch: usize, k: usize| x[(i * c + ch) * h * w + k] as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        mean[ch] = (0..b)
            .flat_map(|i| (0..h * w).map(move |k| (i, k)))
            .map(|(i, k)| at(i, ch, k))
            .sum::<f64>()
            / n;
        var[ch] = (0..b)
            .flat_map(|i| (0..h * w).map(move |k| (i, k)))
            .map(|(i, k)| (at(i, ch, k) - mean[ch]).powi(2))
            .sum::<f64>()
            / n;
    }
    (mean, var)
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() {
    let Some(gpu) = common::gpu() else { return };
    let shape = [3, 2, 4, 5];
    let mut g = Graph::new();
    let x = g.input("x", &shape, DType::F32);
    let bn = BatchNorm::new(&mut g, "bn", 2, 0);
    let y = bn.forward(&mut g, x).unwrap();
    g.mark_output(y);
    let s = Session::new(gpu, &g, true).unwrap();
    let mut rng = Rng::new(3);
    let data: Vec<f32> = rng.uniform_vec(120, -2.0, 3.0);
    s.write(x, &data).unwrap();
    let (mean, var) = channel_stats(&data, shape);
    let n = 60.0;
    // Two steps on the same batch: running = 0.9 running + 0.1 batch, twice.
    let (mut rm, mut rv) = (vec![0.0; 2], vec![1.0; 2]);
    for step in 1..=2 {
        s.run().unwrap();
        for ch in 0..2 {
            rm[ch] = 0.9 * rm[ch] + 0.1 * mean[ch];
            rv[ch] = 0.9 * rv[ch] + 0.1 * var[ch] * n / (n - 1.0);
        }
        common::assert_close(
            "running_mean",
            &s.read(bn.running_mean).unwrap(),
            &rm,
            1e-5,
            1e-6,
        );
        common::assert_close(
            "running_var",
            &s.read(bn.running_var).unwrap(),
            &rv,
            1e-5,
            1e-6,
        );
        let nbt = s.read(bn.num_batches_tracked).unwrap();
        assert_eq!(nbt, vec![step as f32]);
    }
    // The training output is normalised with the batch statistics (gamma 1, beta 0).
    let got = s.read(y).unwrap();
    let want: Vec<f64> = (0..120)
        .map(|i| {
            let ch = (i / 20) % 2;
            (data[i] as f64 - mean[ch]) / (var[ch] + 1e-5).sqrt()
        })
        .collect();
    common::assert_close("training output", &got, &want, 1e-4, 1e-5);
}

#[test]
fn batch_norm_evaluation_uses_running_statistics() {
    let Some(gpu) = common::gpu() else { return };
    let mut g = Graph::new();
    g.training = false;
    let x = g.input("x", &[4, 3], DType::F32);
    let bn = BatchNorm::new(&mut g, "bn", 3, 0);
    let y = bn.forward(&mut g, x).unwrap();
    g.mark_output(y);
    let s = Session::new(gpu, &g, true).unwrap();
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    let (rm, rv, w, b) = (
        [0.5f32, -1.0, 2.0],
        [4.0f32, 0.25, 1.0],
        [2.0f32, 1.0, -1.0],
        [0.1f32, 0.2, 0.3],
    );
    s.write(x, &data).unwrap();
    s.write(bn.running_mean, &rm).unwrap();
    s.write(bn.running_var, &rv).unwrap();
    s.write(bn.weight, &w).unwrap();
    s.write(bn.bias, &b).unwrap();
    s.run().unwrap();
    let want: Vec<f64> = (0..12)
        .map(|i| {
            let c = i % 3;
            (data[i] - rm[c]) as f64 / (rv[c] as f64 + 1e-5).sqrt() * w[c] as f64 + b[c] as f64
        })
        .collect();
    common::assert_close("evaluation output", &s.read(y).unwrap(), &want, 1e-5, 1e-6);
    // Evaluation leaves the running statistics alone.
    assert_eq!(s.read(bn.running_mean).unwrap(), rm.to_vec());
}
