//! The `shadergrad` command line: `info`, `train`, `evaluate`, `predict`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use shadergrad::checkpoint::{self, describe_layers, Checkpoint};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, EpochLog, FitConfig};
use shadergrad::gpu::{describe_adapter, enumerate_adapters, Gpu};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::{data, plot, predict, Error, Result};

#[derive(Parser)]
#[command(
    name = "shadergrad",
    version,
    about = "Deep learning on WGSL compute shaders through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter and the features and limits that matter to shadergrad.
    Info,
    /// Train a model on MNIST (default: the Keras MNIST CNN, Adam 1e-3, batch 128, 10 epochs).
    Train(TrainArgs),
    /// Test loss, accuracy and confusion matrix of a checkpoint on the MNIST test set.
    Evaluate(EvaluateArgs),
    /// The digit in each PNG image (any size, grey or colour, either polarity), with the ten
    /// class probabilities.
    Predict(PredictArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelKind {
    Cnn,
    Mlp,
    Softmax,
}

impl ModelKind {
    fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::Mlp => "mlp",
            ModelKind::Softmax => "softmax",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    #[arg(long, default_value_t = 0.2)]
    validation_split: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory holding the four MNIST IDX files (raw or .gz). Default: the vendored copy.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModelKind::Cnn)]
    model: ModelKind,
    /// Write one JSON object per epoch, then one with the test metrics; the training
    /// curves go beside it (same name, .svg). Default with --save: PATH's name with
    /// .metrics.jsonl.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Write a safetensors checkpoint (parameters, optimizer state, metadata) here after
    /// every epoch and at the end, atomically.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint, with its model, optimizer, seed, batch
    /// size and split; --epochs is the total to reach. Saves back to it unless --save.
    #[arg(long)]
    resume: Option<PathBuf>,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Directory holding the four MNIST IDX files (raw or .gz). Default: the vendored copy.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Default: the checkpoint's training batch size.
    #[arg(long)]
    batch_size: Option<usize>,
}

