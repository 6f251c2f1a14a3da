//! The `shadergrad` command line: `info`, `train`, `evaluate`, `predict`, `generate`,
//! `bench`.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use shadergrad::checkpoint::{self, describe_layers, Checkpoint};
use shadergrad::executor::Trainer;
use shadergrad::fit::{
    check_batch, check_params, run_epoch, split_sources, steps_per_epoch, EarlyStopping, EpochEnd,
    EpochLog, FitConfig, Partial, Split,
};
use shadergrad::gpu::{cpu_adapter_warning, describe_adapter, Gpu};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::kernels::random::Augment;
use shadergrad::kernels::Family;
use shadergrad::model::Sequential;
use shadergrad::schedule::{Decay, Schedule};
use shadergrad::{data, plot, predict, Error, Result};

mod lm_cli;

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
    /// Train a model on MNIST or --data-dir (default: the Keras MNIST CNN, Adam 1e-3, batch
    /// 128, 10 epochs).
    Train(Box<TrainArgs>),
    /// Test loss, accuracy and confusion matrix of a checkpoint on the test set (MNIST's, or
    /// that of --data-dir).
    Evaluate(EvaluateArgs),
    /// The class of each PNG image with the class probabilities: digits of any size, grey or
    /// colour, either polarity; or images like an image-folder model's training images.
    Predict(PredictArgs),
    /// Sample text from a language-model checkpoint on the GPU (deterministic for a seed).
    Generate(GenerateArgs),
    /// Kernel microbenchmarks: each kernel checked against its CPU reference, then timed
    /// (min / median / max ms, GFLOP/s, GB/s, % of this adapter's measured roof).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Only rows whose kernel or shape contains PATTERN (the roof always runs).
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Fewer rows and runs (under 2 minutes on lavapipe).
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare with an earlier --json file: ratio per row; exit 1 on a regression.
    #[arg(long, value_name = "OLD.json")]
    compare: Option<PathBuf>,
    /// With --compare: a row regresses when slower beyond both runs' spread and its median,
    /// normalised by each run's roof, is more than this many times the old one.
    #[arg(long, default_value_t = 2.0)]
    threshold: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelKind {
    Cnn,
    Mlp,
    Softmax,
    /// LeNet-5 (ReLU, max pooling).
    Lenet5,
    /// Conv-BatchNorm-ReLU blocks, global average pooling, dropout, dense; unless given,
    /// --epochs 15 --lr 2e-3 --lr-schedule cosine.
    VggSmall,
    /// A decoder-only transformer on characters (--text; sizes --context, --d-model,
    /// --heads, --layers).
    Gpt,
    /// An Elman RNN on characters, unrolled over --context (--hidden units).
    CharRnn,
}

