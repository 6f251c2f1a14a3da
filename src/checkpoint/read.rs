//! Reading checkpoints: the container (header length, JSON, dtype F32 only, offsets in
//! range, non-overlapping and covering the data), then the tensors against the model (names,
//! shapes, finite values) and the metadata. Every error names the file and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{
    describe_layers, preset, Checkpoint, OptimizerState, FORMAT, MAX_HEADER_BYTES, MODEL_KINDS,
};
use crate::fit::{EpochLog, Partial};
use crate::kernels::optim::Optimizer;
use crate::kernels::random::Augment;
use crate::model::{ParamSpec, Sequential};
use crate::{Error, Result};

/// One tensor entry of a header, validated against the data section.
struct Entry {
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

fn bad(path: &Path, field: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        field: field.into(),
        msg: msg.into(),
    }
}

/// A parsed container: tensor entries by name, metadata, the data section.
type Container<'a> = (BTreeMap<String, Entry>, BTreeMap<String, String>, &'a [u8]);

/// Parse and check the container: header length, JSON, dtypes, shapes, offsets.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<Container<'a>> {
    let (header, data) = split_header(path, bytes)?;
    let mut tensors = BTreeMap::new();
    let mut meta = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            parse_metadata(path, v, &mut meta)?;
            continue;
        }
        let entry = parse_entry(path, &name, &v, data.len())?;
        tensors.insert(name, entry);
    }
    check_coverage(path, &tensors, data.len())?;
    Ok((tensors, meta, data))
}

/// The 8-byte header length, the JSON header as an object, and the data section after it.
fn split_header<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(serde_json::Map<String, Value>, &'a [u8])> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(bad(
            path,
            "header length",
            format!(
                "file is {} bytes, shorter than the 8-byte header length; not a safetensors file",
                bytes.len()
            ),
        ));
    };
    let n = u64::from_le_bytes(*len);
    if n > MAX_HEADER_BYTES || n > rest.len() as u64 {
        return Err(bad(path, "header length", format!("says {n} bytes but {} follow (limit {MAX_HEADER_BYTES}); the file is truncated or not safetensors", rest.len())));
    }
    let (header, data) = rest.split_at(n as usize);
    let header =
        std::str::from_utf8(header).map_err(|e| bad(path, "header", format!("not UTF-8: {e}")))?;
    let header: Value = serde_json::from_str(header)
        .map_err(|e| bad(path, "header", format!("not valid JSON: {e}")))?;
    let Value::Object(header) = header else {
        return Err(bad(path, "header", "not a JSON object"));
    };
    Ok((header, data))
}

/// `__metadata__`: an object of strings, added to `meta`.
fn parse_metadata(path: &Path, v: Value, meta: &mut BTreeMap<String, String>) -> Result<()> {
    let Value::Object(m) = v else {
        return Err(bad(path, "__metadata__", "not a JSON object"));
    };
    for (k, v) in m {
        let Value::String(s) = v else {
            return Err(bad(
                path,
                format!("__metadata__.{k}"),
                format!("{v} is not a string"),
            ));
        };
        meta.insert(k, s);
    }
    Ok(())
}

/// One tensor's header entry: dtype F32, a shape, offsets in range that hold that shape.
fn parse_entry(path: &Path, name: &str, v: &Value, data_len: usize) -> Result<Entry> {
    let field = |f: &str| format!("{name}.{f}");
    let dtype = v.get("dtype").and_then(Value::as_str);
    if dtype != Some("F32") {
        let found = v
            .get("dtype")
            .map(|d| d.to_string())
            .unwrap_or("nothing".into());
        return Err(bad(
            path,
            field("dtype"),
            format!("is {found}; only F32 is supported"),
        ));
    }
    let uints = |f: &str| -> Option<Vec<usize>> {
        v.get(f)?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect()
    };
    let shape = uints("shape")
        .ok_or_else(|| bad(path, field("shape"), "not a list of non-negative integers"))?;
    let offsets = uints("data_offsets");
    let Some(&[begin, end]) = offsets.as_deref() else {
        return Err(bad(
            path,
            field("data_offsets"),
            "not a pair [begin, end] of non-negative integers",
        ));
    };
    if begin > end || end > data_len {
        return Err(bad(
            path,
            field("data_offsets"),
            format!("[{begin}, {end}] outside the {data_len} data bytes"),
        ));
    }
    let bytes = shape.iter().try_fold(4usize, |a, &d| a.checked_mul(d));
    if bytes != Some(end - begin) {
        return Err(bad(
            path,
            field("data_offsets"),
            format!(
                "[{begin}, {end}] holds {} bytes but F32 shape {shape:?} needs {}",
                end - begin,
                bytes.map_or("too many".into(), |b| b.to_string())
            ),
        ));
    }
    Ok(Entry { shape, begin, end })
}

