//! The command line of the language models: `train --model gpt|char-rnn` and `generate`.
//! Everything else (models, data, training loop, sampling) is the library's `lm` module.

use std::io::Write;
use std::path::{Path, PathBuf};

use shadergrad::data::text::{default_text_path, TextCorpus};
use shadergrad::gpu::{cpu_adapter_warning, Gpu};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::lm::checkpoint::{self, LmCheckpoint};
use shadergrad::lm::generate::{generate, GenerateOptions};
use shadergrad::lm::train::{LmData, LmRun, LmTrainConfig};
use shadergrad::lm::{CharRnnConfig, GptConfig, LmConfig};
use shadergrad::schedule::{Decay, Schedule};
use shadergrad::{Error, Result};

use crate::{GenerateArgs, ModelKind, OptimizerKind, ScheduleKind, TrainArgs};

/// Image-model flags a language model refuses (clap ids).
const IMAGE_ONLY: [&str; 9] = [
    "epochs",
    "validation_split",
    "data_dir",
    "early_stopping",
    "restore_best",
    "lr_step_epochs",
    "model_file",
    "augment_shift",
    "augment_flip",
];

/// Language-model flags an image model refuses (clap ids).
pub const LM_ONLY: [&str; 9] = [
    "text",
    "steps",
    "eval_every",
    "eval_batches",
    "context",
    "d_model",
    "heads",
    "layers",
    "hidden",
];

/// The language models' own defaults for the flags they share with the image models (whose
/// defaults are Keras's): 16 windows a step and Adam at 3e-3, warmed up over 100 steps, then
/// a cosine down to 1e-4 at --steps. With the GPT's default size these reach 2.7 bits per
/// character in 1,200 steps, as PyTorch does (README, Language models).
const DEFAULT_BATCH: usize = 16;
const DEFAULT_LR: f32 = 3e-3;
const DEFAULT_LR_MIN: f32 = 1e-4;
const DEFAULT_WARMUP: u64 = 100;

fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// The model the flags describe, for a vocabulary of `vocab` characters.
fn config(args: &TrainArgs, vocab: usize) -> Result<LmConfig> {
    let cfg = match args.model {
        ModelKind::Gpt => LmConfig::Gpt(GptConfig {
            vocab,
            context: args.context,
            d_model: args.d_model,
            heads: args.heads,
            layers: args.layers,
        }),
        _ => LmConfig::CharRnn(CharRnnConfig {
            vocab,
            context: args.context,
            embed: args.hidden.div_ceil(4).max(16),
            hidden: args.hidden,
        }),
    };
    cfg.validate("train")?;
    Ok(cfg)
}

/// Adam/AdamW/SGD as the flags say, the cosine horizon being the run's --steps; a flag not
/// given takes the language models' default.
fn optimizer(args: &TrainArgs, given: &dyn Fn(&str) -> bool) -> Result<Optimizer> {
    let or = |id: &str, flag: f32, default: f32| if given(id) { flag } else { default };
    let lr = or("lr", args.lr, DEFAULT_LR);
    let schedule = if given("lr_schedule") {
        args.lr_schedule
    } else {
        ScheduleKind::Cosine
    };
    let decay = match schedule {
        ScheduleKind::Constant => Decay::Constant,
        ScheduleKind::Step => {
            return Err(Error::usage(
                "--lr-schedule step",
                "counts epochs, which language models do not have; use cosine or constant",
            ))
        }
        ScheduleKind::Cosine => Decay::Cosine {
            horizon: args.steps,
            min_lr: or("lr_min", args.lr_min, DEFAULT_LR_MIN.min(lr)),
        },
    };
    let warmup = if given("warmup_steps") {
        args.warmup_steps
    } else {
        DEFAULT_WARMUP.min(args.steps / 4)
    };
    let schedule = Schedule { decay, warmup };
    schedule.check(lr)?;
    let opt = match args.optimizer {
        OptimizerKind::Adam => Optimizer::adam(lr),
        OptimizerKind::Adamw => Optimizer::adamw(lr, args.weight_decay.unwrap_or(0.01)),
        OptimizerKind::Sgd if args.nesterov => Optimizer::nesterov(lr, args.momentum),
        OptimizerKind::Sgd => Optimizer::sgd(lr, args.momentum),
    };
    Ok(opt.with_schedule(schedule).with_clip_norm(args.clip_norm))
}