#[derive(clap::Args)]
struct PredictArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// PNG images, each holding one digit.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let given = |id: &str| {
        matches
            .subcommand_matches("train")
            .is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine))
    };
    let result = match cli.command {
        Command::Info => info(),
        Command::Train(args) => train(args, &given),
        Command::Evaluate(args) => evaluate(args),
        Command::Predict(args) => predict(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<()> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = enumerate_adapters(&instance);
    if adapters.is_empty() {
        println!("no adapters found");
    }
    for a in &adapters {
        let limits = a.limits();
        println!("{}", describe_adapter(&a.get_info()));
        println!(
            "  features: timestamp queries {}, subgroups {}, f64 {}",
            a.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            a.features().contains(wgpu::Features::SUBGROUP),
            a.features().contains(wgpu::Features::SHADER_F64)
        );
        println!(
            "  max storage buffer binding: {} MiB, max buffer: {} MiB",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20
        );
        println!("  storage buffers per stage: {}, workgroup storage: {} KiB, invocations per workgroup: {}",
            limits.max_storage_buffers_per_shader_stage, limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_invocations_per_workgroup);
        println!(
            "  workgroups per dimension: {}, storage offset alignment: {} B",
            limits.max_compute_workgroups_per_dimension, limits.min_storage_buffer_offset_alignment
        );
    }
    match Gpu::new() {
        Ok(gpu) => println!("selected: {}", gpu.describe()),
        Err(e) => println!("selected: none ({e})"),
    }
    Ok(())
}

fn train(args: TrainArgs, given: &dyn Fn(&str) -> bool) -> Result<()> {
    if args.epochs == 0 {
        return Err(Error::usage("--epochs", "must be at least 1"));
    }
    if args.batch_size == 0 {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(Error::usage(
            "--lr",
            format!("{} is not a positive number", args.lr),
        ));
    }
    if !(0.0..1.0).contains(&args.momentum) {
        return Err(Error::usage(
            "--momentum",
            format!("{} is outside [0, 1)", args.momentum),
        ));
    }
    let optimizer = match args.optimizer {
        OptimizerKind::Adam => Optimizer::adam(args.lr),
        OptimizerKind::Sgd => Optimizer::sgd(args.lr, args.momentum),
    };
    let mut cfg = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        validation_split: args.validation_split,
        seed: args.seed,
        ..FitConfig::default()
    };
    let resumed = match &args.resume {
        Some(p) => Some(resume_settings(p, &args, optimizer, &mut cfg, given)?),
        None => None,
    };
    let kind = resumed
        .as_ref()
        .map_or(args.model.name(), |c| c.kind.as_str());
    let model = checkpoint::preset(kind)
        .ok_or_else(|| Error::usage("--model", format!("{kind:?} is not cnn, mlp or softmax")))?;
    let optimizer = resumed.as_ref().map_or(optimizer, |c| c.optimizer);
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let mnist = data::load_mnist(&dir)?;
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    print!("{}", model.summary()?);
    let save = args.save.as_ref().or(args.resume.as_ref());
    let log_path = args
        .metrics_out
        .clone()
        .or_else(|| save.map(|p| p.with_extension("metrics.jsonl")));
    let curves_path = log_path.as_ref().map(|p| p.with_extension("svg"));
    let mut log = match &log_path {
        Some(p) => Some((std::fs::File::create(p).map_err(|e| Error::io(p, e))?, p)),
        None => None,
    };
    let mut write_json = |v: serde_json::Value| -> Result<()> {
        if let Some((f, p)) = log.as_mut() {
            writeln!(f, "{v}").map_err(|e| Error::io(p.as_path(), e))?;
        }
        Ok(())
    };
    let title = format!(
        "{kind} on MNIST ({} parameters), {optimizer:?}, batch {}",
        model.param_count()?,
        cfg.batch_size
    );

    let mut trainer = Trainer::new(&gpu, model, optimizer, cfg.seed)?;
    let mut history: Vec<EpochLog> = Vec::new();
    if let (Some(ck), Some(p)) = (&resumed, &args.resume) {
        ck.restore(&mut trainer)?;
        history = ck.history.clone();
        for e in &history {
            write_json(e.to_json())?;
        }
        println!(
            "resuming {} after epoch {} ({} optimizer steps)",
            p.display(),
            ck.epoch,
            ck.steps
        );
    }
    let train_set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let split = split_sources(
        &mut trainer,
        train_set,
        mnist.train.len(),
        cfg.validation_split,
    )?;
    println!(
        "train on {} samples, validate on {}",
        split.n_train,
        mnist.train.len() - split.n_train
    );
    let first = resumed.as_ref().map_or(1, |c| c.epoch + 1);
    for epoch in first..=cfg.epochs {
        let entry = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("{}", entry.line(cfg.epochs));
        write_json(entry.to_json())?;
        history.push(entry);
        if let Some(p) = &curves_path {
            plot::write_curves(p, &history, &title)?;
        }
        if let Some(p) = save {
            let metrics = history.last().map(EpochLog::to_json).unwrap_or_default();
            let ck = Checkpoint::capture(&trainer, kind, &cfg, epoch, &history, metrics)?;
            checkpoint::save(p, &ck)?;
        }
    }
    let test_set = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let order: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test_set, &order)?;
    let m = trainer.evaluate(test, cfg.batch_size)?;
    println!(
        "test_loss: {:.4} - test_accuracy: {:.4}",
        m.loss, m.accuracy
    );
    let test_json = serde_json::json!({ "test_loss": m.loss, "test_accuracy": m.accuracy });
    write_json(test_json.clone())?;
    if let Some(p) = save {
        let mut metrics = history.last().map(EpochLog::to_json).unwrap_or_default();
        if let (Some(obj), Some(test)) = (metrics.as_object_mut(), test_json.as_object()) {
            obj.extend(test.clone());
        }
        let ck = Checkpoint::capture(&trainer, kind, &cfg, cfg.epochs, &history, metrics)?;
        checkpoint::save(p, &ck)?;
        println!("saved {}", p.display());
    }
    if let Some(p) = &curves_path {
        println!("curves: {}", p.display());
    }
    Ok(())
}

