//! `fit` and `evaluate` as Keras does them: validation split taken from the end of the
//! training set before any shuffling, a seeded reshuffle every epoch, one line per epoch,
//! and metrics read from the GPU only every `log_every` steps and at epoch end.

use std::io::IsTerminal;

use crate::executor::{Metrics, Trainer};
use crate::kernels::reduce::METRICS_LEN;
use crate::kernels::LOOP_BUDGET;
use crate::model::{Layer, Sequential};
use crate::nn::Model;
use crate::platform::Instant;
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Fraction of the training set, taken from its end, held out for validation.
    pub validation_split: f64,
    pub seed: u64,
    /// Steps between metric reads for the progress bar.
    pub log_every: usize,
    /// Show a progress bar (only when stdout is a terminal) and print epoch lines.
    pub verbose: bool,
    /// The class names in label order (an image folder's sub-folders), saved with the
    /// checkpoints; empty when the data names none (IDX files).
    pub classes: Vec<String>,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 10,
            batch_size: 128,
            validation_split: 0.2,
            seed: 42,
            log_every: 25,
            verbose: true,
            classes: Vec::new(),
        }
    }
}

/// One epoch's results, as the metrics log writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
    pub images_per_second: f64,
}

impl EpochLog {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        })
    }

    pub fn line(&self, epochs: usize) -> String {
        let mut s = format!(
            "Epoch {}/{} - {:.1}s - {:.0} img/s - loss: {:.4} - accuracy: {:.4}",
            self.epoch, epochs, self.seconds, self.images_per_second, self.loss, self.accuracy
        );
        if let (Some(l), Some(a)) = (self.val_loss, self.val_accuracy) {
            s += &format!(" - val_loss: {l:.4} - val_accuracy: {a:.4}");
        }
        s
    }
}

/// Train and validation sources over dataset `dataset` of `n` samples, split Keras-style.
pub struct Split {
    pub train: usize,
    pub val: Option<usize>,
    pub n_train: usize,
}

pub fn split_sources(
    trainer: &mut Trainer<'_>,
    dataset: usize,
    n: usize,
    validation_split: f64,
) -> Result<Split> {
    if !(0.0..1.0).contains(&validation_split) {
        return Err(Error::usage(
            "--validation-split",
            format!("{validation_split} is outside [0, 1)"),
        ));
    }
    let n_train = train_len(n, validation_split);
    if n_train == 0 {
        return Err(Error::usage(
            "--validation-split",
            format!("leaves no training samples of {n}"),
        ));
    }
    let train: Vec<u32> = (0..n_train as u32).collect();
    let val: Vec<u32> = (n_train as u32..n as u32).collect();
    let train = trainer.add_source(dataset, &train)?;
    let val = if val.is_empty() {
        None
    } else {
        Some(trainer.add_source(dataset, &val)?)
    };
    Ok(Split {
        train,
        val,
        n_train,
    })
}

/// Training samples of `n` once the last `validation_split` of them are held out.
pub fn train_len(n: usize, validation_split: f64) -> usize {
    (n as f64 * (1.0 - validation_split)) as usize
}

/// Optimizer steps in an epoch of `n` samples (the last batch may be short).
pub fn steps_per_epoch(n: usize, validation_split: f64, batch_size: usize) -> u64 {
    train_len(n, validation_split).div_ceil(batch_size.max(1)) as u64
}

/// The parameters, optimizer state and update count after the best epoch so far.
struct Snapshot {
    params: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    steps: u64,
}

/// Early stopping on `val_loss`, as Keras's `EarlyStopping(monitor="val_loss",
/// patience=PATIENCE, restore_best_weights=...)`: an epoch improves when its validation loss
/// is below the best so far; training stops once `patience` epochs in a row did not.
/// With `restore_best` the best epoch's parameters and optimizer state are kept (on the
/// host) and [`EarlyStopping::restore`] puts them back.
pub struct EarlyStopping {
    /// `None`: never stop (only keep the best, with `restore_best`).
    pub patience: Option<usize>,
    pub restore_best: bool,
    best: Option<(usize, f64)>,
    wait: usize,
    snapshot: Option<(usize, Snapshot)>,
}

