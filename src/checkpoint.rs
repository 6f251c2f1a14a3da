//! Checkpoints in safetensors: 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`, then the raw
//! little-endian data. Parameters keep the PyTorch names and layouts of
//! [`Sequential::params`] (`conv.weight` `[32, 1, 3, 3]`, `fc1.weight` `[128, 5408]`, ...), so
//! `safetensors` in Python loads them as they are; the optimizer state travels alongside as
//! `optimizer.m.<name>` and `optimizer.v.<name>` so that a run resumes exactly.
//!
//! Writing goes through the `safetensors` crate; reading is this module's own, checking every
//! field (header length, JSON, dtype F32 only, offsets in range, non-overlapping and covering
//! the data, shapes against the model, finite values) and naming the field in its error.
//! Every write is atomic: temporary file, fsync, rename, fsync of the directory.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::executor::Trainer;
use crate::fit::{first_non_finite, EpochLog, FitConfig, Partial};
use crate::gpu::Gpu;
use crate::kernels::conv2d::Padding;
use crate::kernels::optim::Optimizer;
use crate::kernels::random::Augment;
use crate::model::{Activation, Layer, ParamSpec, Sequential};
use crate::{Error, Result};

mod read;
pub use read::{epoch_log, load, load_bytes, load_metadata, load_tensors};

/// The `format` metadata of the files this module writes.
pub const FORMAT: &str = "shadergrad-1";
/// Largest header accepted (the limit of the reference implementation).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The preset models a checkpoint can name in its `model` metadata.
pub const MODEL_KINDS: [&str; 5] = ["cnn", "mlp", "softmax", "lenet5", "vgg-small"];

/// The preset model called `kind` (`cnn`, `mlp`, `softmax`).
pub fn preset(kind: &str) -> Option<Sequential> {
    match kind {
        "cnn" => Some(Sequential::mnist_cnn()),
        "mlp" => Some(Sequential::mnist_mlp()),
        "softmax" => Some(Sequential::mnist_softmax()),
        "lenet5" => Some(Sequential::lenet5()),
        "vgg-small" => Some(Sequential::vgg_small()),
        _ => None,
    }
}

/// A readable layer list, e.g. `Input(1x28x28) -> Flatten -> Dense(10, softmax)`.
pub fn describe_layers(model: &Sequential) -> String {
    let act = |a: &Activation| format!("{a:?}").to_lowercase();
    let [c, h, w] = model.input;
    let mut parts = vec![format!("Input({c}x{h}x{w})")];
    for layer in &model.layers {
        parts.push(match layer {
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => {
                let pad = if *padding == Padding::Same {
                    "same"
                } else {
                    "valid"
                };
                let stride = match stride {
                    1 => String::new(),
                    s => format!(", stride {s}"),
                };
                format!(
                    "Conv2D({filters}, {kernel}x{kernel}, {}, {pad}{stride})",
                    act(activation)
                )
            }
            Layer::MaxPool2d { pool, stride } => {
                format!("MaxPooling2D({pool}x{pool}, stride {stride})")
            }
            Layer::AvgPool2d { pool, stride } => {
                format!("AveragePooling2D({pool}x{pool}, stride {stride})")
            }
            Layer::Dropout { rate } => format!("Dropout({rate})"),
            Layer::BatchNorm | Layer::GlobalAvgPool2d => layer.kind().into(),
            Layer::Flatten => "Flatten".into(),
            Layer::Dense { units, activation } => format!("Dense({units}, {})", act(activation)),
            Layer::Activation(_) => layer.kind().into(),
        });
    }
    parts.join(" -> ")
}