impl ModelKind {
    fn name(self) -> &'static str {
        match self {
            ModelKind::Cnn => "cnn",
            ModelKind::Mlp => "mlp",
            ModelKind::Softmax => "softmax",
            ModelKind::Lenet5 => "lenet5",
            ModelKind::VggSmall => "vgg-small",
            ModelKind::Gpt => "gpt",
            ModelKind::CharRnn => "char-rnn",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerKind {
    Adam,
    /// Adam with decoupled weight decay (--weight-decay, default 0.01).
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleKind {
    Constant,
    /// Multiply the rate by --lr-gamma every --lr-step-epochs epochs.
    Step,
    /// Half a cosine from --lr down to --lr-min over the run's --epochs.
    Cosine,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Samples a step [language models: 16 windows].
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate [language models: 3e-3].
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// SGD: Nesterov momentum (PyTorch's formula; needs --momentum above 0).
    #[arg(long)]
    nesterov: bool,
    /// AdamW's decoupled weight decay: p -= lr * W * p before each update [default: 0.01].
    #[arg(long, value_name = "W")]
    weight_decay: Option<f32>,
    /// Scale the gradient down to this global L2 norm when it is larger (clip_grad_norm_).
    #[arg(long, value_name = "C")]
    clip_norm: Option<f32>,
    /// Learning-rate schedule, evaluated every step [language models: cosine over --steps].
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    lr_schedule: ScheduleKind,
    /// Step schedule: epochs between decays.
    #[arg(long, value_name = "N", default_value_t = 1)]
    lr_step_epochs: usize,
    /// Step schedule: the factor of each decay.
    #[arg(long, value_name = "G", default_value_t = 0.1)]
    lr_gamma: f32,
    /// Cosine schedule: the rate at the end of the last epoch [language models: 1e-4].
    #[arg(long, default_value_t = 0.0)]
    lr_min: f32,
    /// Raise the rate linearly from lr/N to lr over the first N steps (with any schedule)
    /// [language models: 100, at most a quarter of --steps].
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup_steps: u64,
    /// Stop when val_loss has not improved for PATIENCE epochs in a row.
    #[arg(long, value_name = "PATIENCE")]
    early_stopping: Option<usize>,
    /// At the end, restore the parameters and optimizer state of the epoch with the lowest
    /// val_loss: the test metrics and the checkpoint saved are then the best epoch's.
    #[arg(long)]
    restore_best: bool,
    #[arg(long, default_value_t = 0.2)]
    validation_split: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory holding the four IDX files of the MNIST layout (raw or .gz; MNIST,
    /// Fashion-MNIST, ...), or one sub-folder of PNG images per class (or train/ and test/
    /// holding such sub-folders). Default: the vendored MNIST.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shift each training image by up to N pixels each way at random (zeros come in at
    /// the edges), on the GPU; validation and test images are never augmented.
    #[arg(long, value_name = "N", default_value_t = 0)]
    augment_shift: usize,
    /// Flip each training image horizontally with probability 1/2, on the GPU.
    #[arg(long)]
    augment_flip: bool,
    #[arg(long, value_enum, default_value_t = ModelKind::Cnn)]
    model: ModelKind,
    /// Train the model described in this JSON file instead of a named one (see README).
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    model_file: Option<PathBuf>,
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
    /// Language models: the UTF-8 text to train on [default: the shipped corpus,
    /// data/text/].
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Language models: optimizer steps to reach (the total, with --resume).
    #[arg(long, default_value_t = 1200)]
    steps: u64,
    /// Language models: evaluate (and save) every N steps.
    #[arg(long, value_name = "N", default_value_t = 100)]
    eval_every: u64,
    /// Language models: held-out batches per evaluation (always the same windows).
    #[arg(long, value_name = "N", default_value_t = 8)]
    eval_batches: usize,
    /// Language models: context length T (characters per window).
    #[arg(long, value_name = "T", default_value_t = 64)]
    context: usize,
    /// GPT: model width.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// GPT: attention heads (dividing --d-model).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// GPT: transformer blocks.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// char-RNN: hidden units (the embedding is a quarter as wide).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A language-model checkpoint (`train --model gpt --save PATH`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text to continue (characters of the model's vocabulary).
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    /// Softmax temperature; 0 always takes the most likely character.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// IDX files of the MNIST layout or class folders of PNG images, as for train (a
    /// folder without test/ is evaluated whole). Default: the vendored MNIST.
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
    /// PNG images: each holding one digit (MNIST-style models), or for a model trained on
    /// image folders, images like the training ones (same size).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Read each image as it is, at the model's size (grey 28x28 for an IDX set), without
    /// MNIST's digit preparation (crop, 20x20 box, centre of mass): for IDX sets whose
    /// images are not centred digits, such as Fashion-MNIST.
    #[arg(long)]
    as_is: bool,
}

fn main() -> ExitCode {
    // Before any thread or wgpu instance exists.
    shadergrad::gpu::private_runtime_dir();
    if let Some(code) = shadergrad::bench::startup::child_main() {
        return ExitCode::from(code);
    }
    // wgpu's OpenGL backend logs an EGL error ("eglInitialize ... DRI2: failed to load
    // driver") whenever its first display platform fails, before it falls back to a
    // surfaceless display that works: noise on every first run (RUST_LOG shows it again).
    let filter = "error,wgpu_hal::gles::egl=off";
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter)).init();
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
    let mut note = None;
    let result = match cli.command {
        Command::Info => info().map(|()| 0),
        Command::Train(args) => train(*args, &given, &mut note),
        Command::Evaluate(args) => evaluate(args).map(|()| 0),
        Command::Predict(args) => predict(args).map(|()| 0),
        Command::Bench(args) => bench(args),
        Command::Generate(args) => lm_cli::generate_cmd(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(n) = note {
                eprintln!("{n}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM during training: the first one asks the run to stop after
/// the step in progress (and save); a second one ends the process at once.
pub(crate) struct Interrupt {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Interrupt {
    /// Without a handler (the OS refused one) Ctrl-C ends the process as usual: say so and
    /// go on, since training itself is unaffected.
    pub(crate) fn install() -> Interrupt {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it sees the flag before this signal sets it: a second
            // signal ends the process at once.
            let installed =
                signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())
                    .and_then(|_| {
                        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)
                    })
                    .and_then(|_| signal_hook::flag::register(sig, flag.clone()));
            if let Err(e) = installed {
                eprintln!("warning: no handler for signal {sig} ({e}); it will end training without saving");
            }
        }
        Interrupt { flag, signal }
    }

    pub(crate) fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// 130 for SIGINT, 143 for SIGTERM, as a shell reports a process the signal ended.
    pub(crate) fn exit_code(&self) -> u8 {
        match self.signal.load(Ordering::SeqCst) {
            0 => 130,
            s => (128 + s).min(255) as u8,
        }
    }
}

/// Testing aid: `SHADERGRAD_TEST_DESTROY_DEVICE_AT_STEP=N` destroys the device just before
/// the N-th step of this run (1-based), to rehearse a device lost mid-training.
const DESTROY_DEVICE_ENV: &str = "SHADERGRAD_TEST_DESTROY_DEVICE_AT_STEP";

fn info() -> Result<()> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    // Every adapter on the backends of WGPU_BACKEND, or on all backends (OpenGL too).
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
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
        Ok(gpu) => {
            println!("selected: {}", gpu.describe());
            let family = gpu.family();
            let how = match Family::from_env() {
                Ok(Some(_)) => "forced by SHADERGRAD_KERNELS",
                _ => "the adapter's default",
            };
            println!("  kernels: {family} ({how}): {}", family.describe());
            let checks = if shadergrad::gpu::shader_checks() {
                "on"
            } else {
                "off (release build; SHADERGRAD_SHADER_CHECKS=1 turns them on)"
            };
            println!("  shader runtime checks: {checks}");
        }
        Err(e) => println!("selected: none ({e})"),
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<u8> {
    if !(args.threshold.is_finite() && args.threshold >= 1.0) {
        let msg = format!("{} is not a ratio of at least 1", args.threshold);
        return Err(Error::usage("--threshold", msg));
    }
    if let Some(p) = &args.json {
        check_writable("--json", p)?;
    }
    // A bad baseline fails before minutes of measuring.
    let old = match &args.compare {
        Some(p) => Some(shadergrad::bench::Report::read(p)?),
        None => None,
    };
    let gpu = Gpu::new()?;
    if let Some(w) = cpu_adapter_warning(&gpu.info) {
        // Only the GPU half of the warning concerns a benchmark.
        if w.contains("a GPU exists") {
            eprintln!("{w}");
        }
    }
    let opts = shadergrad::bench::Options {
        filter: args.filter.clone(),
        quick: args.quick,
    };
    let report = shadergrad::bench::run(&gpu, &opts)?;
    let failed = report
        .rows
        .iter()
        .filter(|r| r.check.starts_with("FAIL"))
        .count();
    if let Some(p) = &args.json {
        report.write(p)?;
        println!("\nwrote {}", p.display());
    }
    let mut code = 0;
    if let (Some(old), Some(p)) = (&old, &args.compare) {
        let rows = shadergrad::bench::compare(old, &report, args.threshold);
        shadergrad::bench::compare::print(
            &p.display().to_string(),
            old,
            &report,
            &rows,
            args.threshold,
        );
        let regressed: Vec<String> = rows
            .iter()
            .filter(|c| c.verdict == shadergrad::bench::Verdict::Regression)
            .map(|c| format!("{} {} ({:.2}x)", c.kernel, c.shape, c.normalised))
            .collect();
        if !regressed.is_empty() {
            eprintln!(
                "error: {} regressed against {}: {}",
                regressed.len(),
                p.display(),
                regressed.join("; ")
            );
            code = 1;
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} rows FAILED their check against the CPU reference");
        code = 1;
    }
    Ok(code)
}

/// Checks that `path` can take a file written at the end of the first epoch, so that a bad
/// path fails now and not after an epoch of work.
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        let msg = format!("{} is a directory; give a file name", path.display());
        return Err(Error::usage(flag, msg));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let msg = format!(
            "{}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
        return Err(Error::usage(flag, msg));
    }
    Ok(())
}

/// `--model vgg-small`'s own defaults (README): 15 epochs, Adam at 2e-3 decayed along a
/// cosine to 0. Flags given on the command line win; a resumed run keeps its checkpoint's.
fn model_defaults(args: &mut TrainArgs, given: &dyn Fn(&str) -> bool) {
    if !matches!(args.model, ModelKind::VggSmall) || args.resume.is_some() {
        return;
    }
    if !given("epochs") {
        args.epochs = 15;
    }
    if !given("lr") {
        args.lr = 2e-3;
    }
    if !given("lr_schedule") {
        args.lr_schedule = ScheduleKind::Cosine;
    }
}

fn train(
    mut args: TrainArgs,
    given: &dyn Fn(&str) -> bool,
    note: &mut Option<String>,
) -> Result<u8> {
    model_defaults(&mut args, given);
    let resumes_lm = args
        .resume
        .as_deref()
        .is_some_and(shadergrad::lm::checkpoint::is_lm_checkpoint);
    if matches!(args.model, ModelKind::Gpt | ModelKind::CharRnn) || resumes_lm {
        return lm_cli::train(&args, given);
    }
    if let Some(id) = lm_cli::LM_ONLY.iter().find(|id| given(id)) {
        let msg = "is a language-model flag; give --model gpt or --model char-rnn";
        return Err(Error::usage(format!("--{}", id.replace('_', "-")), msg));
    }
    check_train_args(&args)?;
    let mut cfg = FitConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        validation_split: args.validation_split,
        seed: args.seed,
        ..FitConfig::default()
    };
    let resumed = match &args.resume {
        Some(p) => Some(resume_settings(p, &args, &mut cfg, given)?),
        None => None,
    };
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let (data, kind, model) = data_and_model(&args, resumed.as_ref(), &dir)?;
    cfg.classes = resumed
        .as_ref()
        .map_or(data.names.clone(), |c| c.classes.clone());
    let augment = choose_augment(&args, resumed.as_ref(), given)?;
    if !augment.is_off() {
        augment
            .check(model.input)
            .map_err(|e| Error::usage("--augment-shift", e.to_string()))?;
    }
    let optimizer = choose_optimizer(&args, &cfg, data.train.len(), resumed.as_ref(), given)?;
    let early = early_stopping(&args, &cfg)?;
    let gpu = open_gpu_for(&model, &cfg)?;
    let save = args.save.as_ref().or(args.resume.as_ref()).cloned();
    let (kind, resumed) = (kind.as_str(), resumed.as_ref());
    let mut run = Run::start(
        &gpu, &args, kind, model, optimizer, cfg, save, resumed, early,
    )?;
    run.trainer.set_augment(augment)?;
    let split = run.add_training_set(&data.train)?;
    let interrupt = Interrupt::install();
    let should_stop = stop_check(&gpu, &interrupt);
    print_training_set(split.n_train, data.train.len(), &augment);
    let first = resumed.map_or(1, |c| c.epoch + 1);
    let partial = resumed.and_then(Checkpoint::partial);
    let result = match run.epochs(&split, first, partial, &should_stop, &interrupt) {
        Ok(Some(code)) => Ok(code),
        Ok(None) => run.finish(&split, data.test.as_ref()),
        Err(e) => Err(e),
    };
    // On a failure, say what is on disk (the last checkpoint written is never replaced by
    // a failed epoch's state: checkpoints are written only after an epoch that ended well).
    if result.is_err() {
        *note = run.kept.take();
    }
    result
}

/// `--early-stopping` / `--restore-best`, which watch val_loss and so need a validation split.
fn early_stopping(args: &TrainArgs, cfg: &FitConfig) -> Result<EarlyStopping> {
    let early = EarlyStopping::new(args.early_stopping, args.restore_best);
    if early.active() && cfg.validation_split == 0.0 {
        let flag = if args.restore_best {
            "--restore-best"
        } else {
            "--early-stopping"
        };
        return Err(Error::usage(
            flag,
            "watches val_loss, so it needs --validation-split above 0",
        ));
    }
    Ok(early)
}

/// The adapter, said on stdout (with a warning for CPU emulators), and the model's summary,
/// once the batch is known to fit the adapter's limits: before any GPU work.
fn open_gpu_for(model: &Sequential, cfg: &FitConfig) -> Result<Gpu> {
    let gpu = Gpu::new()?;
    println!("adapter: {} - kernels: {}", gpu.describe(), gpu.family());
    if let Some(w) = cpu_adapter_warning(&gpu.info) {
        eprintln!("{w}");
    }
    check_batch(&gpu.limits, model, cfg.batch_size, true)?;
    print!("{}", model.summary()?);
    Ok(gpu)
}

/// Asked after every step: true once Ctrl-C or SIGTERM came. The robustness tests' hook
/// (`DESTROY_DEVICE_ENV` = N) destroys the device at step N to prove a lost device is
/// reported and the last checkpoint kept.
fn stop_check<'a>(gpu: &'a Gpu, interrupt: &'a Interrupt) -> impl Fn() -> bool + 'a {
    let destroy_at: Option<u64> = std::env::var(DESTROY_DEVICE_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let steps_run = Cell::new(0u64);
    move || {
        if interrupt.requested() {
            return true;
        }
        steps_run.set(steps_run.get() + 1);
        if destroy_at == Some(steps_run.get()) {
            gpu.device.destroy();
        }
        false
    }
}

fn print_training_set(n_train: usize, n_all: usize, augment: &Augment) {
    println!(
        "train on {n_train} samples, validate on {}",
        n_all - n_train
    );
    if !augment.is_off() {
        let flip = if augment.flip {
            ", horizontal flips"
        } else {
            ""
        };
        println!(
            "augmenting training batches on the GPU: shifts of up to {} pixels{flip}",
            augment.shift
        );
    }
}

/// The data of `dir` and the model to train on it: a resumed checkpoint's (its folders
/// labelled by its classes, its input the images' size), a model file's (which must fit
/// the data), or a named one (which takes the data's image shape and class count).
fn data_and_model(
    args: &TrainArgs,
    resumed: Option<&Checkpoint>,
    dir: &Path,
) -> Result<(data::ImageData, String, Sequential)> {
    let data = match resumed {
        Some(c) => data::load_data_dir(dir, &c.classes, Some(c.model.input))?,
        None => data::load_data_dir(dir, &[], None)?,
    };
    let (kind, model) = match (resumed, &args.model_file) {
        (Some(c), _) => (c.kind.clone(), c.model.clone()),
        (None, Some(f)) => {
            let model = shadergrad::model_file::load(f)?;
            check_model_classes(f, dir, &data, &model)?;
            (model_file_kind(f), model)
        }
        (None, None) => {
            let kind = args.model.name();
            let model = checkpoint::preset(kind)
                .ok_or_else(|| Error::usage("--model", format!("{kind:?} is not a named model")))?;
            let model = model.for_data(data.train.shape(), data.classes)?;
            (kind.to_string(), model)
        }
    };
    check_image_size(dir, &data, &model)?;
    check_data_classes(dir, &data, &model)?;
    Ok((data, kind, model))
}

/// Refuse bad training flags before anything is loaded.
fn check_train_args(args: &TrainArgs) -> Result<()> {
    let positive = |flag: &str, x: f32| {
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(Error::usage(flag, format!("{x} is not a positive number")))
        }
    };
    if args.epochs == 0 {
        return Err(Error::usage("--epochs", "must be at least 1"));
    }
    if args.batch_size == 0 {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    positive("--lr", args.lr)?;
    if !(0.0..1.0).contains(&args.momentum) {
        return Err(Error::usage(
            "--momentum",
            format!("{} is outside [0, 1)", args.momentum),
        ));
    }
    if !(0.0..1.0).contains(&args.validation_split) {
        return Err(Error::usage(
            "--validation-split",
            format!("{} is outside [0, 1)", args.validation_split),
        ));
    }
    if args.nesterov && !(matches!(args.optimizer, OptimizerKind::Sgd) && args.momentum > 0.0) {
        return Err(Error::usage(
            "--nesterov",
            "needs --optimizer sgd and a --momentum above 0",
        ));
    }
    if let Some(w) = args.weight_decay {
        if !matches!(args.optimizer, OptimizerKind::Adamw) {
            return Err(Error::usage(
                "--weight-decay",
                "only --optimizer adamw takes a (decoupled) weight decay",
            ));
        }
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::usage(
                "--weight-decay",
                format!("{w} is not a number >= 0"),
            ));
        }
    }
    if let Some(c) = args.clip_norm {
        positive("--clip-norm", c)?;
    }
    if args.early_stopping == Some(0) {
        return Err(Error::usage(
            "--early-stopping",
            "the patience must be at least 1 epoch",
        ));
    }
    if let Some(p) = &args.save {
        check_writable("--save", p)?;
    }
    Ok(())
}

/// The optimizer the flags describe, its schedule in steps of epochs of `n` samples.
fn optimizer_from_args(args: &TrainArgs, cfg: &FitConfig, n: usize) -> Result<Optimizer> {
    let per_epoch = steps_per_epoch(n, cfg.validation_split, cfg.batch_size);
    let decay = match args.lr_schedule {
        ScheduleKind::Constant => Decay::Constant,
        ScheduleKind::Step => Decay::Step {
            every: (args.lr_step_epochs as u64).saturating_mul(per_epoch),
            gamma: args.lr_gamma,
        },
        ScheduleKind::Cosine => Decay::Cosine {
            horizon: (cfg.epochs as u64).saturating_mul(per_epoch),
            min_lr: args.lr_min,
        },
    };
    let schedule = Schedule {
        decay,
        warmup: args.warmup_steps,
    };
    schedule.check(args.lr)?;
    let opt = match args.optimizer {
        OptimizerKind::Adam => Optimizer::adam(args.lr),
        OptimizerKind::Adamw => Optimizer::adamw(args.lr, args.weight_decay.unwrap_or(0.01)),
        OptimizerKind::Sgd if args.nesterov => Optimizer::nesterov(args.lr, args.momentum),
        OptimizerKind::Sgd => Optimizer::sgd(args.lr, args.momentum),
    };
    Ok(opt.with_schedule(schedule).with_clip_norm(args.clip_norm))
}

/// The flags' optimizer, or a resumed checkpoint's (flags given must then agree with it).
fn choose_optimizer(
    args: &TrainArgs,
    cfg: &FitConfig,
    n: usize,
    resumed: Option<&Checkpoint>,
    given: &dyn Fn(&str) -> bool,
) -> Result<Optimizer> {
    let optimizer = optimizer_from_args(args, cfg, n)?;
    let Some(ck) = resumed else {
        return Ok(optimizer);
    };
    if OPTIMIZER_FLAGS.iter().any(|id| given(id)) && optimizer != ck.optimizer {
        let flags = OPTIMIZER_FLAGS
            .map(|f| format!("--{}", f.replace('_', "-")))
            .join(", ");
        let msg = format!("differ from the checkpoint's optimizer {}; a resumed run keeps it: leave the flags out", ck.optimizer.to_json());
        return Err(Error::usage(&flags, msg));
    }
    Ok(ck.optimizer)
}

/// The augmentation the flags ask for, or a resumed checkpoint's (flags given must then
/// agree with it).
fn choose_augment(
    args: &TrainArgs,
    resumed: Option<&Checkpoint>,
    given: &dyn Fn(&str) -> bool,
) -> Result<Augment> {
    let flags = Augment {
        shift: args.augment_shift,
        flip: args.augment_flip,
    };
    let Some(ck) = resumed else {
        return Ok(flags);
    };
    if (given("augment_shift") || given("augment_flip")) && flags != ck.augment {
        let msg = format!("differ from the checkpoint's augmentation {}; a resumed run keeps it: leave the flags out", ck.augment.to_json());
        return Err(Error::usage("--augment-shift, --augment-flip", msg));
    }
    Ok(ck.augment)
}

/// The flags that make up the optimizer (clap ids).
const OPTIMIZER_FLAGS: [&str; 11] = [
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "clip_norm",
    "lr_schedule",
    "lr_step_epochs",
    "lr_gamma",
    "lr_min",
    "warmup_steps",
];

/// The metrics log (one JSON object per line) and the training curves beside it.
struct MetricsLog {
    file: Option<(std::fs::File, PathBuf)>,
    curves: Option<PathBuf>,
    title: String,
}

impl MetricsLog {
    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        if let Some((f, p)) = self.file.as_mut() {
            writeln!(f, "{v}").map_err(|e| Error::io(p.as_path(), e))?;
        }
        Ok(())
    }
}

/// A training run under way: the trainer, its settings, what has been logged and saved.
struct Run<'g> {
    trainer: Trainer<'g>,
    kind: String,
    cfg: FitConfig,
    history: Vec<EpochLog>,
    save: Option<PathBuf>,
    log: MetricsLog,
    /// What a failure leaves on disk, for the note after the error.
    kept: Option<String>,
    early: EarlyStopping,
    /// The last epoch that ran to its end.
    last_epoch: usize,
}

