//! `fit` and `evaluate` as Keras does them: validation split taken from the end of the
//! training set before any shuffling, a seeded reshuffle every epoch, one line per epoch,
//! and metrics read from the GPU only every `log_every` steps and at epoch end.

use std::io::IsTerminal;
use std::time::Instant;

use crate::executor::{Metrics, Trainer};
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
    let n_train = (n as f64 * (1.0 - validation_split)) as usize;
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

fn check_finite(m: &Metrics, epoch: usize, step: usize) -> Result<()> {
    if m.non_finite {
        return Err(Error::NonFinite {
            what: "loss".into(),
            epoch,
            step,
        });
    }
    Ok(())
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
    trainer.set_order(split.train, &epoch_order(cfg.seed, epoch, split.n_train))?;
    trainer.reset_metrics();
    let steps = split.n_train.div_ceil(cfg.batch_size);
    let bar = progress_bar(cfg, steps, epoch);
    let mut seen = 0;
    for step in 0..steps {
        if should_stop() {
            break;
        }
        let start = step * cfg.batch_size;
        let batch = cfg.batch_size.min(split.n_train - start);
        trainer.step(split.train, start, batch, true)?;
        seen += batch;
        if (step + 1) % cfg.log_every.max(1) == 0 || step + 1 == steps {
            let m = trainer.read_metrics()?;
            check_finite(&m, epoch, step + 1)?;
            if let Some(bar) = &bar {
                bar.set_position(step as u64 + 1);
                bar.set_message(format!("loss: {:.4} - accuracy: {:.4}", m.loss, m.accuracy));
            }
        }
    }
    let train = trainer.read_metrics()?;
    check_finite(&train, epoch, steps)?;
    let train_seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let val = match split.val {
        Some(v) => Some(trainer.evaluate(v, cfg.batch_size)?),
        None => None,
    };
    Ok(EpochLog {
        epoch,
        loss: train.loss,
        accuracy: train.accuracy,
        val_loss: val.map(|m| m.loss),
        val_accuracy: val.map(|m| m.accuracy),
        seconds: started.elapsed().as_secs_f64(),
        images_per_second: seen as f64 / train_seconds.max(1e-9),
    })
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