/// Adam's first and second moments (SGD keeps its velocity in `m`), per parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// Everything a checkpoint holds. `state` is `None` for weights-only files (which can be
/// evaluated and used to predict but not resumed).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// `cnn`, `mlp`, `softmax`, or `custom` for a model passed to [`load`].
    pub kind: String,
    pub model: Sequential,
    /// In [`Sequential::params`] order.
    pub params: Vec<Vec<f32>>,
    pub optimizer: Optimizer,
    pub state: Option<OptimizerState>,
    /// Optimizer updates applied so far (Adam's t).
    pub steps: u64,
    /// Epochs completed.
    pub epoch: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub validation_split: f64,
    /// One entry per completed epoch.
    pub history: Vec<EpochLog>,
    /// The last epoch's metrics (plus `test_loss`, `test_accuracy` once the test set ran).
    pub metrics: Value,
    /// The training batches' augmentation (off when the metadata has no `augment`).
    pub augment: Augment,
    /// The class names in label order (`classes` metadata); empty when the data named none.
    pub classes: Vec<String>,
}

impl Checkpoint {
    /// Parameters, optimizer state and step count of `trainer` after `epoch` epochs.
    pub fn capture(
        trainer: &Trainer<'_>,
        kind: &str,
        cfg: &FitConfig,
        epoch: usize,
        history: &[EpochLog],
        metrics: Value,
    ) -> Result<Checkpoint> {
        let ckpt = Self::capture_async(trainer, kind, cfg, epoch, history, metrics);
        crate::platform::block_on("Checkpoint::capture", ckpt)
    }

    /// [`Checkpoint::capture`]'s async core.
    pub async fn capture_async(
        trainer: &Trainer<'_>,
        kind: &str,
        cfg: &FitConfig,
        epoch: usize,
        history: &[EpochLog],
        metrics: Value,
    ) -> Result<Checkpoint> {
        let (m, v) = trainer.read_optimizer_state_async().await?;
        Ok(Checkpoint {
            kind: kind.into(),
            model: trainer.model.as_sequential().cloned().ok_or_else(|| {
                crate::Error::usage(
                    "checkpoint",
                    "only Sequential models are saved in checkpoints",
                )
            })?,
            params: trainer.read_params_async().await?,
            optimizer: trainer.optimizer,
            state: Some(OptimizerState { m, v }),
            steps: trainer.steps,
            epoch,
            seed: cfg.seed,
            batch_size: cfg.batch_size,
            validation_split: cfg.validation_split,
            history: history.to_vec(),
            metrics,
            augment: trainer.augment(),
            classes: cfg.classes.clone(),
        })
    }

    /// Where the epoch after `epoch` stopped, for a checkpoint written when training was
    /// interrupted mid-epoch (its `metrics` then say `"interrupted": true`); `None` for one
    /// written at an epoch's end. [`load`] has checked it.
    pub fn partial(&self) -> Option<Partial> {
        Partial::from_json(&self.metrics).ok().flatten()
    }

    /// Load the parameters (and, when present, the optimizer state and step count) into a
    /// trainer built for the same model.
    pub fn restore(&self, trainer: &mut Trainer<'_>) -> Result<()> {
        trainer.write_params(&self.params)?;
        // The run's seed keys its dropout and augmentation streams: a resumed run draws
        // the same masks and shifts.
        trainer.seed = self.seed;
        trainer.set_augment(self.augment)?;
        if let Some(s) = &self.state {
            trainer.write_optimizer_state(&s.m, &s.v, self.steps)?;
        }
        Ok(())
    }

    /// A trainer holding this checkpoint's model, parameters and optimizer state.
    pub fn trainer<'g>(&self, gpu: &'g Gpu) -> Result<Trainer<'g>> {
        let mut trainer = Trainer::new(gpu, self.model.clone(), self.optimizer, self.seed)?;
        self.restore(&mut trainer)?;
        Ok(trainer)
    }

    /// The file's bytes (what [`save`] writes).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let specs = self.model.params()?;
        serialize(&specs, &self.params, self.state.as_ref(), self.metadata())
    }
}

