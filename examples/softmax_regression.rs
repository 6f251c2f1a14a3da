//! Softmax regression on MNIST: P(y = i | x) = softmax(W x + b), a single Dense layer of ten
//! units trained on the cross-entropy. Prints the test accuracy.
//!
//!     cargo run --release --example softmax_regression
use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{fit_and_test, FitConfig};
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
    let cfg = FitConfig {
        epochs: 5,
        validation_split: 0.1,
        verbose: false,
        ..FitConfig::default()
    };
    let (m, seconds) = fit_and_test(&mut trainer, &mnist, &cfg)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} on {} images; {seconds:.1} s training",
        m.loss, m.accuracy, m.count
    );
    Ok(())
}
