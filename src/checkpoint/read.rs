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
use crate::model::Sequential;
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
    let mut tensors = BTreeMap::new();
    let mut meta = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
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
            continue;
        }
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
        if begin > end || end > data.len() {
            return Err(bad(
                path,
                field("data_offsets"),
                format!("[{begin}, {end}] outside the {} data bytes", data.len()),
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
        tensors.insert(name, Entry { shape, begin, end });
    }
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
    if covered != data.len() {
        return Err(bad(
            path,
            "data",
            format!(
                "{} bytes after the last tensor ({prev}) belong to none",
                data.len() - covered
            ),
        ));
    }
    Ok((tensors, meta, data))
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
    let (mut tensors, meta, data) = parse(path, bytes)?;
    let get = |k: &str| meta.get(k).map(String::as_str);
    if let Some(f) = get("format").filter(|f| *f != FORMAT) {
        return Err(bad(
            path,
            "__metadata__.format",
            format!("is {f:?}; this version reads {FORMAT:?}"),
        ));
    }
    let (kind, model) = match (model, get("model")) {
        (Some(m), _) => (get("model").unwrap_or("custom").to_string(), m.clone()),
        (None, Some(k)) => match preset(k) {
            Some(m) => (k.to_string(), m),
            None => {
                return Err(bad(
                    path,
                    "__metadata__.model",
                    format!("{k:?} is not one of {MODEL_KINDS:?}"),
                ))
            }
        },
        (None, None) => infer_kind(&tensors).ok_or_else(|| {
            bad(
                path,
                "__metadata__.model",
                format!("missing, and the tensors match none of the models {MODEL_KINDS:?}"),
            )
        })?,
    };
    if let Some(l) = get("layers").filter(|l| *l != describe_layers(&model)) {
        return Err(bad(
            path,
            "__metadata__.layers",
            format!("{l:?} is not the model's {:?}", describe_layers(&model)),
        ));
    }
    let specs = model.params()?;
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
            format!(
                "is not a tensor of model {kind} ({})",
                describe_layers(&model)
            ),
        ));
    }
    let num = |k: &str, default: u64| -> Result<u64> {
        get(k).map_or(Ok(default), |s| {
            s.parse().map_err(|_| {
                bad(
                    path,
                    format!("__metadata__.{k}"),
                    format!("{s:?} is not an unsigned integer"),
                )
            })
        })
    };
    let json = |k: &str| -> Result<Value> {
        get(k).map_or(Ok(Value::Null), |s| {
            serde_json::from_str(s).map_err(|e| {
                bad(
                    path,
                    format!("__metadata__.{k}"),
                    format!("not valid JSON: {e}"),
                )
            })
        })
    };
    let split = get("validation_split").unwrap_or("0.2");
    let validation_split = split
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..1.0).contains(v))
        .ok_or_else(|| {
            bad(
                path,
                "__metadata__.validation_split",
                format!("{split:?} is not a number in [0, 1)"),
            )
        })?;
    let optimizer = match json("optimizer")? {
        Value::Null => Optimizer::adam(1e-3),
        v => parse_optimizer(&v).ok_or_else(|| bad(path, "__metadata__.optimizer", format!("{v} is not {{\"name\": \"adam\", \"lr\", \"beta1\", \"beta2\", \"epsilon\"}} or {{\"name\": \"sgd\", \"lr\", \"momentum\"}}")))?,
    };
    let history = match json("history")? {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(epoch_log)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                bad(
                    path,
                    "__metadata__.history",
                    "an entry is not an epoch log object",
                )
            })?,
        _ => return Err(bad(path, "__metadata__.history", "not a JSON list")),
    };
    let steps = num("steps", 0)?;
    let to_usize = |k: &str, v: u64| {
        usize::try_from(v).map_err(|_| bad(path, format!("__metadata__.{k}"), "too large"))
    };
    let metrics = json("metrics")?;
    let epoch = to_usize("epoch", num("epoch", 0)?)?;
    match Partial::from_json(&metrics) {
        Err(msg) => return Err(bad(path, "__metadata__.metrics", msg)),
        Ok(Some(p)) if p.epoch != epoch + 1 => {
            return Err(bad(
                path,
                "__metadata__.metrics",
                format!(
                    "interrupted epoch {} does not follow the {epoch} epochs completed",
                    p.epoch
                ),
            ))
        }
        _ => {}
    }
    Ok(Checkpoint {
        kind,
        model,
        params,
        optimizer,
        state,
        steps,
        epoch,
        seed: num("seed", 42)?,
        batch_size: to_usize("batch_size", num("batch_size", 128)?.max(1))?,
        validation_split,
        history,
        metrics,
    })
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