impl<'g> Run<'g> {
    /// Open the metrics log, build the trainer and, when resuming, restore the checkpoint.
    #[allow(clippy::too_many_arguments)]
    fn start(
        gpu: &'g Gpu,
        args: &TrainArgs,
        kind: &str,
        model: Sequential,
        optimizer: Optimizer,
        cfg: FitConfig,
        save: Option<PathBuf>,
        resumed: Option<&Checkpoint>,
        early: EarlyStopping,
    ) -> Result<Run<'g>> {
        let log_path = args
            .metrics_out
            .clone()
            .or_else(|| save.as_ref().map(|p| p.with_extension("metrics.jsonl")));
        let file = match &log_path {
            Some(p) => Some((
                std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
                p.clone(),
            )),
            None => None,
        };
        let data_name = args
            .data_dir
            .as_deref()
            .and_then(Path::file_name)
            .map_or("MNIST".into(), |n| n.to_string_lossy().into_owned());
        let title = format!(
            "{kind} on {data_name} ({} parameters), {optimizer:?}, batch {}",
            model.param_count()?,
            cfg.batch_size
        );
        let log = MetricsLog {
            curves: log_path.as_ref().map(|p| p.with_extension("svg")),
            file,
            title,
        };
        let trainer = Trainer::new(gpu, model, optimizer, cfg.seed)?;
        let kept = match (&save, resumed) {
            (Some(p), Some(ck)) if Some(p) == args.resume.as_ref() => Some(format!(
                "{} (the checkpoint resumed from, {}) is left as it was",
                p.display(),
                position(ck.epoch, ck.partial().as_ref())
            )),
            (Some(p), _) => Some(format!(
                "nothing was saved to {}: no epoch had ended",
                p.display()
            )),
            (None, _) => None,
        };
        let mut run = Run {
            trainer,
            kind: kind.to_string(),
            cfg,
            history: Vec::new(),
            save,
            log,
            kept,
            early,
            last_epoch: 0,
        };
        if let (Some(ck), Some(p)) = (resumed, &args.resume) {
            ck.restore(&mut run.trainer)?;
            run.history = ck.history.clone();
            for e in &ck.history {
                run.log.write(e.to_json())?;
            }
            run.early.replay(&ck.history);
            run.last_epoch = ck.epoch;
            println!(
                "resuming {} after {} ({} optimizer steps)",
                p.display(),
                position(ck.epoch, ck.partial().as_ref()),
                ck.steps
            );
        }
        Ok(run)
    }

    /// Upload the training images, split off the validation set, report the plan's memory.
    fn add_training_set(&mut self, train: &data::Split) -> Result<Split> {
        let train_set = self.trainer.add_dataset(&train.images, &train.labels)?;
        let split = split_sources(
            &mut self.trainer,
            train_set,
            train.len(),
            self.cfg.validation_split,
        )?;
        if split.n_train > 0 {
            let batch = self.cfg.batch_size.min(split.n_train);
            let (planned, naive) = self.trainer.activation_memory(split.train, batch)?;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let (store, data) = self.trainer.resident_bytes();
            println!(
                "activation memory: {:.1} MiB ({:.1} MiB without reuse); GPU memory resident: {:.1} MiB (parameters, gradients and optimizer state {:.1}, datasets {:.1}, activations {:.1})",
                mib(planned),
                mib(naive),
                mib(store + data + planned),
                mib(store),
                mib(data),
                mib(planned)
            );
        }
        Ok(split)
    }

    /// Epochs `first..=cfg.epochs` (the first continuing `partial`). `Some(exit code)` when
    /// an interrupt ended the run; `None` when every epoch ran or early stopping ended it.
    fn epochs(
        &mut self,
        split: &Split,
        first: usize,
        mut partial: Option<Partial>,
        should_stop: &dyn Fn() -> bool,
        interrupt: &Interrupt,
    ) -> Result<Option<u8>> {
        for epoch in first..=self.cfg.epochs {
            let from = partial.take();
            let entry = match run_epoch(
                &mut self.trainer,
                split,
                &self.cfg,
                epoch,
                from.as_ref(),
                should_stop,
            )? {
                EpochEnd::Done(entry) => entry,
                EpochEnd::Stopped(p) => {
                    let s = self.save.as_ref();
                    return stopped(
                        &self.trainer,
                        &self.kind,
                        &self.cfg,
                        &self.history,
                        s,
                        p,
                        interrupt,
                        &mut self.kept,
                    )
                    .map(Some);
                }
            };
            let stop = self.end_epoch(entry, split.n_train.div_ceil(self.cfg.batch_size))?;
            if interrupt.requested() {
                let saved = self
                    .save
                    .as_ref()
                    .map_or("nothing saved (no --save)".to_string(), |p| {
                        format!("saved {}", p.display())
                    });
                eprintln!("interrupted after epoch {epoch}; {saved}");
                return Ok(Some(interrupt.exit_code()));
            }
            if stop {
                let (best, loss) = self.early.best().unwrap_or_default();
                let patience = self.early.patience.unwrap_or_default();
                println!("early stopping after epoch {epoch}: val_loss has not improved for {patience} epochs (best {loss:.4} at epoch {best})");
                break;
            }
        }
        Ok(None)
    }

    /// Log, plot and save the epoch that just ended; whether early stopping ends the run.
    fn end_epoch(&mut self, entry: EpochLog, steps: usize) -> Result<bool> {
        let epoch = entry.epoch;
        println!("{}", entry.line(self.cfg.epochs));
        self.log.write(entry.to_json())?;
        self.history.push(entry.clone());
        self.last_epoch = epoch;
        if let Some(p) = &self.log.curves {
            plot::write_curves(p, &self.history, &self.log.title)?;
        }
        match &self.save {
            Some(p) => {
                let metrics = self
                    .history
                    .last()
                    .map(EpochLog::to_json)
                    .unwrap_or_default();
                let ck = Checkpoint::capture(
                    &self.trainer,
                    &self.kind,
                    &self.cfg,
                    epoch,
                    &self.history,
                    metrics,
                )?;
                check_params(&ck.model, &ck.params, epoch, steps)?;
                checkpoint::save(p, &ck)?;
                self.kept = Some(format!(
                    "the last good checkpoint, {} (after epoch {epoch}), is kept",
                    p.display()
                ));
            }
            None => check_params(
                self.trainer.model.as_ref(),
                &self.trainer.read_params()?,
                epoch,
                steps,
            )?,
        }
        self.early.update(&self.trainer, &entry)
    }

    /// Restore the best epoch when asked, evaluate on the test set (when the data has one),
    /// save the final checkpoint.
    fn finish(&mut self, split: &Split, test: Option<&data::Split>) -> Result<u8> {
        let mut epoch = self.last_epoch;
        let mut history = self.history.clone();
        if let Some(best) = self.early.restore(&mut self.trainer)? {
            let loss = self.early.best().map_or(f64::NAN, |b| b.1);
            println!(
                "restored the parameters and optimizer state of epoch {best} (val_loss {loss:.4})"
            );
            epoch = best;
            history.truncate(
                history
                    .iter()
                    .position(|e| e.epoch == best)
                    .map_or(history.len(), |i| i + 1),
            );
        } else if self.early.restore_best {
            println!("--restore-best: no epoch of this run improved on the resumed checkpoint's best; keeping the last parameters");
        }
        let test_json = match test {
            Some(test) => self.test(split, test, epoch)?,
            None => {
                println!("no test set (the data directory has no test/ folder): the validation metrics are the held-out ones");
                serde_json::json!({})
            }
        };
        if let Some(p) = &self.save {
            let mut metrics = history.last().map(EpochLog::to_json).unwrap_or_default();
            if let (Some(obj), Some(test)) = (metrics.as_object_mut(), test_json.as_object()) {
                obj.extend(test.clone());
            }
            let ck = Checkpoint::capture(
                &self.trainer,
                &self.kind,
                &self.cfg,
                epoch,
                &history,
                metrics,
            )?;
            checkpoint::save(p, &ck)?;
            println!("saved {}", p.display());
        }
        if let Some(p) = &self.log.curves {
            println!("curves: {}", p.display());
        }
        Ok(0)
    }
}

