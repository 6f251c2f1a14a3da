//! Softmax regression on MNIST: P(y = i | x) = softmax(W x + b), a single Dense layer of ten
//! units trained on the cross-entropy. Prints the test accuracy.
//!
//!     cargo run --release --example softmax_regression
use std::time::Instant;

use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::{Activation, Sequential};

fn main() -> shadergrad::Result<()> {
    let mnist = load_mnist(&default_data_dir())?;
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());

    // Flatten -> Dense(10, softmax): 7,850 parameters (also `Sequential::mnist_softmax()`).
    let model = Sequential::new([1, 28, 28])
        .flatten()
        .dense(10, Activation::Softmax);
    print!("{}", model.summary()?);
    let mut trainer = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 42)?;
    let train = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let cfg = FitConfig {
        epochs: 5,
        validation_split: 0.1,
        verbose: false,
        ..FitConfig::default()
    };
    let split = split_sources(&mut trainer, train, mnist.train.len(), cfg.validation_split)?;

    let started = Instant::now();
    for epoch in 1..=cfg.epochs {
        let log = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("{}", log.line(cfg.epochs));
    }
    let seconds = started.elapsed().as_secs_f64();

    let test = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let all: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test, &all)?;
    let m = trainer.evaluate(test, 1000)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} on {} images; {seconds:.1} s training",
        m.loss, m.accuracy, m.count
    );
    Ok(())
}
