//! Training a language model: the encoded text resident on the GPU, each step one submit
//! that draws B windows of T + 1 tokens there (random.wgsl's text_windows), runs forward,
//! backward and the optimizer, and reads nothing back. Every `eval_every` steps the mean
//! training loss since the last evaluation is read, `eval_batches` fixed held-out batches
//! are evaluated, and a row {step, loss, val_loss, bpc, val_bpc, ...} is reported (and the
//! checkpoint saved). Losses are in nats per character; bpc = loss / ln 2.

use crate::platform::Instant;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::checkpoint::{save, LmCheckpoint, LmPartial};
use super::LmConfig;
use crate::checkpoint::OptimizerState;
use crate::executor::Trainer;
use crate::gpu::Gpu;
use crate::kernels::optim::Optimizer;
use crate::nn::Model as _;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct LmTrainConfig {
    /// Optimizer steps to reach (a resumed run continues up to it).
    pub steps: u64,
    pub batch: usize,
    pub eval_every: u64,
    /// Held-out batches per evaluation (the same windows every time).
    pub eval_batches: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    /// The text's name in the checkpoint (a path, or `default`).
    pub text: String,
    pub save: Option<PathBuf>,
}

/// The text, encoded and split, as the trainer needs it.
pub struct LmData<'a> {
    pub vocab: &'a [char],
    pub train: &'a [u32],
    pub val: &'a [u32],
}

/// A training run: its trainer and its two sources.
pub struct LmRun<'g> {
    pub trainer: Trainer<'g>,
    pub config: LmConfig,
    vocab: Vec<char>,
    pub train_src: usize,
    pub val_src: usize,
    pub history: Vec<Value>,
    /// The report interval in progress: when this process began it, the step it began at
    /// and the seconds an interrupted run had spent in it before.
    interval: (Instant, u64, f64),
    /// An interrupted interval's totals to go on from (a resumed checkpoint's `partial`).
    carried: Option<[f32; crate::kernels::reduce::METRICS_LEN]>,
}

impl<'g> LmRun<'g> {
    /// Upload the text and build the trainer (from `resume`'s parameters and optimizer
    /// state when given).
    pub fn new(
        gpu: &'g Gpu,
        config: LmConfig,
        data: &LmData<'_>,
        cfg: &LmTrainConfig,
        resume: Option<&LmCheckpoint>,
    ) -> Result<Self> {
        if data.vocab.len() != config.vocab() {
            return Err(Error::usage(
                "train",
                format!(
                    "the text has {} distinct characters, the model a vocabulary of {}",
                    data.vocab.len(),
                    config.vocab()
                ),
            ));
        }
        let mut trainer = Trainer::new(gpu, config, cfg.optimizer, cfg.seed)?;
        let mut history = Vec::new();
        let (mut interval, mut carried) = ((Instant::now(), 0, 0.0), None);
        if let Some(ck) = resume {
            trainer.write_params(&ck.params)?;
            if let Some(s) = &ck.state {
                trainer.write_optimizer_state(&s.m, &s.v, ck.steps)?;
            }
            history = ck.history.clone();
            interval.1 = ck.steps;
            if let Some(p) = &ck.partial {
                (interval.1, interval.2, carried) = (p.since, p.seconds, Some(p.metrics));
            }
        }
        let all = [data.train, data.val].concat();
        let text = trainer.add_text(&all)?;
        let train_src = trainer.add_text_source(text, 0, data.train.len())?;
        let val_src = trainer.add_text_source(text, data.train.len(), data.val.len())?;
        Ok(LmRun {
            trainer,
            config,
            vocab: data.vocab.to_vec(),
            train_src,
            val_src,
            history,
            interval,
            carried,
        })
    }