impl Run<'_> {
    /// The test metrics of the trained parameters, printed and logged.
    fn test(
        &mut self,
        split: &Split,
        test: &data::Split,
        epoch: usize,
    ) -> Result<serde_json::Value> {
        let test_set = self.trainer.add_dataset(&test.images, &test.labels)?;
        let order: Vec<u32> = (0..test.len() as u32).collect();
        let source = self.trainer.add_source(test_set, &order)?;
        let m = self.trainer.evaluate(source, self.cfg.batch_size)?;
        if m.non_finite || !m.loss.is_finite() {
            return Err(Error::NonFinite {
                what: "test loss (the trained parameters)".into(),
                epoch,
                step: split.n_train.div_ceil(self.cfg.batch_size),
            });
        }
        println!(
            "test_loss: {:.4} - test_accuracy: {:.4}",
            m.loss, m.accuracy
        );
        let test_json = serde_json::json!({ "test_loss": m.loss, "test_accuracy": m.accuracy });
        self.log.write(test_json.clone())?;
        Ok(test_json)
    }
}

/// "epoch 2", "epoch 2 and 7 of the 15 steps of epoch 3", "7 of the 15 steps of epoch 1".
fn position(epoch: usize, partial: Option<&Partial>) -> String {
    match partial {
        Some(p) => {
            let steps = format!("{} of the {} steps of epoch {}", p.step, p.steps, p.epoch);
            match epoch {
                0 => steps,
                _ => format!("epoch {epoch} and {steps}"),
            }
        }
        None => format!("epoch {epoch}"),
    }
}

