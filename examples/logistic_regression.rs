//! Logistic regression: MNIST zeros against ones with one sigmoid unit, P(one | x) =
//! sigmoid(w . x + b), trained on the binary cross-entropy. Prints the test accuracy.
//!
//!     cargo run --release --example logistic_regression
use std::time::Instant;

use shadergrad::data::{default_data_dir, load_mnist, Split};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::{Activation, Sequential};

/// The images and labels of the zeros and ones of `split`; the labels stay 0 and 1.
fn zeros_and_ones(split: &Split) -> (Vec<u8>, Vec<u8>) {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in (0..split.len()).filter(|&i| split.labels[i] <= 1) {
        images.extend_from_slice(split.image(i));
        labels.push(split.labels[i]);
    }
    (images, labels)
}

fn main() -> shadergrad::Result<()> {
    let mnist = load_mnist(&default_data_dir())?;
    let (train_images, train_labels) = zeros_and_ones(&mnist.train);
    let (test_images, test_labels) = zeros_and_ones(&mnist.test);
    println!(
        "MNIST 0 vs 1: {} training and {} test images",
        train_labels.len(),
        test_labels.len()
    );

    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    // A sigmoid on one unit picks the binary cross-entropy loss.
    let model = Sequential::new([1, 28, 28])
        .flatten()
        .dense(1, Activation::Sigmoid);
    let mut trainer = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 42)?;
    let train = trainer.add_dataset(&train_images, &train_labels)?;
    let cfg = FitConfig {
        epochs: 3,
        validation_split: 0.1,
        verbose: false,
        ..FitConfig::default()
    };
    let split = split_sources(
        &mut trainer,
        train,
        train_labels.len(),
        cfg.validation_split,
    )?;

    let started = Instant::now();
    for epoch in 1..=cfg.epochs {
        let log = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("{}", log.line(cfg.epochs));
    }
    let seconds = started.elapsed().as_secs_f64();

    let test = trainer.add_dataset(&test_images, &test_labels)?;
    let all: Vec<u32> = (0..test_labels.len() as u32).collect();
    let test = trainer.add_source(test, &all)?;
    let m = trainer.evaluate(test, 1000)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} ({} of {} right); {seconds:.1} s training",
        m.loss,
        m.accuracy,
        (m.accuracy * m.count as f64).round(),
        m.count
    );
    Ok(())
}