impl EarlyStopping {
    pub fn new(patience: Option<usize>, restore_best: bool) -> Self {
        EarlyStopping {
            patience,
            restore_best,
            best: None,
            wait: 0,
            snapshot: None,
        }
    }

    /// Whether this does anything at all.
    pub fn active(&self) -> bool {
        self.patience.is_some() || self.restore_best
    }

    /// The best epoch so far and its validation loss.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best
    }

    /// The epoch whose state [`EarlyStopping::restore`] would put back.
    pub fn snapshot_epoch(&self) -> Option<usize> {
        self.snapshot.as_ref().map(|(e, _)| *e)
    }

    fn observe(&mut self, epoch: usize, val_loss: f64) -> bool {
        let improved = self.best.is_none_or(|(_, b)| val_loss < b);
        if improved {
            self.best = Some((epoch, val_loss));
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        improved
    }

    /// Replay the epochs of a resumed run (their parameters are gone: only the best loss
    /// and the count of epochs without improvement carry over).
    pub fn replay(&mut self, history: &[EpochLog]) {
        for e in history {
            if let Some(l) = e.val_loss {
                self.observe(e.epoch, l);
            }
        }
    }

    /// After epoch `log.epoch`: note its validation loss, snapshot the trainer when it is
    /// the best and `restore_best`, and say whether training should stop now.
    pub fn update(&mut self, trainer: &Trainer<'_>, log: &EpochLog) -> Result<bool> {
        let Some(val_loss) = log.val_loss else {
            return Ok(false);
        };
        if self.observe(log.epoch, val_loss) && self.restore_best {
            let (m, v) = trainer.read_optimizer_state()?;
            let snap = Snapshot {
                params: trainer.read_params()?,
                m,
                v,
                steps: trainer.steps,
            };
            self.snapshot = Some((log.epoch, snap));
        }
        Ok(self.patience.is_some_and(|p| self.wait >= p))
    }

    /// Put the best epoch's parameters and optimizer state back into `trainer`; its epoch,
    /// or `None` when there is no snapshot (no `restore_best`, or the best epoch came
    /// before a resume).
    pub fn restore(&self, trainer: &mut Trainer<'_>) -> Result<Option<usize>> {
        let Some((epoch, s)) = &self.snapshot else {
            return Ok(None);
        };
        trainer.write_params(&s.params)?;
        trainer.write_optimizer_state(&s.m, &s.v, s.steps)?;
        Ok(Some(*epoch))
    }
}

/// The shuffled order of epoch `epoch` (1-based): a function of seed and epoch only, so a
/// resumed run shuffles exactly as an uninterrupted one.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    Rng::new(
        seed.wrapping_mul(0x100_0000_01B3)
            .wrapping_add(epoch as u64),
    )
    .shuffle(&mut order);
    order
}

/// Err when the metrics read after `step` saw a NaN or infinite loss. The GPU flags any
/// non-finite per-sample loss (metrics`[3]`); a sum of finite losses that overflows f32 is
/// caught here. `since` is the first step the read covers (the one after the last read).
fn check_finite(m: &Metrics, epoch: usize, since: usize, step: usize) -> Result<()> {
    let steps = if since >= step {
        format!("step {step}")
    } else {
        format!("one of steps {since}..={step}")
    };
    let what = if m.non_finite {
        format!("loss (NaN or Inf in {steps})")
    } else if !m.loss.is_finite() || !m.accuracy.is_finite() {
        format!("loss (the running loss total overflowed f32 by {steps})")
    } else {
        return Ok(());
    };
    Err(Error::NonFinite { what, epoch, step })
}

/// The first parameter value that is NaN or infinite, as `name[index] = value`; `params`
/// in [`crate::model::Sequential::params`] order.
pub fn first_non_finite(model: &dyn Model, params: &[Vec<f32>]) -> Result<Option<String>> {
    let specs = crate::nn::params(model)?;
    for (spec, values) in specs.iter().zip(params) {
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Ok(Some(format!("{}[{i}] = {v}", spec.name)));
        }
    }
    Ok(None)
}