    /// Mean held-out loss over `batches` fixed batches of `batch` windows.
    pub fn val_loss(&mut self, batch: usize, batches: usize) -> Result<f64> {
        self.trainer.reset_metrics();
        for i in 0..batches {
            self.trainer.step(self.val_src, i, batch, false)?;
        }
        let m = self.trainer.read_metrics()?;
        self.trainer.reset_metrics();
        if m.non_finite {
            return Err(Error::usage(
                "evaluate",
                "a held-out loss is NaN or infinite; hint: lower --lr",
            ));
        }
        Ok(m.loss)
    }

    /// Train up to `cfg.steps`, calling `report` with each evaluation row.
    pub fn run(&mut self, cfg: &LmTrainConfig, report: &mut dyn FnMut(&Value)) -> Result<()> {
        self.run_until(cfg, report, &|| false).map(|_| ())
    }

    /// [`LmRun::run`], asking `stop` before each step: false when it stopped the run early
    /// (after a whole step; save with [`LmRun::checkpoint`] to resume from there).
    pub fn run_until(
        &mut self,
        cfg: &LmTrainConfig,
        report: &mut dyn FnMut(&Value),
        stop: &dyn Fn() -> bool,
    ) -> Result<bool> {
        self.interval.0 = Instant::now();
        match self.carried.take() {
            Some(m) => self.trainer.set_metrics_raw(&m),
            None => {
                self.interval = (Instant::now(), self.trainer.steps, 0.0);
                self.trainer.reset_metrics();
            }
        }
        while self.trainer.steps < cfg.steps {
            if stop() {
                return Ok(false);
            }
            self.trainer.step(self.train_src, 0, cfg.batch, true)?;
            let t = self.trainer.steps;
            if !t.is_multiple_of(cfg.eval_every.max(1)) && t != cfg.steps {
                continue;
            }
            let m = self.trainer.read_metrics()?;
            let (start, since, before) = self.interval;
            let seconds = before + start.elapsed().as_secs_f64();
            if m.non_finite {
                return Err(Error::usage("train", format!("the training loss became NaN or infinite by step {t}; hint: lower --lr or set --clip-norm")));
            }
            let val = self.val_loss(cfg.batch, cfg.eval_batches)?;
            let ctx = self.config.context().unwrap_or(1);
            let tokens = (t - since) as f64 * (cfg.batch * ctx) as f64;
            let ln2 = std::f64::consts::LN_2;
            let row = json!({"step": t, "loss": m.loss, "val_loss": val, "bpc": m.loss / ln2,
                "val_bpc": val / ln2, "seconds": seconds, "tokens_per_second": tokens / seconds.max(1e-9)});
            report(&row);
            self.history.push(row);
            self.interval.1 = t; // reported: nothing partial to save
            if let Some(path) = &cfg.save {
                save(path, &self.checkpoint(cfg)?)?;
            }
            self.interval = (Instant::now(), t, 0.0);
        }
        Ok(true)
    }

    /// Per-dispatch timing of one training step (debug aid; see Trainer::profile_step).
    pub fn profile_step(
        &mut self,
        batch: usize,
        repeats: usize,
    ) -> Result<Vec<(&'static str, f64)>> {
        self.trainer
            .profile_step(self.train_src, batch, true, repeats)
    }

    /// The run's state as a checkpoint (between two reports, with what the interval in
    /// progress has counted).
    pub fn checkpoint(&self, cfg: &LmTrainConfig) -> Result<LmCheckpoint> {
        let (m, v) = self.trainer.read_optimizer_state()?;
        let (start, since, before) = self.interval;
        let partial = match self.trainer.steps > since {
            true => Some(LmPartial {
                metrics: self.trainer.metrics_raw()?,
                since,
                seconds: before + start.elapsed().as_secs_f64(),
            }),
            false => None,
        };
        Ok(LmCheckpoint {
            config: self.config,
            vocab: self.vocab.clone(),
            params: self.trainer.read_params()?,
            optimizer: self.trainer.optimizer,
            state: Some(OptimizerState { m, v }),
            steps: self.trainer.steps,
            seed: self.trainer.seed,
            batch_size: cfg.batch,
            text: cfg.text.clone(),
            history: self.history.clone(),
            partial,
        })
    }
}
