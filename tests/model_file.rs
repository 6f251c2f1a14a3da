//! Model description files and the named models: parsing, errors that name the file, the
//! field and what was expected, shapes, PyTorch parameter names, and the JSON round trip.
//! No GPU needed.

use std::path::Path;

use shadergrad::model::{Layer, Sequential};
use shadergrad::model_file::{load, parse, to_json};

fn err(text: &str) -> String {
    parse(text, Path::new("m.json")).unwrap_err().to_string()
}

#[test]
fn a_model_file_parses_and_round_trips() {
    let m = load(Path::new("tests/corpus/models/ok-small.json")).unwrap();
    assert_eq!(m.layers.len(), 9);
    assert!(matches!(m.layers[0], Layer::Conv2d { stride: 2, .. }));
    let shapes = m.shapes().unwrap();
    assert_eq!(shapes[0], vec![4, 14, 14]); // stride 2, same: ceil(28 / 2)
    assert_eq!(shapes[3], vec![4, 7, 7]);
    assert_eq!(shapes[4], vec![8, 5, 5]);
    assert_eq!(shapes[5], vec![8]);
    let back = parse(&to_json(&m), Path::new("again.json")).unwrap();
    assert_eq!(back, m);
    let names: Vec<String> = m.params().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias"
        ]
    );
    let summary = m.summary().unwrap();
    assert!(summary.contains("Non-trainable params: 9"), "{summary}"); // 4 + 4 + 1
}

#[test]
fn bad_model_files_name_the_field() {
    let cases = [
        ("{", "m.json: json"),
        ("[]", "(top level)"),
        (
            r#"{"input": [1, 28], "layers": [{"type": "flatten"}]}"#,
            "m.json: input",
        ),
        (r#"{"input": [1, 28, 28], "layers": []}"#, "m.json: layers"),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "dense"}]}"#,
            "layers[0].units: missing",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "dense", "units": -3}]}"#,
            "layers[0].units",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "dense", "units": 3, "unit": 1}]}"#,
            "layers[0].unit: unknown field",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "resnet"}]}"#,
            "layers[0].type",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "conv2d", "filters": 2, "kernel": 3, "padding": "full"}]}"#,
            "layers[0].padding",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "dropout", "rate": 1.5}]}"#,
            "layers[0].rate",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "activation", "activation": "swish"}]}"#,
            "layers[0].activation",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "extra", "x": 1}], "more": 1}"#,
            "more: unknown field",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn layers_whose_shapes_do_not_fit_name_the_layer_and_shapes() {
    // Dense on an image, a kernel larger than its input, global pooling of a vector.
    let cases = [
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "dense", "units": 10}]}"#,
            "layer 0 (Dense)",
        ),
        (
            r#"{"input": [1, 4, 4], "layers": [{"type": "conv2d", "filters": 2, "kernel": 5}, {"type": "flatten"}]}"#,
            "layer 0 (Conv2D)",
        ),
        (
            r#"{"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "globalavgpool2d"}]}"#,
            "layer 1 (GlobalAveragePooling2D)",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(
            e.contains("m.json: layers") && e.contains(want),
            "{text}: {e}"
        );
    }
}

#[test]
fn named_models() {
    let lenet = Sequential::lenet5();
    assert_eq!(lenet.param_count().unwrap(), 61_706);
    assert_eq!(lenet.shapes().unwrap()[1], vec![6, 14, 14]);
    let vgg = Sequential::vgg_small();
    let names: Vec<String> = vgg.params().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names[0], "conv1.weight");
    assert!(names.contains(&"bn4.running_var".to_string()));
    assert_eq!(vgg.shapes().unwrap().last(), Some(&vec![10]));
    for m in [lenet, vgg] {
        assert_eq!(parse(&to_json(&m), Path::new("x.json")).unwrap(), m);
    }
}
