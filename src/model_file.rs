//! Model description files: a `Sequential` as JSON, so users train their own models without
//! writing Rust (`shadergrad train --model-file model.json`), and checkpoints of such models
//! carry their description.
//!
//! ```json
//! {"input": `[1, 28, 28]`,
//!  "layers": [{"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same", "activation": "relu"},
//!             {"type": "batchnorm"}, {"type": "maxpool2d", "pool": 2},
//!             {"type": "dropout", "rate": 0.25}, {"type": "flatten"},
//!             {"type": "dense", "units": 10, "activation": "softmax"}]}
//! ```
//! Layer types: conv2d (filters, kernel, stride = 1, padding = valid|same, activation),
//! maxpool2d and avgpool2d (pool, stride = pool), globalavgpool2d, flatten, dense (units,
//! activation), batchnorm, dropout (rate), activation (activation). Activations: linear,
//! relu, sigmoid, softmax, tanh, gelu, leaky_relu. Every error names the file, the field
//! (`layers[2].units`) and what was expected.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::kernels::conv2d::Padding;
use crate::model::{Activation, Layer, Sequential};
use crate::{Error, Result};

const ACTIVATIONS: [(&str, Activation); 7] = [
    ("linear", Activation::Linear),
    ("relu", Activation::Relu),
    ("sigmoid", Activation::Sigmoid),
    ("softmax", Activation::Softmax),
    ("tanh", Activation::Tanh),
    ("gelu", Activation::Gelu),
    ("leaky_relu", Activation::LeakyRelu),
];

/// Read and check a model file (its layers' shapes included).
pub fn load(path: &Path) -> Result<Sequential> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, path)
}

/// Parse a model description; `origin` names it in errors.
pub fn parse(text: &str, origin: &Path) -> Result<Sequential> {
    let bad = |field: &str, msg: String| Error::data(origin, field, msg);
    let v: Value = serde_json::from_str(text).map_err(|e| bad("json", e.to_string()))?;
    let obj = v.as_object().ok_or_else(|| {
        bad(
            "(top level)",
            "expected an object with \"input\" and \"layers\"".into(),
        )
    })?;
    check_keys(obj, &["input", "layers"], "", &bad)?;
    let input = obj
        .get("input")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 3)
        .and_then(|a| a.iter().map(positive).collect::<Option<Vec<_>>>())
        .ok_or_else(|| {
            bad(
                "input",
                "expected [C, H, W], three positive integers".into(),
            )
        })?;
    let layers = obj
        .get("layers")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("layers", "expected a non-empty list of layers".into()))?;
    let mut model = Sequential::new([input[0], input[1], input[2]]);
    for (i, l) in layers.iter().enumerate() {
        let field = |k: &str| format!("layers[{i}].{k}");
        let bad_at = |k: &str, msg: String| bad(&field(k), msg);
        model = model.add(layer(l, &bad_at)?);
    }
    model.shapes().map_err(|e| {
        bad(
            "layers",
            format!("{e}; hint: check the layer's settings against its input shape"),
        )
    })?;
    Ok(model)
}

fn positive(v: &Value) -> Option<usize> {
    v.as_u64().filter(|&n| n > 0).map(|n| n as usize)
}

fn check_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
    bad: &dyn Fn(&str, String) -> Error,
) -> Result<()> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(
            &format!("{prefix}{k}"),
            format!("unknown field; expected one of {allowed:?}"),
        )),
        None => Ok(()),
    }
}

