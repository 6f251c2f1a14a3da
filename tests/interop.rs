//! Interoperability: tests/data/interop/model.safetensors (a model file's model with every
//! new layer: conv with stride 2 and 'same' padding, 'valid' and 'same' convs, BatchNorm2d
//! and BatchNorm1d with running statistics and num_batches_tracked, dropout, average,
//! max and global average pooling, dense, GELU, tanh, leaky ReLU) loads into the equivalent
//! torch.nn module with load_state_dict(strict=True), and an independent NumPy forward pass
//! with PyTorch's semantics gave reference.json (scripts/interop_reference.py, run once
//! with torch and NumPy; this test needs neither). Here shadergrad evaluates the same
//! checkpoint on the same images, as `evaluate` does: the probabilities agree within
//! tolerances and the accuracy exactly.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};
use shadergrad::checkpoint;
use shadergrad::data::{default_data_dir, read_idx, TEST_IMAGES, TEST_LABELS};
use shadergrad::predict::infer;

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/interop"))
}

fn reference() -> Value {
    let text = std::fs::read_to_string(dir().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The reference was made from this very file, and the file holds PyTorch's names for
/// every tensor of the layers it exercises.
#[test]
fn the_checkpoint_is_the_one_the_reference_was_made_from() {
    let path = dir().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        reference()["checkpoint_sha256"],
        sha.as_str(),
        "stale reference.json: rerun scripts/interop_reference.py"
    );
    let ck = checkpoint::load(&path, None).unwrap();
    let names: Vec<String> = ck
        .model
        .params()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    for n in [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "conv2.weight",
        "conv3.weight",
        "fc1.weight",
        "bn2.running_var",
        "bn2.num_batches_tracked",
        "fc2.bias",
    ] {
        assert!(names.iter().any(|m| m == n), "{n} missing from {names:?}");
    }
    // BatchNorm's counter counts the training steps (PyTorch's momentum-based update).
    let i = names
        .iter()
        .position(|n| n == "bn1.num_batches_tracked")
        .unwrap();
    assert_eq!(ck.params[i], [ck.steps as f32]);
}

#[test]
fn shadergrad_evaluates_the_checkpoint_as_pytorch_semantics_do() {
    let Some(gpu) = common::gpu() else { return };
    let r = reference();
    let count = r["count"].as_u64().unwrap() as usize;
    let ck = checkpoint::load(&dir().join("model.safetensors"), None).unwrap();
    let file = |name: &str| default_data_dir().join(format!("{name}.gz"));
    let images = read_idx(&file(TEST_IMAGES)).unwrap().data;
    let test_labels = read_idx(&file(TEST_LABELS)).unwrap().data;
    let labels: Vec<u64> = test_labels[..count].iter().map(|&l| l as u64).collect();
    let want_labels: Vec<u64> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(labels, want_labels, "the same images");
    // As `evaluate` runs it: the checkpoint's batch size, the test images in order.
    let mut trainer = ck.trainer(gpu).unwrap();
    let px = 28 * 28;
    let ds = trainer
        .add_dataset(&images[..count * px], &test_labels[..count])
        .unwrap();
    let order: Vec<u32> = (0..count as u32).collect();
    let source = trainer.add_source(ds, &order).unwrap();
    let out = infer(&mut trainer, source, ck.batch_size).unwrap();
    let want: Vec<f64> = r["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    // f32 kernels against a float64 reference through 14 layers.
    common::assert_close("probabilities", &out.probs, &want, 1e-4, 2e-5);
    let worst = out
        .probs
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    println!("largest |shadergrad - reference| probability difference: {worst:.2e}");
    let correct = (out.metrics.accuracy * count as f64).round() as u64;
    assert_eq!(correct, r["correct"].as_u64().unwrap(), "accuracy");
    assert_eq!(out.metrics.accuracy, r["accuracy"].as_f64().unwrap());
}
