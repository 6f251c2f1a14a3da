//! The seed model through the public API: the Keras MNIST CNN, Conv2D(32, 3x3, relu) ->
//! MaxPool(2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam 1e-3, batch 128,
//! 20% of the training set held out for validation, then evaluated on the test set.
//!
//!     cargo run --release --example mnist_cnn            # 10 epochs, as Keras
//!     cargo run --release --example mnist_cnn -- 1       # any number of epochs
use std::time::Instant;

use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::{Activation, Sequential};

fn main() -> shadergrad::Result<()> {
    let epochs = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| shadergrad::Error::usage("epochs", format!("{arg:?} is no number")))?,
        None => 10,
    };
    // The vendored MNIST (60,000 training and 10,000 test images, SHA-256 checked).
    let mnist = load_mnist(&default_data_dir())?;
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());

    // The same model as `Sequential::mnist_cnn()`, written out: 693,962 parameters.
    let model = Sequential::new([1, 28, 28])
        .conv2d(32, 3, Activation::Relu)
        .max_pool2d(2)
        .flatten()
        .dense(128, Activation::Relu)
        .dense(10, Activation::Softmax);
    print!("{}", model.summary()?);

    // Parameters, gradients, optimizer state and the dataset live on the GPU from here on.
    let mut trainer = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 42)?;
    let train = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let cfg = FitConfig {
        epochs,
        batch_size: 128,
        validation_split: 0.2,
        ..FitConfig::default()
    };
    let split = split_sources(&mut trainer, train, mnist.train.len(), cfg.validation_split)?;

    let started = Instant::now();
    for epoch in 1..=cfg.epochs {
        // One epoch: a seeded reshuffle, one submit per batch, then validation.
        let log = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("{}", log.line(cfg.epochs));
    }
    let seconds = started.elapsed().as_secs_f64();

    let test = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let all: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test, &all)?;
    let m = trainer.evaluate(test, 1000)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} on {} images; {seconds:.0} s training",
        m.loss, m.accuracy, m.count
    );
    Ok(())
}
