//! Language-model checkpoints: the same safetensors container as the image models'
//! (checkpoint.rs), with nanoGPT's or `torch.nn.RNN`'s parameter names and layouts, the
//! optimizer state as `optimizer.m.<name>` / `optimizer.v.<name>`, and metadata holding the
//! architecture (`lm`), the vocabulary (`vocab`, a JSON string of its characters in id
//! order), the step count, seed and evaluation history (and, for a run interrupted between
//! two reports, `partial`: the metrics counted since the last). Written atomically; every field is
//! checked on load, and errors name the file and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::LmConfig;
use crate::checkpoint::{
    load_metadata, load_tensors, serialize, write_atomic, OptimizerState, FORMAT,
};
use crate::kernels::optim::Optimizer;
use crate::model::ParamSpec;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct LmCheckpoint {
    pub config: LmConfig,
    /// Token id -> character.
    pub vocab: Vec<char>,
    pub params: Vec<Vec<f32>>,
    pub optimizer: Optimizer,
    /// `None` for weights-only files (which generate but cannot resume).
    pub state: Option<OptimizerState>,
    /// Optimizer updates applied so far.
    pub steps: u64,
    pub seed: u64,
    pub batch_size: usize,
    /// The text trained on (a path, or `default` for the shipped corpus).
    pub text: String,
    /// One JSON object per evaluation (step, loss, val_loss, bpc, val_bpc, ...).
    pub history: Vec<Value>,
    /// For a run saved between two reports (interrupted): what it had counted since the
    /// last, so that the resumed run's next report is the uninterrupted run's.
    pub partial: Option<LmPartial>,
}

/// The training metrics of an interval cut short: the trainer's raw running totals, the
/// step the interval began at, and the seconds spent in it.
#[derive(Clone, Debug, PartialEq)]
pub struct LmPartial {
    pub metrics: [f32; crate::kernels::reduce::METRICS_LEN],
    pub since: u64,
    pub seconds: f64,
}

impl LmPartial {
    /// As the `partial` metadata holds it: the totals as their f32 bit patterns (exact).
    fn to_json(&self) -> Value {
        let bits: Vec<u32> = self.metrics.iter().map(|v| v.to_bits()).collect();
        serde_json::json!({"metrics_bits": bits, "since": self.since, "seconds": self.seconds})
    }

    fn from_json(v: &Value) -> std::result::Result<LmPartial, String> {
        let bits: Vec<u32> = v
            .get("metrics_bits")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64()?.try_into().ok())
                    .collect()
            })
            .unwrap_or_default();
        let metrics: [u32; crate::kernels::reduce::METRICS_LEN] =
            bits.try_into().map_err(|_| {
                "metrics_bits: expected 4 unsigned 32-bit integers (f32 bit patterns)".to_string()
            })?;
        let since = v.get("since").and_then(Value::as_u64);
        let seconds = v.get("seconds").and_then(Value::as_f64);
        match (since, seconds) {
            (Some(since), Some(seconds)) if seconds >= 0.0 => Ok(LmPartial {
                metrics: metrics.map(f32::from_bits),
                since,
                seconds,
            }),
            _ => Err("expected since (a step) and seconds (a non-negative number)".into()),
        }
    }
}

/// The parameter specs of `config`, in registration order.
pub fn specs(config: &LmConfig) -> Result<Vec<ParamSpec>> {
    crate::nn::params(config)
}

fn bad(path: &Path, field: &str, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        field: field.into(),
        msg: msg.into(),
    }
}

impl LmCheckpoint {
    fn metadata(&self) -> Vec<(String, String)> {
        let vocab: String = self.vocab.iter().collect();
        [
            ("format", FORMAT.to_string()),
            ("model", self.config.kind().to_string()),
            ("lm", self.config.to_json().to_string()),
            ("vocab", Value::String(vocab).to_string()),
            ("optimizer", self.optimizer.to_json().to_string()),
            ("steps", self.steps.to_string()),
            ("seed", self.seed.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("text", self.text.clone()),
            ("history", Value::Array(self.history.clone()).to_string()),
        ]
        .into_iter()
        .chain(
            self.partial
                .as_ref()
                .map(|p| ("partial", p.to_json().to_string())),
        )
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let specs = specs(&self.config)?;
        serialize(&specs, &self.params, self.state.as_ref(), self.metadata())
    }
}

/// Write `ck` to `path` atomically; non-finite weights are refused and `path` left as it was.
pub fn save(path: &Path, ck: &LmCheckpoint) -> Result<()> {
    let specs = specs(&ck.config)?;
    for (s, v) in specs.iter().zip(&ck.params) {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(path, &s.name, format!("value {i} is {}: refusing to write non-finite weights; the file is left as it was", v[i])));
        }
    }
    write_atomic(path, &ck.to_bytes()?)
}