/// Load the checkpoint to resume and take its settings into `cfg`; flags given on the
/// command line must agree with them.
fn resume_settings(
    path: &Path,
    args: &TrainArgs,
    optimizer: Optimizer,
    cfg: &mut FitConfig,
    given: &dyn Fn(&str) -> bool,
) -> Result<Checkpoint> {
    let ck = checkpoint::load(path, None)?;
    if ck.state.is_none() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            field: "optimizer.m.*".into(),
            msg: "absent: a weights-only checkpoint can be evaluated but not resumed".into(),
        });
    }
    let opt_given = ["optimizer", "lr", "momentum"].iter().any(|id| given(id));
    let conflicts = [
        ("--model", given("model") && args.model.name() != ck.kind),
        (
            "--optimizer, --lr, --momentum",
            opt_given && optimizer != ck.optimizer,
        ),
        ("--seed", given("seed") && args.seed != ck.seed),
        (
            "--batch-size",
            given("batch_size") && args.batch_size != ck.batch_size,
        ),
        (
            "--validation-split",
            given("validation_split") && args.validation_split != ck.validation_split,
        ),
    ];
    if let Some((flag, _)) = conflicts.iter().find(|(_, differs)| *differs) {
        return Err(Error::usage(*flag, format!("differs from the checkpoint's setting; a resumed run keeps the settings of {} (model {}, optimizer {:?}, seed {}, batch size {}, validation split {}): leave the flag out", path.display(), ck.kind, ck.optimizer, ck.seed, ck.batch_size, ck.validation_split)));
    }
    if args.epochs <= ck.epoch {
        return Err(Error::usage(
            "--epochs",
            format!(
                "{} has already trained {} epochs; with --resume, --epochs is the total to reach",
                path.display(),
                ck.epoch
            ),
        ));
    }
    (cfg.seed, cfg.batch_size, cfg.validation_split) =
        (ck.seed, ck.batch_size, ck.validation_split);
    Ok(ck)
}

/// A trainer holding a checkpoint's parameters, for inference.
fn load_for_inference<'g>(gpu: &'g Gpu, path: &Path) -> Result<(Checkpoint, Trainer<'g>)> {
    let ck = checkpoint::load(path, None)?;
    println!("adapter: {}", gpu.describe());
    let (layers, n) = (describe_layers(&ck.model), ck.model.param_count()?);
    let (kind, epoch) = (&ck.kind, ck.epoch);
    println!(
        "checkpoint: {} - model {kind} ({layers}) - epoch {epoch} - {n} parameters",
        path.display()
    );
    let trainer = ck.trainer(gpu)?;
    Ok((ck, trainer))
}

fn evaluate(args: EvaluateArgs) -> Result<()> {
    if args.batch_size == Some(0) {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    let gpu = Gpu::new()?;
    let (ck, mut trainer) = load_for_inference(&gpu, &args.checkpoint)?;
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let mnist = data::load_mnist(&dir)?;
    let test_set = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let order: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test_set, &order)?;
    let out = predict::infer(&mut trainer, test, args.batch_size.unwrap_or(ck.batch_size))?;
    println!(
        "test_loss: {:.4} - test_accuracy: {:.4} ({} images)",
        out.metrics.loss, out.metrics.accuracy, out.metrics.count
    );
    println!("confusion matrix (rows: true digit, columns: predicted):");
    print!("{}", predict::format_confusion(&out.confusion()));
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let (ck, mut trainer) = load_for_inference(&gpu, &args.checkpoint)?;
    if ck.model.input != [1, 28, 28] {
        let msg = format!("model input {:?} is not a 28x28 grey image", ck.model.input);
        return Err(Error::usage("--checkpoint", msg));
    }
    let mut read = Vec::new();
    for path in &args.images {
        match predict::load_digit(path) {
            Ok(d) => read.push((path, d)),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    let digits: Vec<Vec<u8>> = read.iter().map(|(_, d)| d.clone()).collect();
    let probs = predict::predict_digits(&mut trainer, &digits)?;
    let head: String = (0..10).map(|c| format!("{:>7}", format!("p{c}"))).collect();
    println!("digit{head}  image");
    for (p, (path, _)) in probs.iter().zip(&read) {
        let cols: String = p.iter().map(|v| format!("{v:>7.4}")).collect();
        println!("{:>5}{cols}  {}", predict::argmax(p), path.display());
    }
    let failed = args.images.len() - read.len();
    if failed > 0 {
        let msg = format!("{failed} of {} images could not be read", args.images.len());
        return Err(Error::usage("IMAGE", msg));
    }
    Ok(())
}
