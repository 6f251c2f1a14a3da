//! Per-kernel timing of one training step of a model (debug aid): one submit per kernel.
//! cargo run --release --example profile_step -- [cnn|mlp|softmax|lenet5|vgg-small] [batch]
use shadergrad::executor::Trainer;
use shadergrad::fit::split_sources;
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;

fn main() -> shadergrad::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // cnn (the default) or any named model: mlp, softmax, lenet5, vgg-small.
    let model = match args.get(1) {
        Some(name) => shadergrad::checkpoint::preset(name).ok_or_else(|| {
            shadergrad::Error::usage("model", format!("{name:?} is not a named model"))
        })?,
        None => Sequential::mnist_cnn(),
    };
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let mnist = shadergrad::data::load_mnist(&shadergrad::data::default_data_dir())?;
    let gpu = Gpu::new()?;
    let mut trainer = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 1)?;
    let set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let split = split_sources(&mut trainer, set, mnist.train.len(), 0.2)?;
    let rows = trainer.profile_step(split.train, batch, true, 5)?;
    let total: f64 = rows.iter().map(|r| r.1).sum();
    // One line per kernel in step order, its dispatches summed (a window kernel runs as
    // many dispatches; each is timed in its own submit, so small ones carry that overhead).
    let mut kernels: Vec<(&str, usize, f64)> = Vec::new();
    for (name, ms) in &rows {
        match kernels.iter_mut().find(|k| k.0 == *name) {
            Some(k) => {
                k.1 += 1;
                k.2 += ms;
            }
            None => kernels.push((name, 1, *ms)),
        }
    }
    for (name, n, ms) in kernels {
        println!("{name:<34} x{n:<4} {ms:>9.3} ms");
    }
    println!("{:<40} {total:>9.3} ms", "total");
    Ok(())
}
