//! Per-kernel timing of one training step of a model (debug aid): one submit per kernel.
//! cargo run --release --example profile_step -- [cnn|mlp|softmax|lenet5|vgg-small|gpt|char-rnn|MODEL.json] [batch]
use shadergrad::executor::Trainer;
use shadergrad::fit::split_sources;
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;

fn main() -> shadergrad::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // cnn (the default) or any named model: mlp, softmax, lenet5, vgg-small.
    let model = match args.get(1).filter(|m| *m != "gpt" && *m != "char-rnn") {
        Some(file) if file.ends_with(".json") => {
            shadergrad::model_file::load(std::path::Path::new(file))?
        }
        Some(name) => shadergrad::checkpoint::preset(name).ok_or_else(|| {
            shadergrad::Error::usage("model", format!("{name:?} is not a named model"))
        })?,
        None => Sequential::mnist_cnn(),
    };
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let gpu = Gpu::new()?;
    let rows = if args.get(1).is_some_and(|m| m == "gpt" || m == "char-rnn") {
        profile_lm(&gpu, &args[1], batch)?
    } else {
        let mnist = shadergrad::data::load_mnist(&shadergrad::data::default_data_dir())?;
        let mut trainer = Trainer::new(&gpu, model, Optimizer::adam(1e-3), 1)?;
        let set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
        let split = split_sources(&mut trainer, set, mnist.train.len(), 0.2)?;
        trainer.profile_step(split.train, batch, true, 5)?
    };
    let total: f64 = rows.iter().map(|r| r.1).sum();
    if std::env::var_os("PROFILE_EACH").is_some() {
        for (i, (name, ms)) in rows.iter().enumerate().filter(|r| r.1 .1 > 5.0) {
            println!("  #{i:<5} {name:<32} {ms:>9.3} ms");
        }
    }
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

/// The language models at the command line's default sizes, on the shipped text.
fn profile_lm(gpu: &Gpu, kind: &str, batch: usize) -> shadergrad::Result<Vec<(&'static str, f64)>> {
    use shadergrad::lm::train::{LmData, LmRun, LmTrainConfig};
    use shadergrad::lm::{CharRnnConfig, GptConfig, LmConfig};
    let corpus =
        shadergrad::data::text::TextCorpus::load(&shadergrad::data::text::default_text_path())?;
    let vocab = corpus.vocab.len();
    let config = match kind {
        "gpt" => LmConfig::Gpt(GptConfig {
            vocab,
            context: 64,
            d_model: 128,
            heads: 4,
            layers: 3,
        }),
        _ => LmConfig::CharRnn(CharRnnConfig {
            vocab,
            context: 64,
            embed: 64,
            hidden: 256,
        }),
    };
    let cfg = LmTrainConfig {
        steps: 1,
        batch,
        eval_every: 1,
        eval_batches: 1,
        seed: 1,
        optimizer: Optimizer::adam(1e-3),
        text: "default".into(),
        save: None,
    };
    let data = LmData {
        vocab: &corpus.vocab,
        train: &corpus.train,
        val: &corpus.val,
    };
    let mut run = LmRun::new(gpu, config, &data, &cfg, None)?;
    run.profile_step(batch, 3)
}
