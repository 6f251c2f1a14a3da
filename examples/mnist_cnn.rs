//! The seed model through the public API: the Keras MNIST CNN, Conv2D(32, 3x3, relu) ->
//! MaxPool(2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax), Adam 1e-3, batch 128,
//! 20% of the training set held out for validation, then evaluated on the test set.
//!
//!     cargo run --release --example mnist_cnn            # 10 epochs, as Keras
//!     cargo run --release --example mnist_cnn -- 1       # any number of epochs
use shadergrad::data::{default_data_dir, load_mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{fit_and_test, FitConfig};
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
    let cfg = FitConfig {
        epochs,
        batch_size: 128,
        validation_split: 0.2,
        ..FitConfig::default()
    };
    let (m, seconds) = fit_and_test(&mut trainer, &mnist, &cfg)?;
    println!(
        "test: loss {:.4} - accuracy {:.4} on {} images; {seconds:.0} s training",
        m.loss, m.accuracy, m.count
    );
    Ok(())
}