/// The tensors, in offset order, cover the data section exactly: no overlap, gap or tail.
fn check_coverage(path: &Path, tensors: &BTreeMap<String, Entry>, data_len: usize) -> Result<()> {
    let mut spans: Vec<(&String, &Entry)> = tensors.iter().collect();
    spans.sort_by_key(|(_, e)| (e.begin, e.end));
    let mut covered = 0;
    let mut prev = "the start of the data";
    for (name, e) in spans {
        if e.begin < covered {
            return Err(bad(
                path,
                format!("{name}.data_offsets"),
                format!("[{}, {}] overlaps {prev}", e.begin, e.end),
            ));
        }
        if e.begin > covered {
            return Err(bad(
                path,
                format!("{name}.data_offsets"),
                format!("leaves bytes {covered}..{} unused after {prev}", e.begin),
            ));
        }
        covered = e.end;
        prev = name;
    }
    if covered != data_len {
        return Err(bad(
            path,
            "data",
            format!(
                "{} bytes after the last tensor ({prev}) belong to none",
                data_len - covered
            ),
        ));
    }
    Ok(())
}

/// Load and check a checkpoint. With `model`, the file must hold that model's parameters;
/// without, the model is the preset named by the `model` metadata, or, for files without
/// metadata (exported elsewhere), the preset whose parameter names and shapes they match.
pub fn load(path: &Path, model: Option<&Sequential>) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(path, &bytes, model)
}

/// [`load`] on a file's bytes already read; `path` names them in errors.
pub fn load_bytes(path: &Path, bytes: &[u8], model: Option<&Sequential>) -> Result<Checkpoint> {
    let (tensors, meta, data) = parse(path, bytes)?;
    let m = Meta { path, meta: &meta };
    if let Some(f) = m.get("format").filter(|f| *f != FORMAT) {
        return Err(bad(
            path,
            "__metadata__.format",
            format!("is {f:?}; this version reads {FORMAT:?}"),
        ));
    }
    let (kind, model) = resolve_model(&m, model, &tensors)?;
    let specs = model.params()?;
    let described = describe_layers(&model);
    let (params, state) = read_tensors(path, &kind, &specs, &described, tensors, data)?;
    let validation_split = m.validation_split()?;
    let optimizer = m.optimizer()?;
    let history = m.history()?;
    let steps = m.num("steps", 0)?;
    let metrics = m.json("metrics")?;
    let epoch = m.to_usize("epoch", m.num("epoch", 0)?)?;
    m.check_partial(&metrics, epoch)?;
    let classes = m.classes()?;
    let outputs = model.outputs()?;
    if !classes.is_empty() && classes.len() != outputs {
        let msg = format!(
            "names {} classes but the model has {outputs} outputs",
            classes.len()
        );
        return Err(bad(path, "__metadata__.classes", msg));
    }
    Ok(Checkpoint {
        kind,
        model,
        params,
        optimizer,
        state,
        steps,
        epoch,
        seed: m.num("seed", 42)?,
        batch_size: m.to_usize("batch_size", m.num("batch_size", 128)?.max(1))?,
        validation_split,
        history,
        metrics,
        augment: m.augment()?,
        classes,
    })
}