/// Whether the file at `path` holds a language model (its `model` metadata is `gpt` or
/// `char-rnn`); false for image-model checkpoints and unreadable files.
pub fn is_lm_checkpoint(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    load_metadata(path, &bytes)
        .map(|m| matches!(m.get("model").map(String::as_str), Some("gpt" | "char-rnn")))
        .unwrap_or(false)
}

/// Read a language-model checkpoint, checking every field.
pub fn load(path: &Path) -> Result<LmCheckpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let meta = Meta {
        path,
        map: load_metadata(path, &bytes)?,
    };
    if meta.get("format")? != FORMAT {
        let msg = format!(
            "is {:?}; this version reads {FORMAT:?}",
            meta.get("format")?
        );
        return Err(meta.bad("format", msg));
    }
    let config = LmConfig::from_json(
        &format!("{}: __metadata__.lm", path.display()),
        &meta.json("lm")?,
    )?;
    let vocab = meta.vocab(&config)?;
    let optimizer = Optimizer::from_json(&meta.json("optimizer")?)
        .ok_or_else(|| meta.bad("optimizer", "not an optimizer description"))?;
    let history = match meta.json("history")? {
        Value::Array(a) => a,
        _ => return Err(meta.bad("history", "expected a JSON array")),
    };
    let steps = meta.num("steps")?;
    let partial = meta.partial(steps)?;
    let specs = specs(&config)?;
    let described = config.to_json().to_string();
    let (_, params, state) = load_tensors(path, &bytes, config.kind(), &specs, &described)?;
    Ok(LmCheckpoint {
        config,
        vocab,
        params,
        optimizer,
        state,
        steps,
        seed: meta.num("seed")?,
        batch_size: meta.num("batch_size")?.max(1) as usize,
        text: meta.get("text")?.clone(),
        history,
        partial,
    })
}

/// A checkpoint's `__metadata__`, read field by field; every error names the file and the
/// field.
struct Meta<'a> {
    path: &'a Path,
    map: BTreeMap<String, String>,
}

impl Meta<'_> {
    fn bad(&self, key: &str, msg: impl Into<String>) -> Error {
        bad(self.path, &format!("__metadata__.{key}"), msg)
    }

    fn get(&self, key: &str) -> Result<&String> {
        self.map.get(key).ok_or_else(|| self.bad(key, "missing; expected a language-model checkpoint (written by `train --model gpt` or `--model char-rnn`)"))
    }

    fn json(&self, key: &str) -> Result<Value> {
        serde_json::from_str(self.get(key)?)
            .map_err(|e| self.bad(key, format!("not valid JSON: {e}")))
    }

    fn num(&self, key: &str) -> Result<u64> {
        self.get(key)?
            .parse()
            .map_err(|_| self.bad(key, "expected an unsigned integer"))
    }

    /// `vocab`: a JSON string of the model's vocabulary, one character per token.
    fn vocab(&self, config: &LmConfig) -> Result<Vec<char>> {
        let vocab: Vec<char> = match self.json("vocab")? {
            Value::String(s) => s.chars().collect(),
            _ => {
                let msg = "expected a JSON string of the vocabulary's characters";
                return Err(self.bad("vocab", msg));
            }
        };
        if vocab.len() != config.vocab() {
            let msg = format!(
                "has {} characters; the model's vocabulary is {}",
                vocab.len(),
                config.vocab()
            );
            return Err(self.bad("vocab", msg));
        }
        Ok(vocab)
    }

    /// `partial` (optional): the metrics counted since the last report, which must begin
    /// before the checkpoint's step.
    fn partial(&self, steps: u64) -> Result<Option<LmPartial>> {
        if !self.map.contains_key("partial") {
            return Ok(None);
        }
        let p =
            LmPartial::from_json(&self.json("partial")?).map_err(|why| self.bad("partial", why))?;
        if p.since >= steps {
            let msg = format!(
                "begins at step {}, not before the checkpoint's {steps}",
                p.since
            );
            return Err(self.bad("partial", msg));
        }
        Ok(Some(p))
    }
}