/// The safetensors bytes of parameters `params` named and shaped by `specs`, the optimizer
/// state (when given) as `optimizer.m.<name>` and `optimizer.v.<name>`, and `meta`.
pub fn serialize(
    specs: &[ParamSpec],
    params: &[Vec<f32>],
    state: Option<&OptimizerState>,
    meta: Vec<(String, String)>,
) -> Result<Vec<u8>> {
    let mut groups: Vec<(&str, &[Vec<f32>])> = vec![("", params)];
    if let Some(s) = state {
        groups.extend([("optimizer.m.", &s.m[..]), ("optimizer.v.", &s.v[..])]);
    }
    let mut views = Vec::new();
    for (prefix, values) in groups {
        if values.len() != specs.len() {
            return Err(Error::shape(
                "checkpoint",
                format!(
                    "{} {prefix}tensors for {} parameters",
                    values.len(),
                    specs.len()
                ),
            ));
        }
        for (s, v) in specs.iter().zip(values) {
            if v.len() != s.numel() {
                return Err(Error::shape(
                    "checkpoint",
                    format!(
                        "{prefix}{} has {} values, shape {:?}",
                        s.name,
                        v.len(),
                        s.shape
                    ),
                ));
            }
            views.push((
                format!("{prefix}{}", s.name),
                F32View {
                    shape: s.shape.clone(),
                    data: v,
                },
            ));
        }
    }
    safetensors::serialize(views, Some(meta.into_iter().collect()))
        .map_err(|e| Error::shape("checkpoint", format!("safetensors serialisation: {e:?}")))
}

impl Checkpoint {
    fn metadata(&self) -> Vec<(String, String)> {
        let history: Vec<Value> = self.history.iter().map(EpochLog::to_json).collect();
        [
            ("format", FORMAT.to_string()),
            ("model", self.kind.clone()),
            ("layers", describe_layers(&self.model)),
            ("epoch", self.epoch.to_string()),
            ("steps", self.steps.to_string()),
            ("seed", self.seed.to_string()),
            ("batch_size", self.batch_size.to_string()),
            ("validation_split", self.validation_split.to_string()),
            ("optimizer", self.optimizer.to_json().to_string()),
            ("metrics", self.metrics.to_string()),
            ("history", Value::Array(history).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        // Augmentation and class names only when there are any (older files have neither).
        .chain((!self.augment.is_off()).then(|| {
            let aug = self.augment.to_json().to_string();
            ("augment".to_string(), aug)
        }))
        .chain((!self.classes.is_empty()).then(|| {
            let names = serde_json::json!(self.classes).to_string();
            ("classes".to_string(), names)
        }))
        // A model that is no preset carries its description (model_file.rs's JSON).
        .chain((preset(&self.kind).as_ref() != Some(&self.model)).then(|| {
            (
                "model_json".to_string(),
                crate::model_file::to_json(&self.model),
            )
        }))
        .collect()
    }
}

/// One f32 tensor as the `safetensors` crate serialises it (little-endian).
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Write `ckpt` to `path` atomically. Non-finite parameters are refused (and `path` left as
/// it was): a checkpoint is only ever replaced by one that loads.
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<()> {
    if let Some(at) = first_non_finite(&ckpt.model, &ckpt.params)? {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            field: at.split('[').next().unwrap_or_default().to_string(),
            msg: format!("{at}: refusing to write non-finite weights; the file is left as it was"),
        });
    }
    write_atomic(path, &ckpt.to_bytes()?)
}

/// The temporary file a write to `path` goes through: `PATH.tmp`, in the same directory.
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage("path", format!("{} names no file", path.display())))?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Replace `path` with `bytes` so that a crash at any moment leaves either the old file or
/// the new one, never a mixture: write `PATH.tmp`, fsync it, rename it over `path`, fsync
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the content written by `fill`; an error from it leaves `path`
/// untouched and removes the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        fill(&mut f).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable. Directories cannot be opened for fsync everywhere
    // (Windows), and the data is already in place, so this one is best effort.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