/// The model kind and model: the caller's, the preset the metadata names, or the preset the
/// tensors match; the `layers` metadata, if any, must describe it.
fn resolve_model(
    m: &Meta,
    model: Option<&Sequential>,
    tensors: &BTreeMap<String, Entry>,
) -> Result<(String, Sequential)> {
    let path = m.path;
    let described = match m.get("model_json") {
        Some(j) => Some(
            crate::model_file::parse(j, path)
                .map_err(|e| bad(path, "__metadata__.model_json", e.to_string()))?,
        ),
        None => None,
    };
    let (kind, model) = match (model, m.get("model")) {
        (Some(model), _) => (
            m.get("model").unwrap_or("custom").to_string(),
            model.clone(),
        ),
        (None, Some(k)) => match (described, preset(k)) {
            (Some(model), _) | (None, Some(model)) => (k.to_string(), model),
            (None, None) => {
                return Err(bad(
                    path,
                    "__metadata__.model",
                    format!("{k:?} is not one of {MODEL_KINDS:?} and the file has no model_json"),
                ))
            }
        },
        (None, None) => infer_kind(tensors).ok_or_else(|| {
            bad(
                path,
                "__metadata__.model",
                format!("missing, and the tensors match none of the models {MODEL_KINDS:?}"),
            )
        })?,
    };
    if let Some(l) = m.get("layers").filter(|l| *l != describe_layers(&model)) {
        return Err(bad(
            path,
            "__metadata__.layers",
            format!("{l:?} is not the model's {:?}", describe_layers(&model)),
        ));
    }
    Ok((kind, model))
}

/// The model's parameters and, when the file has any `optimizer.` tensor, the optimizer
/// state, each checked for name, shape and finite values; no other tensor may remain.
/// A file's metadata, parameters and optimizer state (when it has one).
pub type LoadedTensors = (
    BTreeMap<String, String>,
    Vec<Vec<f32>>,
    Option<OptimizerState>,
);

/// A checkpoint of any model: its metadata, then its parameters (and optimizer state, when
/// the file has one) read against `specs`; `kind` and `described` name the model in errors.
pub fn load_tensors(
    path: &Path,
    bytes: &[u8],
    kind: &str,
    specs: &[ParamSpec],
    described: &str,
) -> Result<LoadedTensors> {
    let (tensors, meta, data) = parse(path, bytes)?;
    let (params, state) = read_tensors(path, kind, specs, described, tensors, data)?;
    Ok((meta, params, state))
}

/// The metadata alone (to learn which model a file holds before reading its tensors).
pub fn load_metadata(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    Ok(parse(path, bytes)?.1)
}

fn read_tensors(
    path: &Path,
    kind: &str,
    specs: &[ParamSpec],
    described: &str,
    mut tensors: BTreeMap<String, Entry>,
    data: &[u8],
) -> Result<(Vec<Vec<f32>>, Option<OptimizerState>)> {
    let has_state = tensors.keys().any(|k| k.starts_with("optimizer."));
    let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let e = tensors.remove(name).ok_or_else(|| {
            bad(
                path,
                name,
                format!("missing; model {kind} needs it with shape {shape:?}"),
            )
        })?;
        if e.shape != shape {
            return Err(bad(
                path,
                format!("{name}.shape"),
                format!("is {:?}; model {kind} needs {shape:?}", e.shape),
            ));
        }
        let values: Vec<f32> = data[e.begin..e.end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(bad(
                path,
                name,
                format!("value {i} is {v}; weights must be finite"),
            ));
        }
        Ok(values)
    };
    let params = specs
        .iter()
        .map(|s| take(&s.name, &s.shape))
        .collect::<Result<Vec<_>>>()?;
    let state = if has_state {
        let mut all = |p: &str| {
            specs
                .iter()
                .map(|s| take(&format!("{p}{}", s.name), &s.shape))
                .collect::<Result<Vec<_>>>()
        };
        Some(OptimizerState {
            m: all("optimizer.m.")?,
            v: all("optimizer.v.")?,
        })
    } else {
        None
    };
    if let Some(name) = tensors.keys().next() {
        return Err(bad(
            path,
            name,
            format!("is not a tensor of model {kind} ({described})"),
        ));
    }
    Ok((params, state))
}

/// The string metadata of a file, read field by field; errors name `__metadata__.<field>`.
struct Meta<'a> {
    path: &'a Path,
    meta: &'a BTreeMap<String, String>,
}