/// Training was interrupted before step `p.step` of epoch `p.epoch`: save where it stands
/// (when there is somewhere to save) so that `--resume` finishes the epoch exactly as an
/// uninterrupted run would, and return the exit code.
#[allow(clippy::too_many_arguments)]
fn stopped(
    trainer: &Trainer<'_>,
    kind: &str,
    cfg: &FitConfig,
    history: &[EpochLog],
    save: Option<&PathBuf>,
    p: Partial,
    interrupt: &Interrupt,
    kept: &mut Option<String>,
) -> Result<u8> {
    let done = p.epoch - 1;
    let at = if p.step == 0 {
        format!("after epoch {done}")
    } else {
        format!("at epoch {}, step {} of {}", p.epoch, p.step, p.steps)
    };
    let Some(path) = save else {
        eprintln!("interrupted {at}; nothing saved (no --save)");
        return Ok(interrupt.exit_code());
    };
    // At step 0 nothing of the epoch ran: the state is the end of the previous one.
    let (metrics, partial) = if p.step == 0 {
        (
            history.last().map(EpochLog::to_json).unwrap_or_default(),
            None,
        )
    } else {
        (p.to_json(), Some(&p))
    };
    let ck = Checkpoint::capture(trainer, kind, cfg, done, history, metrics)?;
    check_params(&ck.model, &ck.params, p.epoch, p.step)?;
    checkpoint::save(path, &ck)?;
    *kept = None;
    eprintln!(
        "interrupted {at}; saved {} ({}). Continue with: shadergrad train --resume {} --epochs {}",
        path.display(),
        position(done, partial),
        path.display(),
        cfg.epochs
    );
    Ok(interrupt.exit_code())
}