/// Err ([`Error::NonFinite`]) when a parameter is NaN or infinite. The GPU only flags
/// non-finite *losses*: a parameter that goes non-finite reaches the loss at the next step
/// (except where a ReLU hides it), so this host check runs where the parameters are read
/// back anyway (before every checkpoint) and at every epoch end.
pub fn check_params(
    model: &dyn Model,
    params: &[Vec<f32>],
    epoch: usize,
    step: usize,
) -> Result<()> {
    match first_non_finite(model, params)? {
        Some(at) => Err(Error::NonFinite {
            what: format!("parameter ({at})"),
            epoch,
            step,
        }),
        None => Ok(()),
    }
}

/// A GPU fault or timeout during training, with the epoch and step it surfaced at.
fn at_step(e: Error, epoch: usize, step: usize) -> Error {
    let at = |op: String| format!("{op} (training epoch {epoch}, step {step})");
    match e {
        Error::Gpu { op, msg } => Error::Gpu { op: at(op), msg },
        Error::Timeout { op, seconds } => Error::Timeout {
            op: at(op),
            seconds,
        },
        e => e,
    }
}

/// Where an interrupted epoch stopped: the steps done and its running training metrics, so
/// that [`run_epoch`] can finish it later exactly as if it had not stopped (same shuffle,
/// same batches, same updates).
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// The epoch (1-based) that was interrupted.
    pub epoch: usize,
    /// Steps of it done (batches of the checkpoint's batch size).
    pub step: usize,
    /// Its steps in all.
    pub steps: usize,
    /// Mean training loss and accuracy over its `count` samples so far.
    pub loss: f64,
    pub accuracy: f64,
    pub count: usize,
    /// Seconds spent on it so far.
    pub seconds: f64,
    /// The trainer's raw running totals (f32 bit patterns; see
    /// [`Trainer::metrics_raw`]): put back on resume, the epoch's metrics come out as an
    /// uninterrupted run's, to the bit. `None` in checkpoints written before they were
    /// kept (the means above are merged then).
    pub totals: Option<[u32; METRICS_LEN]>,
}

impl Partial {
    /// As a checkpoint's `metrics` holds it (`"interrupted": true` marks it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "interrupted": true,
            "epoch": self.epoch,
            "step": self.step,
            "steps": self.steps,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "count": self.count,
            "seconds": self.seconds,
            "totals_bits": self.totals,
        })
    }

    /// `Ok(None)` for metrics without `"interrupted": true`; `Err(why)` for a malformed one.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Option<Partial>, String> {
        if v.get("interrupted") != Some(&serde_json::Value::Bool(true)) {
            return Ok(None);
        }
        let u = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| format!("interrupted epoch: {k} is not an unsigned integer"))
        };
        let f = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| format!("interrupted epoch: {k} is not a number"))
        };
        let totals = match v.get("totals_bits") {
            None | Some(serde_json::Value::Null) => None,
            Some(t) => Some(
                serde_json::from_value::<[u32; METRICS_LEN]>(t.clone()).map_err(|_| {
                    "interrupted epoch: totals_bits is not 4 unsigned 32-bit integers".to_string()
                })?,
            ),
        };
        let p = Partial {
            epoch: u("epoch")?,
            step: u("step")?,
            steps: u("steps")?,
            loss: f("loss")?,
            accuracy: f("accuracy")?,
            count: u("count")?,
            seconds: f("seconds")?,
            totals,
        };
        if p.epoch == 0 || p.step == 0 || p.step >= p.steps {
            return Err(format!(
                "interrupted epoch: epoch {} step {} of {} is not inside an epoch",
                p.epoch, p.step, p.steps
            ));
        }
        Ok(Some(p))
    }
}

/// How [`run_epoch`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum EpochEnd {
    /// Every step ran, then validation.
    Done(EpochLog),
    /// `should_stop` answered true between two steps; no validation ran.
    Stopped(Partial),
}

/// One batch-size limit of a step: the largest batch it allows, what it is, the limit and
/// what a batch of `batch` would need.
struct BatchLimit {
    largest: usize,
    what: String,
    limit: u64,
    needs: u64,
}

