//! The `shadergrad` binary as a user meets it: `info`, and bad command lines, which must end
//! with a clear message and a non-zero exit, never a panic.

mod common;

use std::process::{Command, Output};

fn shadergrad(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadergrad"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the shadergrad binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exits non-zero, mentions every needle, and does not panic.
fn assert_fails(args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let out = shadergrad(args, env);
    let all = text(&out);
    assert!(!out.status.success(), "{args:?} should fail:\n{all}");
    assert!(!all.contains("panicked"), "{args:?} panicked:\n{all}");
    for n in needles {
        assert!(all.contains(n), "{args:?}: output lacks {n:?}:\n{all}");
    }
}

#[test]
fn info_lists_the_adapter_and_its_backend() {
    let Some(gpu) = common::gpu() else { return };
    let out = shadergrad(&["info"], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&gpu.info.name), "{all}");
    assert!(all.contains(&format!("{:?}", gpu.info.backend)), "{all}");
    assert!(all.contains("max storage buffer binding"), "{all}");
    // Which kernel family this adapter runs (Vulkan lavapipe: window; GL: portable).
    let family = gpu.family();
    assert!(all.contains(&format!("kernels: {family} (")), "{all}");
    assert!(all.contains(family.describe()), "{all}");
}

#[test]
fn bad_command_lines_are_usage_errors() {
    assert_fails(&["train", "--no-such-flag"], &[], &["--no-such-flag"]);
    assert_fails(&["train", "--epochs", "0"], &[], &["--epochs"]);
    assert_fails(&["train", "--epochs", "-3"], &[], &["-3"]);
    assert_fails(&["train", "--batch-size", "0"], &[], &["--batch-size"]);
    assert_fails(
        &["train", "--validation-split", "1.5"],
        &[],
        &["--validation-split"],
    );
    assert_fails(
        &["train", "--validation-split=-0.1"],
        &[],
        &["--validation-split"],
    );
    assert_fails(&["train", "--lr", "nan"], &[], &["--lr"]);
    assert_fails(&["train", "--model", "resnet"], &[], &["resnet"]);
    assert_fails(&["frobnicate"], &[], &["frobnicate"]);
}

#[test]
fn missing_data_names_the_file() {
    assert_fails(
        &["train", "--data-dir", "/nonexistent/mnist"],
        &[],
        &["/nonexistent/mnist"],
    );
}

#[test]
fn an_adapter_name_that_matches_nothing_lists_the_adapters() {
    let Some(gpu) = common::gpu() else { return };
    assert_fails(
        &["train", "--epochs", "1"],
        &[("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")],
        &["no-such-adapter-xyz", &gpu.info.name],
    );
}

#[test]
fn bad_texts_and_language_model_flags_are_refused() {
    let dir = std::env::temp_dir().join(format!("shadergrad-cli-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "to be or not to be").unwrap();
    let (e, l, s) = (
        empty.to_str().unwrap(),
        latin1.to_str().unwrap(),
        short.to_str().unwrap(),
    );
    assert_fails(
        &["train", "--model", "gpt", "--text", e],
        &[],
        &["empty.txt", "empty"],
    );
    assert_fails(
        &["train", "--model", "gpt", "--text", l],
        &[],
        &["latin1.txt", "UTF-8"],
    );
    assert_fails(
        &[
            "train",
            "--model",
            "char-rnn",
            "--text",
            s,
            "--context",
            "64",
        ],
        &[],
        &["short.txt", "window"],
    );
    assert_fails(
        &["train", "--model", "gpt", "--epochs", "3"],
        &[],
        &["--epochs"],
    );
    assert_fails(
        &["train", "--steps", "5"],
        &[],
        &["--steps", "language-model"],
    );
    assert_fails(
        &["train", "--model", "gpt", "--heads", "3"],
        &[],
        &["heads"],
    );
    assert_fails(
        &[
            "generate",
            "--checkpoint",
            dir.join("none.safetensors").to_str().unwrap(),
        ],
        &[],
        &["none.safetensors"],
    );
    std::fs::remove_dir_all(&dir).ok();
}