impl Meta<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.meta.get(k).map(String::as_str)
    }

    fn bad(&self, k: &str, msg: impl Into<String>) -> Error {
        bad(self.path, format!("__metadata__.{k}"), msg)
    }

    /// An unsigned integer field, `default` when absent.
    fn num(&self, k: &str, default: u64) -> Result<u64> {
        self.get(k).map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| self.bad(k, format!("{s:?} is not an unsigned integer")))
        })
    }

    /// A JSON field, null when absent.
    fn json(&self, k: &str) -> Result<Value> {
        self.get(k).map_or(Ok(Value::Null), |s| {
            serde_json::from_str(s).map_err(|e| self.bad(k, format!("not valid JSON: {e}")))
        })
    }

    fn to_usize(&self, k: &str, v: u64) -> Result<usize> {
        usize::try_from(v).map_err(|_| self.bad(k, "too large"))
    }

    fn validation_split(&self) -> Result<f64> {
        let split = self.get("validation_split").unwrap_or("0.2");
        split
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..1.0).contains(v))
            .ok_or_else(|| {
                self.bad(
                    "validation_split",
                    format!("{split:?} is not a number in [0, 1)"),
                )
            })
    }

    fn optimizer(&self) -> Result<Optimizer> {
        Ok(match self.json("optimizer")? {
            Value::Null => Optimizer::adam(1e-3),
            v => parse_optimizer(&v).ok_or_else(|| self.bad("optimizer", format!("{v} is not {{\"name\": \"adam\", \"lr\", \"beta1\", \"beta2\", \"epsilon\"}} or {{\"name\": \"sgd\", \"lr\", \"momentum\"}}")))?,
        })
    }

    fn augment(&self) -> Result<Augment> {
        match self.json("augment")? {
            Value::Null => Ok(Augment::default()),
            v => Augment::from_json(&v).ok_or_else(|| {
                self.bad(
                    "augment",
                    format!("{v} is not {{\"shift\": <pixels>, \"flip\": true|false}}"),
                )
            }),
        }
    }

    /// The class names, in label order: distinct, non-empty strings.
    fn classes(&self) -> Result<Vec<String>> {
        let v = self.json("classes")?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        let names: Option<Vec<String>> = v
            .as_array()
            .and_then(|a| a.iter().map(|n| n.as_str().map(String::from)).collect());
        let names = names.ok_or_else(|| self.bad("classes", "not a JSON list of strings"))?;
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        if names.iter().any(String::is_empty) || distinct.len() != names.len() {
            return Err(self.bad("classes", "the class names must be distinct and non-empty"));
        }
        Ok(names)
    }

    fn history(&self) -> Result<Vec<EpochLog>> {
        match self.json("history")? {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(epoch_log)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad("history", "an entry is not an epoch log object")),
            _ => Err(self.bad("history", "not a JSON list")),
        }
    }

    /// An interrupted epoch in `metrics` must be the one after the `epoch` completed.
    fn check_partial(&self, metrics: &Value, epoch: usize) -> Result<()> {
        match Partial::from_json(metrics) {
            Err(msg) => Err(self.bad("metrics", msg)),
            Ok(Some(p)) if p.epoch != epoch + 1 => Err(self.bad(
                "metrics",
                format!(
                    "interrupted epoch {} does not follow the {epoch} epochs completed",
                    p.epoch
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The preset whose parameter names and shapes are exactly the file's (optimizer tensors
/// aside).
fn infer_kind(tensors: &BTreeMap<String, Entry>) -> Option<(String, Sequential)> {
    let mut names: Vec<(&str, &[usize])> = tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("optimizer."))
        .map(|(k, e)| (k.as_str(), &e.shape[..]))
        .collect();
    names.sort();
    MODEL_KINDS.iter().find_map(|k| {
        let m = preset(k)?;
        let specs = m.params().ok()?;
        let mut want: Vec<(&str, &[usize])> = specs
            .iter()
            .map(|s| (s.name.as_str(), &s.shape[..]))
            .collect();
        want.sort();
        (want == names).then(|| (k.to_string(), m))
    })
}

fn parse_optimizer(v: &Value) -> Option<Optimizer> {
    Optimizer::from_json(v)
}

/// The inverse of [`EpochLog::to_json`].
pub fn epoch_log(v: &Value) -> Option<EpochLog> {
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    Some(EpochLog {
        epoch: usize::try_from(v.get("epoch")?.as_u64()?).ok()?,
        loss: f("loss")?,
        accuracy: f("accuracy")?,
        val_loss: f("val_loss"),
        val_accuracy: f("val_accuracy"),
        seconds: f("seconds").unwrap_or(0.0),
        images_per_second: f("images_per_second").unwrap_or(0.0),
    })
}