/// The limits a step of `model` at `batch` (training when `train`) must respect, from its
/// shapes alone: the largest activation buffer against the storage binding and buffer size
/// limits, and the loop budgets of the batch-wide reductions (the metrics invocation loops
/// over B x (C + 1); a dense layer's bias gradient sums 2B values).
fn batch_limits(
    limits: &wgpu::Limits,
    model: &Sequential,
    batch: usize,
    train: bool,
) -> Result<Vec<BatchLimit>> {
    let shapes = model.shapes()?;
    let mut per_sample = vec![(
        format!("input {:?}", model.input),
        model.input.iter().product::<usize>(),
    )];
    for (layer, shape) in model.layers.iter().zip(&shapes) {
        let n: usize = shape.iter().product();
        per_sample.push((format!("{} output {shape:?}", layer.kind()), n));
    }
    // The first of the largest: the earliest buffer of that size is the one allocated first.
    let (name, elems) = per_sample
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .unwrap_or_default();
    let bytes = 4 * elems.max(1) as u64;
    let binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let classes = model.outputs()?;
    let mut out = vec![
        BatchLimit {
            largest: (binding / bytes) as usize,
            what: format!(
                "storage buffer binding size (bytes) for the batch's {name} f32 activations"
            ),
            limit: binding,
            needs: (batch as u64).saturating_mul(bytes),
        },
        BatchLimit {
            largest: LOOP_BUDGET / (classes + 1),
            what: format!("loop iterations of the one metrics invocation (batch x (classes + 1), {classes} classes)"),
            limit: LOOP_BUDGET as u64,
            needs: (batch as u64).saturating_mul(classes as u64 + 1),
        },
    ];
    if train
        && model
            .layers
            .iter()
            .any(|l| matches!(l, Layer::Dense { .. }))
    {
        out.push(BatchLimit {
            largest: LOOP_BUDGET / 2,
            what: "loop iterations of a dense bias gradient (2 x batch)".into(),
            limit: LOOP_BUDGET as u64,
            needs: (batch as u64).saturating_mul(2),
        });
    }
    Ok(out)
}

/// The largest batch size [`check_batch`] accepts for `model` on an adapter with `limits`.
pub fn max_batch(limits: &wgpu::Limits, model: &Sequential, train: bool) -> Result<usize> {
    Ok(batch_limits(limits, model, 1, train)?
        .iter()
        .map(|l| l.largest)
        .min()
        .unwrap_or(0))
}

/// Refuse, before any GPU work, a batch size whose step would exceed one of the adapter's
/// limits, naming the limit and the largest batch that fits (see [`max_batch`]). The kernel
/// wrappers check the same limits again, and the few that depend on more than the batch
/// size, when the step is compiled.
pub fn check_batch(
    limits: &wgpu::Limits,
    model: &Sequential,
    batch: usize,
    train: bool,
) -> Result<()> {
    let all = batch_limits(limits, model, batch, train)?;
    let largest = all.iter().map(|l| l.largest).min().unwrap_or(0);
    let Some(l) = all.into_iter().find(|l| batch > l.largest) else {
        return Ok(());
    };
    let hint = if largest == 0 {
        "this adapter cannot run this model at any batch size; choose another adapter with WGPU_BACKEND or WGPU_ADAPTER_NAME".to_string()
    } else {
        format!(
            "use --batch-size {largest} or less, the largest this adapter allows for this model"
        )
    };
    Err(Error::Limit {
        op: format!("batch size {batch}"),
        what: l.what,
        requested: l.needs,
        limit: l.limit,
        hint,
    })
}

/// Train one epoch (1-based `epoch`) over `split`, then validate. `should_stop` is polled
/// between steps (Ctrl-C); when it answers true the epoch ends early with what it has.
pub fn train_epoch(
    trainer: &mut Trainer<'_>,
    split: &Split,
    cfg: &FitConfig,
    epoch: usize,
    should_stop: &dyn Fn() -> bool,
) -> Result<EpochLog> {
    let started = Instant::now();
    match run_epoch(trainer, split, cfg, epoch, None, should_stop)? {
        EpochEnd::Done(log) => Ok(log),
        EpochEnd::Stopped(p) => {
            let val = validate(trainer, split, cfg, epoch, p.step)?;
            Ok(EpochLog {
                epoch,
                loss: p.loss,
                accuracy: p.accuracy,
                val_loss: val.map(|m| m.loss),
                val_accuracy: val.map(|m| m.accuracy),
                seconds: started.elapsed().as_secs_f64(),
                images_per_second: p.count as f64 / p.seconds.max(1e-9),
            })
        }
    }
}

