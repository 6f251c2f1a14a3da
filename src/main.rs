//! The `shadergrad` command line: `info`, `train`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, FitConfig};
use shadergrad::gpu::{describe_adapter, enumerate_adapters, Gpu};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;
use shadergrad::{data, Error, Result};

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
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelKind {
    Cnn,
    Mlp,
    Softmax,
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
    /// Write one JSON object per epoch, then one with the test metrics.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Train(args) => train(args),
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

fn train(args: TrainArgs) -> Result<()> {
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
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let mnist = data::load_mnist(&dir)?;
    let model = match args.model {
        ModelKind::Cnn => Sequential::mnist_cnn(),
        ModelKind::Mlp => Sequential::mnist_mlp(),
        ModelKind::Softmax => Sequential::mnist_softmax(),
    };
    let optimizer = match args.optimizer {
        OptimizerKind::Adam => Optimizer::adam(args.lr),
        OptimizerKind::Sgd => Optimizer::sgd(args.lr, args.momentum),
    };
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    print!("{}", model.summary()?);
    let cfg = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        validation_split: args.validation_split,
        seed: args.seed,
        ..FitConfig::default()
    };
    let mut metrics_out = match &args.metrics_out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let mut write_json = |v: serde_json::Value| -> Result<()> {
        if let (Some(f), Some(p)) = (metrics_out.as_mut(), &args.metrics_out) {
            writeln!(f, "{v}").map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    };

    let mut trainer = Trainer::new(&gpu, model, optimizer, args.seed)?;
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
    for epoch in 1..=cfg.epochs {
        let log = train_epoch(&mut trainer, &split, &cfg, epoch, &|| false)?;
        println!("{}", log.line(cfg.epochs));
        write_json(log.to_json())?;
    }
    let test_set = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let order: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test_set, &order)?;
    let m = trainer.evaluate(test, cfg.batch_size)?;
    println!(
        "test_loss: {:.4} - test_accuracy: {:.4}",
        m.loss, m.accuracy
    );
    write_json(serde_json::json!({ "test_loss": m.loss, "test_accuracy": m.accuracy }))?;
    Ok(())
}