/// Load the checkpoint to resume and take its settings into `cfg`; flags given on the
/// command line must agree with them.
fn resume_settings(
    path: &Path,
    args: &TrainArgs,
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
    let conflicts = [
        ("--model", given("model") && args.model.name() != ck.kind),
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
        // (A checkpoint interrupted in epoch ck.epoch + 1 needs --epochs >= ck.epoch + 1.)
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
fn load_for_inference<'g>(gpu: &'g Gpu, path: &Path, ck: &Checkpoint) -> Result<Trainer<'g>> {
    println!("adapter: {}", gpu.describe());
    let (layers, n) = (describe_layers(&ck.model), ck.model.param_count()?);
    let (kind, epoch) = (&ck.kind, position(ck.epoch, ck.partial().as_ref()));
    println!(
        "checkpoint: {} - model {kind} ({layers}) - {epoch} - {n} parameters",
        path.display()
    );
    ck.trainer(gpu)
}

/// The images must be the size the model takes.
/// The model name a checkpoint records for a model file: its stem, unless that names a
/// preset.
fn model_file_kind(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match checkpoint::preset(&stem) {
        Some(_) | None if stem.is_empty() => "custom".into(),
        Some(_) => format!("{stem}-file"),
        None => stem,
    }
}

fn check_image_size(dir: &Path, data: &data::ImageData, model: &Sequential) -> Result<()> {
    let [c, h, w] = model.input;
    let t = &data.train;
    if t.shape() != model.input {
        let (path, field) = match data::is_idx_dir(dir) {
            true => (dir.join(data::TRAIN_IMAGES), "dims"),
            false => (dir.to_path_buf(), "images"),
        };
        let images = match t.channels {
            1 => format!("{}x{}", t.rows, t.cols),
            n => format!("{n}x{}x{}", t.rows, t.cols),
        };
        let msg = format!("the images are {images} but the model takes {c}x{h}x{w}");
        return Err(Error::data(path, field, msg));
    }
    Ok(())
}

