//! Language-model interoperability: tests/data/lm_interop/{gpt,char-rnn}.safetensors are
//! small checkpoints written by `shadergrad train --model gpt|char-rnn`. scripts/lm_torch.py
//! --check loaded each into the equivalent torch.nn module (nanoGPT's GPT; Embedding + RNN +
//! Linear) with load_state_dict(strict=True) and wrote the logits of a prompt's last T
//! characters and the greedy continuation (MODEL.reference.json; run once with torch, this
//! test needs neither Python nor torch). Here shadergrad computes the same logits and the
//! same greedy text from the same files.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};
use shadergrad::lm::checkpoint::load;
use shadergrad::lm::generate::{generate, logits, GenerateOptions};
use shadergrad::nn::Model as _;

fn dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/lm_interop"
    ))
}

/// The reference of `model`, checked to be made from the committed checkpoint.
fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("{model}.reference.json"))).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let bytes = std::fs::read(dir().join(format!("{model}.safetensors"))).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        reference["checkpoint_sha256"],
        sha.as_str(),
        "{model}: stale reference: rerun scripts/lm_torch.py --check ... --reference"
    );
    reference
}

fn matches_torch(model: &str) {
    let Some(gpu) = common::gpu() else { return };
    let reference = reference(model);
    let ck = load(&dir().join(format!("{model}.safetensors"))).unwrap();
    assert_eq!(ck.config.kind(), model);
    let prompt = reference["prompt"].as_str().unwrap();
    let rows = reference["logits"].as_array().unwrap();
    let want: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    // [L, V]: the prompt is longer than the context, so L = T (the window's truncation).
    assert_eq!(rows.len(), ck.config.context().unwrap());
    let got = logits(gpu, &ck, prompt).unwrap();
    common::assert_close(&format!("{model} logits"), &got, &want, 1e-4, 1e-4);

    let tokens = reference["greedy"].as_str().unwrap().chars().count();
    let greedy = GenerateOptions {
        prompt: prompt.into(),
        tokens,
        temperature: 0.0,
        seed: 1,
    };
    assert_eq!(
        generate(gpu, &ck, &greedy).unwrap(),
        reference["greedy"].as_str().unwrap(),
        "{model}: greedy continuation differs from torch's"
    );
}

#[test]
fn gpt_checkpoint_gives_torchs_logits_and_greedy_text() {
    matches_torch("gpt");
}

#[test]
fn char_rnn_checkpoint_gives_torchs_logits_and_greedy_text() {
    matches_torch("char-rnn");
}

/// A shorter text than the context scores only its own positions.
#[test]
fn logits_of_a_short_text_have_one_row_per_character() {
    let Some(gpu) = common::gpu() else { return };
    let ck = load(&dir().join("gpt.safetensors")).unwrap();
    let v = ck.config.vocab();
    let long = reference("gpt")["logits"].as_array().unwrap().len();
    let short = logits(gpu, &ck, "ROME").unwrap();
    assert_eq!(short.len(), 4 * v);
    assert!(long > 4);
    let err = logits(gpu, &ck, "").unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}