/// `train --model gpt|char-rnn`.
pub fn train(args: &TrainArgs, given: &dyn Fn(&str) -> bool) -> Result<u8> {
    if let Some(id) = IMAGE_ONLY.iter().find(|id| given(id)) {
        return Err(Error::usage(
            flag(id),
            "is an image-model flag; language models train for --steps on --text",
        ));
    }
    let resumed = args.resume.as_deref().map(checkpoint::load).transpose()?;
    let text_path = args.text.clone().unwrap_or_else(default_text_path);
    let corpus = TextCorpus::load(&text_path)?;
    let (config, opt, batch, seed) = match &resumed {
        Some(ck) => resumed_settings(ck, &corpus, &text_path)?,
        None => {
            let batch = if given("batch_size") {
                args.batch_size
            } else {
                DEFAULT_BATCH
            };
            let config = config(args, corpus.vocab.len())?;
            (config, optimizer(args, given)?, batch, args.seed)
        }
    };
    let ctx = shadergrad::nn::Model::context(&config).unwrap_or(1);
    corpus.check_window(ctx)?;
    let cfg = LmTrainConfig {
        steps: args.steps,
        batch,
        eval_every: args.eval_every.max(1),
        eval_batches: args.eval_batches.max(1),
        seed,
        optimizer: opt,
        text: args
            .text
            .as_ref()
            .map_or("default".into(), |p| p.display().to_string()),
        save: args.save.clone().or(args.resume.clone()),
    };
    let gpu = Gpu::new()?;
    println!("adapter: {} - kernels: {}", gpu.describe(), gpu.family());
    if let Some(w) = cpu_adapter_warning(&gpu.info) {
        eprintln!("{w}");
    }
    let data = LmData {
        vocab: &corpus.vocab,
        train: &corpus.train,
        val: &corpus.val,
    };
    let mut run = LmRun::new(&gpu, config, &data, &cfg, resumed.as_ref())?;
    print_run(&run, &config, &corpus, &text_path);
    let mut log = MetricsLog::create(args.metrics_out.as_deref())?;
    let interrupt = crate::Interrupt::install();
    let finished = run.run_until(&cfg, &mut |row| log.report(row), &|| interrupt.requested())?;
    log.finish()?;
    if !finished {
        // Interrupted between steps: save where the run stands, so --resume goes on from
        // this very step (its first report then averages the steps after the resume).
        let t = run.trainer.steps;
        match &cfg.save {
            Some(p) => {
                checkpoint::save(p, &run.checkpoint(&cfg)?)?;
                eprintln!("interrupted at step {t}; saved {}", p.display());
            }
            None => eprintln!("interrupted at step {t}; nothing saved (no --save)"),
        }
        return Ok(interrupt.exit_code());
    }
    if let Some(p) = &cfg.save {
        println!("saved {}", p.display());
    }
    Ok(0)
}

/// A resumed run's model, optimizer, batch and seed: the checkpoint's, on the text it was
/// trained on (the same vocabulary).
fn resumed_settings(
    ck: &LmCheckpoint,
    corpus: &TextCorpus,
    text_path: &Path,
) -> Result<(LmConfig, Optimizer, usize, u64)> {
    if ck.vocab != corpus.vocab {
        return Err(Error::usage("--text", format!("{}: its vocabulary differs from the checkpoint's ({} vs {} characters); resume on the text it was trained on ({})", text_path.display(), corpus.vocab.len(), ck.vocab.len(), ck.text)));
    }
    Ok((ck.config, ck.optimizer, ck.batch_size, ck.seed))
}

fn print_run(run: &LmRun, config: &LmConfig, corpus: &TextCorpus, text_path: &Path) {
    let params: usize = run.trainer.store.specs.iter().map(|s| s.numel()).sum();
    println!("model: {} ({params} parameters), text: {} ({} training and {} held-out characters, vocabulary {})",
        config.to_json(), text_path.display(), corpus.train.len(), corpus.val.len(), corpus.vocab.len());
    println!(
        "unigram baseline: {:.3} bits per character on the held-out text",
        corpus.unigram_bpc()
    );
}

/// Each report as a line on stdout and, with `--metrics-out`, a JSON row in that file. A
/// failed write is kept and returned once the run ends, so training is not cut short by it.
struct MetricsLog {
    file: Option<(std::fs::File, PathBuf)>,
    write_err: Option<Error>,
}

impl MetricsLog {
    fn create(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => Some((
                std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
                p.to_path_buf(),
            )),
            None => None,
        };
        Ok(MetricsLog {
            file,
            write_err: None,
        })
    }

    fn report(&mut self, row: &serde_json::Value) {
        let num = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "step {:>5}: loss {:.4} ({:.3} bpc), val_loss {:.4} ({:.3} bpc), {:.0} tokens/s",
            row["step"],
            num("loss"),
            num("bpc"),
            num("val_loss"),
            num("val_bpc"),
            row["tokens_per_second"].as_f64().unwrap_or(0.0)
        );
        if let Some((f, p)) = self.file.as_mut() {
            if let Err(e) = writeln!(f, "{row}") {
                self.write_err.get_or_insert(Error::io(p.as_path(), e));
            }
        }
    }

    fn finish(self) -> Result<()> {
        self.write_err.map_or(Ok(()), Err)
    }
}

/// `generate`: sample from a language-model checkpoint and print the text.
pub fn generate_cmd(args: GenerateArgs) -> Result<()> {
    let ck: LmCheckpoint = load_lm(&args.checkpoint)?;
    let gpu = Gpu::new()?;
    let opts = GenerateOptions {
        prompt: args.prompt.clone(),
        tokens: args.tokens,
        temperature: args.temperature,
        seed: args.seed,
    };
    let text = generate(&gpu, &ck, &opts)?;
    println!("{}{}", args.prompt, text);
    Ok(())
}

fn load_lm(path: &Path) -> Result<LmCheckpoint> {
    if path.exists() && !checkpoint::is_lm_checkpoint(path) {
        return Err(Error::usage("--checkpoint", format!("{} holds no language model (its `model` metadata is not gpt or char-rnn); `evaluate` and `predict` read image models", path.display())));
    }
    checkpoint::load(path)
}