/// The classes a model tells apart: its outputs, or 2 for one sigmoid unit.
fn model_classes(model: &Sequential) -> Result<usize> {
    let outputs = model.outputs()?;
    let sigmoid = model.output_activation() == shadergrad::model::Activation::Sigmoid;
    Ok(if sigmoid && outputs == 1 { 2 } else { outputs })
}

/// The data's labels must be outputs of the model.
fn check_data_classes(dir: &Path, data: &data::ImageData, model: &Sequential) -> Result<()> {
    let outputs = model_classes(model)?;
    if data.classes > outputs {
        let msg = format!(
            "the data has {} classes (labels 0..={}) but the model has {outputs} outputs",
            data.classes,
            data.classes - 1
        );
        return Err(Error::data(dir, "classes", msg));
    }
    Ok(())
}

/// A model file's output must have one unit per class of the data.
fn check_model_classes(
    file: &Path,
    dir: &Path,
    data: &data::ImageData,
    model: &Sequential,
) -> Result<()> {
    let outputs = model_classes(model)?;
    if outputs != data.classes {
        let msg = format!(
            "the model has {outputs} outputs but {} has {} classes; give the last dense layer \"units\": {}",
            dir.display(),
            data.classes,
            data.classes
        );
        return Err(Error::data(file, "layers", msg));
    }
    Ok(())
}