/// One layer object.
fn layer(l: &Value, bad: &dyn Fn(&str, String) -> Error) -> Result<Layer> {
    let obj = l
        .as_object()
        .ok_or_else(|| bad("type", "expected an object with a \"type\"".into()))?;
    let kind = obj.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            "type",
            "missing; expected a layer type such as \"dense\"".into(),
        )
    })?;
    let int = |k: &str, default: Option<usize>| -> Result<usize> {
        match obj.get(k) {
            None => default.ok_or_else(|| bad(k, "missing; expected a positive integer".into())),
            Some(v) => positive(v).ok_or_else(|| bad(k, format!("{v} is not a positive integer"))),
        }
    };
    let act = || activation(obj.get("activation"), bad);
    let (keys, layer): (&[&str], Layer) = match kind {
        "conv2d" => (
            &["type", "filters", "kernel", "stride", "padding", "activation"],
            Layer::Conv2d {
                filters: int("filters", None)?,
                kernel: int("kernel", None)?,
                stride: int("stride", Some(1))?,
                padding: padding(obj.get("padding"), bad)?,
                activation: act()?,
            },
        ),
        "maxpool2d" | "avgpool2d" => {
            let pool = int("pool", None)?;
            let stride = int("stride", Some(pool))?;
            let layer = match kind {
                "maxpool2d" => Layer::MaxPool2d { pool, stride },
                _ => Layer::AvgPool2d { pool, stride },
            };
            (&["type", "pool", "stride"], layer)
        }
        "dense" => (
            &["type", "units", "activation"],
            Layer::Dense {
                units: int("units", None)?,
                activation: act()?,
            },
        ),
        "dropout" => {
            let rate = obj
                .get("rate")
                .and_then(Value::as_f64)
                .filter(|r| (0.0..1.0).contains(r))
                .ok_or_else(|| bad("rate", "expected a number in [0, 1)".into()))?;
            (&["type", "rate"], Layer::Dropout { rate: rate as f32 })
        }
        "activation" => (&["type", "activation"], Layer::Activation(act()?)),
        "flatten" => (&["type"], Layer::Flatten),
        "batchnorm" => (&["type"], Layer::BatchNorm),
        "globalavgpool2d" => (&["type"], Layer::GlobalAvgPool2d),
        other => {
            return Err(bad(
                "type",
                format!("{other:?} is not one of conv2d, maxpool2d, avgpool2d, globalavgpool2d, flatten, dense, batchnorm, dropout, activation"),
            ))
        }
    };
    check_keys(obj, keys, "", bad)?;
    Ok(layer)
}

fn activation(v: Option<&Value>, bad: &dyn Fn(&str, String) -> Error) -> Result<Activation> {
    let Some(v) = v else {
        return Ok(Activation::Linear);
    };
    let name = v.as_str().unwrap_or_default();
    ACTIVATIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            let names: Vec<&str> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
            bad("activation", format!("{v} is not one of {names:?}"))
        })
}

fn padding(v: Option<&Value>, bad: &dyn Fn(&str, String) -> Error) -> Result<Padding> {
    match v.map(|v| v.as_str()) {
        None | Some(Some("valid")) => Ok(Padding::Valid),
        Some(Some("same")) => Ok(Padding::Same),
        _ => Err(bad("padding", "expected \"valid\" or \"same\"".into())),
    }
}

fn activation_name(a: Activation) -> &'static str {
    ACTIVATIONS
        .iter()
        .find(|(_, x)| *x == a)
        .map(|(n, _)| *n)
        .unwrap_or("linear")
}

/// The description `parse` reads back as the same model.
pub fn to_json(model: &Sequential) -> String {
    let layers: Vec<Value> = model
        .layers
        .iter()
        .map(|l| match l {
            Layer::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => json!({
                "type": "conv2d", "filters": filters, "kernel": kernel, "stride": stride,
                "padding": if *padding == Padding::Same { "same" } else { "valid" },
                "activation": activation_name(*activation),
            }),
            Layer::MaxPool2d { pool, stride } => {
                json!({"type": "maxpool2d", "pool": pool, "stride": stride})
            }
            Layer::AvgPool2d { pool, stride } => {
                json!({"type": "avgpool2d", "pool": pool, "stride": stride})
            }
            Layer::Dense { units, activation } => {
                json!({"type": "dense", "units": units, "activation": activation_name(*activation)})
            }
            Layer::Dropout { rate } => json!({"type": "dropout", "rate": rate}),
            Layer::Activation(a) => {
                json!({"type": "activation", "activation": activation_name(*a)})
            }
            Layer::Flatten => json!({"type": "flatten"}),
            Layer::BatchNorm => json!({"type": "batchnorm"}),
            Layer::GlobalAvgPool2d => json!({"type": "globalavgpool2d"}),
        })
        .collect();
    json!({"input": model.input, "layers": layers}).to_string()
}