fn validate(
    trainer: &mut Trainer<'_>,
    split: &Split,
    cfg: &FitConfig,
    epoch: usize,
    step: usize,
) -> Result<Option<Metrics>> {
    let Some(v) = split.val else {
        return Ok(None);
    };
    let m = trainer
        .evaluate(v, cfg.batch_size)
        .map_err(|e| at_step(e, epoch, step))?;
    if m.non_finite || !m.loss.is_finite() {
        return Err(Error::NonFinite {
            what: "validation loss (the parameters after the epoch's last step)".into(),
            epoch,
            step,
        });
    }
    Ok(Some(m))
}

/// Train epoch `epoch` (1-based) over `split`, or the rest of it after `from` (an epoch
/// interrupted earlier, at the same batch size: the same shuffle, so the remaining steps
/// are exactly those an uninterrupted run would take), then validate. `should_stop` is
/// polled before every step; when it answers true the epoch stops there and
/// [`EpochEnd::Stopped`] says where, for a checkpoint to resume from. The loss flag is
/// checked every `log_every` steps and at the end (an [`Error::NonFinite`] naming the epoch
/// and the step); the validation loss too.
pub fn run_epoch(
    trainer: &mut Trainer<'_>,
    split: &Split,
    cfg: &FitConfig,
    epoch: usize,
    from: Option<&Partial>,
    should_stop: &dyn Fn() -> bool,
) -> Result<EpochEnd> {
    let started = Instant::now();
    let steps = split.n_train.div_ceil(cfg.batch_size);
    let first = resume_step(from, epoch, steps)?;
    let prev_seconds = from.map_or(0.0, |p| p.seconds);
    trainer.set_order(split.train, &epoch_order(cfg.seed, epoch, split.n_train))?;
    // The interrupted part's totals, when kept, go on accumulating where they stopped.
    let carried = from.and_then(|p| p.totals);
    match carried {
        Some(t) => trainer.set_metrics_raw(&t.map(f32::from_bits)),
        None => trainer.reset_metrics(),
    }
    let bar = progress_bar(cfg, steps, epoch);
    if let Some(bar) = &bar {
        bar.set_position(first as u64);
    }
    let Progress {
        seen,
        checked,
        done,
    } = train_steps(
        trainer,
        split,
        cfg,
        epoch,
        first..steps,
        bar.as_ref(),
        should_stop,
    )?;
    let now = trainer
        .read_metrics()
        .map_err(|e| at_step(e, epoch, done))?;
    if done > checked {
        check_finite(&now, epoch, checked + 1, done)?;
    }
    let train_seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (loss, accuracy, count) = match carried {
        Some(_) => (now.loss, now.accuracy, now.count),
        None => merge_partial(from, &now),
    };
    if done < steps {
        let totals = trainer.metrics_raw()?.map(f32::to_bits);
        return Ok(EpochEnd::Stopped(Partial {
            epoch,
            step: done,
            steps,
            loss,
            accuracy,
            count,
            seconds: prev_seconds + train_seconds,
            totals: Some(totals),
        }));
    }
    let val = validate(trainer, split, cfg, epoch, done)?;
    Ok(EpochEnd::Done(EpochLog {
        epoch,
        loss,
        accuracy,
        val_loss: val.map(|m| m.loss),
        val_accuracy: val.map(|m| m.accuracy),
        seconds: prev_seconds + started.elapsed().as_secs_f64(),
        images_per_second: seen as f64 / train_seconds.max(1e-9),
    }))
}

/// How far an epoch's steps went: images seen, steps covered by the last finite-loss check,
/// steps done.
struct Progress {
    seen: usize,
    checked: usize,
    done: usize,
}