fn evaluate(args: EvaluateArgs) -> Result<()> {
    if args.batch_size == Some(0) {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    // Everything that can be checked without the GPU first.
    let ck = checkpoint::load(&args.checkpoint, None)?;
    let dir = args.data_dir.clone().unwrap_or_else(data::default_data_dir);
    let data = data::load_data_dir(&dir, &ck.classes, Some(ck.model.input))?;
    check_image_size(&dir, &data, &ck.model)?;
    check_data_classes(&dir, &data, &ck.model)?;
    // A folder without test/ is evaluated whole.
    let (set, which) = match &data.test {
        Some(t) => (t, "test"),
        None => (&data.train, "every image of the folder"),
    };
    let batch = args.batch_size.unwrap_or(ck.batch_size);
    let gpu = Gpu::new()?;
    check_batch(&gpu.limits, &ck.model, batch, false)?;
    let mut trainer = load_for_inference(&gpu, &args.checkpoint, &ck)?;
    let test_set = trainer.add_dataset(&set.images, &set.labels)?;
    let order: Vec<u32> = (0..set.len() as u32).collect();
    let test = trainer.add_source(test_set, &order)?;
    let out = predict::infer(&mut trainer, test, batch)?;
    if out.metrics.non_finite || !out.metrics.loss.is_finite() {
        return Err(Error::Checkpoint {
            path: args.checkpoint.clone(),
            field: "parameters".into(),
            msg: "the test loss is NaN or infinite".into(),
        });
    }
    println!(
        "test_loss: {:.4} - test_accuracy: {:.4} ({} images: {which})",
        out.metrics.loss, out.metrics.accuracy, out.metrics.count
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    print!("{}", predict::format_confusion(&out.confusion()));
    if !ck.classes.is_empty() {
        let legend: Vec<String> = ck
            .classes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i} {n}"))
            .collect();
        println!("classes: {}", legend.join(", "));
    }
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    let ck = checkpoint::load(&args.checkpoint, None)?;
    // Image-folder models (and --as-is) read each image as the training folders were
    // read; others read digits the way MNIST was made.
    let folder = !ck.classes.is_empty() || args.as_is;
    if !folder && ck.model.input != [1, 28, 28] {
        let msg = format!("model input {:?} is not a 28x28 grey image, and the checkpoint names no classes of an image folder", ck.model.input);
        return Err(Error::usage("--checkpoint", msg));
    }
    let mut read = Vec::new();
    for path in &args.images {
        let image = match folder {
            true => predict::load_like_folder(path, ck.model.input),
            false => predict::load_digit(path),
        };
        match image {
            Ok(d) => read.push((path, d)),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if read.is_empty() {
        let msg = format!("none of the {} images could be read", args.images.len());
        return Err(Error::usage("IMAGE", msg));
    }
    let gpu = Gpu::new()?;
    let mut trainer = load_for_inference(&gpu, &args.checkpoint, &ck)?;
    let digits: Vec<Vec<u8>> = read.iter().map(|(_, d)| d.clone()).collect();
    check_batch(&gpu.limits, &ck.model, digits.len().clamp(1, 128), false)?;
    let probs = predict::predict_digits(&mut trainer, &digits)?;
    let classes = probs.first().map_or(0, Vec::len);
    let head: String = (0..classes)
        .map(|c| format!("{:>7}", format!("p{c}")))
        .collect();
    let width = ck.classes.iter().map(String::len).max().unwrap_or(0).max(5);
    let name = |c: usize| ck.classes.get(c).cloned().unwrap_or(c.to_string());
    let first = if folder { "class" } else { "digit" };
    let named = !ck.classes.is_empty();
    println!("{first:>width$}{head}  image");
    for (p, (path, _)) in probs.iter().zip(&read) {
        let cols: String = p.iter().map(|v| format!("{v:>7.4}")).collect();
        let class = name(predict::argmax(p));
        println!("{class:>width$}{cols}  {}", path.display());
    }
    if named {
        let legend: Vec<String> = (0..classes).map(|c| format!("p{c} {}", name(c))).collect();
        println!("classes: {}", legend.join(", "));
    }
    let failed = args.images.len() - read.len();
    if failed > 0 {
        let msg = format!("{failed} of {} images could not be read", args.images.len());
        return Err(Error::usage("IMAGE", msg));
    }
    Ok(())
}
