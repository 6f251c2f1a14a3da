//! Linear regression: y = W x + b + noise from a known W and b, fitted by minibatch SGD on
//! the mean squared error. Prints the recovered W and b next to the true ones.
//!
//!     cargo run --release --example linear_regression
use std::time::Instant;

use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::{Activation, Sequential};
use shadergrad::rng::Rng;

const N: usize = 8192; // samples
const D: usize = 3; // features
const T: usize = 2; // outputs
const NOISE: f32 = 0.1; // standard deviation of the Gaussian noise
const TRUE_W: [[f32; D]; T] = [[2.0, -3.0, 0.5], [-1.0, 0.25, 4.0]];
const TRUE_B: [f32; T] = [1.5, -0.7];

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut Rng) -> f32 {
    let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn main() -> shadergrad::Result<()> {
    // Features x ~ U(-1, 1)^D, rows of N x D; targets y = W x + b + noise, rows of N x T.
    let mut rng = Rng::new(7);
    let x = rng.uniform_vec(N * D, -1.0, 1.0);
    let mut y = Vec::with_capacity(N * T);
    for row in x.chunks(D) {
        for (w, b) in TRUE_W.iter().zip(TRUE_B) {
            let clean: f32 = w.iter().zip(row).map(|(w, x)| w * x).sum::<f32>() + b;
            y.push(clean + NOISE * gaussian(&mut rng));
        }
    }

    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    // One Dense layer with no activation: a linear output, so the loss is the MSE.
    let model = Sequential::vector(D).dense(T, Activation::Linear);
    let mut trainer = Trainer::new(&gpu, model, Optimizer::sgd(0.1, 0.0), 42)?;
    let data = trainer.add_dataset_f32(&x, &y)?;
    let cfg = FitConfig {
        epochs: 10,
        batch_size: 64,
        validation_split: 0.0,
        verbose: false,
        ..FitConfig::default()
    };
    let split = split_sources(&mut trainer, data, N, cfg.validation_split)?;

    let started = Instant::now();
    for epoch in 1..=cfg.epochs {
        let log = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("epoch {epoch:>2}/{}: mse {:.6}", cfg.epochs, log.loss);
    }
    let seconds = started.elapsed().as_secs_f64();
    let final_mse = trainer.evaluate(split.train, 1024)?.loss;

    // Parameters come back in PyTorch layout: fc1.weight [T, D], fc1.bias [T].
    let params = trainer.read_params()?;
    let recovered = params[0].iter().chain(&params[1]);
    let truth = TRUE_W.iter().flatten().chain(&TRUE_B);
    let names = (0..T)
        .flat_map(|o| (0..D).map(move |k| format!("W[{o},{k}]")))
        .chain((0..T).map(|o| format!("b[{o}]")));
    let mut worst = 0.0f32;
    println!(
        "\n{:<10}{:>10}{:>12}{:>10}",
        "parameter", "true", "recovered", "error"
    );
    for ((name, t), r) in names.zip(truth).zip(recovered) {
        worst = worst.max((t - r).abs());
        println!("{name:<10}{t:>10.4}{r:>12.4}{:>10.4}", (t - r).abs());
    }
    println!(
        "\nfinal loss (MSE over all {N} samples): {final_mse:.6} (noise variance {:.6})",
        NOISE * NOISE
    );
    let verdict = if worst <= 1e-2 { "yes" } else { "NO" };
    println!("largest error: {worst:.4} (within 1e-2: {verdict}); {seconds:.1} s training");
    Ok(())
}
