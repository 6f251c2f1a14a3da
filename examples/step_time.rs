//! Wall-clock time of training steps (batch 128) through the public API: 5 warm-up steps,
//! then 3 rounds of 30 steps, each ended by a wait for the GPU.
//!
//!     cargo run --release --example step_time            # the seed CNN
//!     cargo run --release --example step_time -- vgg-small   # any named model
//!     cargo run --release --example step_time -- model.json  # or a model file
//!     cargo run --release --example step_time -- cnn 16      # another batch size
use shadergrad::executor::Trainer;
use shadergrad::fit::split_sources;
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;

fn main() -> shadergrad::Result<()> {
    let mnist = shadergrad::data::load_mnist(&shadergrad::data::default_data_dir())?;
    let gpu = Gpu::new()?;
    let model = match std::env::args().nth(1) {
        Some(file) if file.ends_with(".json") => {
            shadergrad::model_file::load(std::path::Path::new(&file))?
        }
        Some(name) => shadergrad::checkpoint::preset(&name).ok_or_else(|| {
            shadergrad::Error::usage("model", format!("{name:?} is not a named model"))
        })?,
        None => Sequential::mnist_cnn(),
    };
    let batch: usize = std::env::args()
        .nth(2)
        .and_then(|b| b.parse().ok())
        .unwrap_or(128);
    let mut t = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 42)?;
    let set = t.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let split = split_sources(&mut t, set, mnist.train.len(), 0.2)?;
    for i in 0..5 {
        t.step(split.train, i * batch, batch, true)?;
    }
    t.read_metrics()?;
    for round in 0..3 {
        let start = std::time::Instant::now();
        for i in 0..30 {
            t.step(split.train, (i % 300) * batch, batch, true)?;
        }
        t.read_metrics()?;
        let ms = start.elapsed().as_secs_f64() * 1e3 / 30.0;
        println!("round {round}: {ms:.1} ms/step");
    }
    Ok(())
}