/// Steps `range` of epoch `epoch`, until `should_stop` answers true; the loss flag read and
/// checked every `log_every` steps and at the last step, the progress bar moved then.
fn train_steps(
    trainer: &mut Trainer<'_>,
    split: &Split,
    cfg: &FitConfig,
    epoch: usize,
    range: std::ops::Range<usize>,
    bar: Option<&indicatif::ProgressBar>,
    should_stop: &dyn Fn() -> bool,
) -> Result<Progress> {
    let steps = range.end;
    let (mut seen, mut checked, mut done) = (0, range.start, range.start);
    for step in range {
        if should_stop() {
            break;
        }
        let start = step * cfg.batch_size;
        let batch = cfg.batch_size.min(split.n_train - start);
        trainer
            .step(split.train, start, batch, true)
            .map_err(|e| at_step(e, epoch, step + 1))?;
        seen += batch;
        done = step + 1;
        if done % cfg.log_every.max(1) == 0 || done == steps {
            let m = trainer
                .read_metrics()
                .map_err(|e| at_step(e, epoch, done))?;
            check_finite(&m, epoch, checked + 1, done)?;
            checked = done;
            if let Some(bar) = bar {
                bar.set_position(done as u64);
                bar.set_message(format!("loss: {:.4} - accuracy: {:.4}", m.loss, m.accuracy));
            }
        }
    }
    Ok(Progress {
        seen,
        checked,
        done,
    })
}

/// The step to start epoch `epoch` at: 0, or where `from` (an interrupted epoch) stopped,
/// which must be this epoch with the same number of steps.
fn resume_step(from: Option<&Partial>, epoch: usize, steps: usize) -> Result<usize> {
    Ok(match from {
        Some(p) if p.epoch != epoch || p.steps != steps || p.step >= steps => {
            return Err(Error::usage(
                "--resume",
                format!(
                    "the checkpoint stopped at step {} of {} of epoch {}, but epoch {epoch} has {steps} steps here (a different data set?)",
                    p.step, p.steps, p.epoch
                ),
            ))
        }
        Some(p) => p.step,
        None => 0,
    })
}

/// Mean loss, accuracy and count over the epoch: `now` (this run's metrics) merged with
/// what `from` (the interrupted part, if any) had counted.
fn merge_partial(from: Option<&Partial>, now: &Metrics) -> (f64, f64, usize) {
    let (prev_loss, prev_correct, prev_count) = from.map_or((0.0, 0.0, 0), |p| {
        (
            p.loss * p.count as f64,
            p.accuracy * p.count as f64,
            p.count,
        )
    });
    let count = prev_count + now.count;
    let (loss, accuracy) = if prev_count == 0 {
        (now.loss, now.accuracy)
    } else {
        let denom = count as f64;
        (
            (prev_loss + now.loss * now.count as f64) / denom,
            (prev_correct + now.accuracy * now.count as f64) / denom,
        )
    };
    (loss, accuracy, count)
}

fn progress_bar(cfg: &FitConfig, steps: usize, epoch: usize) -> Option<indicatif::ProgressBar> {
    if !cfg.verbose || !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style = indicatif::ProgressStyle::with_template(
        "Epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{}/{}", epoch, cfg.epochs));
    Some(bar)
}

/// The examples' whole run: upload `mnist`'s training set, hold out `cfg.validation_split`,
/// train `cfg.epochs` epochs printing each epoch's line, then evaluate the test set.
/// Returns the test metrics and the seconds spent training.
pub fn fit_and_test(
    trainer: &mut Trainer<'_>,
    mnist: &crate::data::Mnist,
    cfg: &FitConfig,
) -> Result<(Metrics, f64)> {
    let train = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let split = split_sources(trainer, train, mnist.train.len(), cfg.validation_split)?;
    let started = Instant::now();
    for epoch in 1..=cfg.epochs {
        // One epoch: a seeded reshuffle, one submit per batch, then validation.
        let log = train_epoch(trainer, &split, cfg, epoch, &|| false)?;
        println!("{}", log.line(cfg.epochs));
    }
    let seconds = started.elapsed().as_secs_f64();
    let test = trainer.add_dataset(&mnist.test.images, &mnist.test.labels)?;
    let all: Vec<u32> = (0..mnist.test.len() as u32).collect();
    let test = trainer.add_source(test, &all)?;
    Ok((trainer.evaluate(test, 1000)?, seconds))
}
