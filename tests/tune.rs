//! Kernel choice by measurement (src/graph/tune.rs): the candidates are timed in turns, a
//! clearly faster one replaces the table's default, near-ties keep the default (the rule,
//! on given times), a candidate that cannot be built is skipped, and the choice is
//! remembered on disk for the adapter.
//!
//! Tuning is forced on here (CI turns it off elsewhere: a cold cache makes every test
//! process time every candidate of every shape), with a cache directory of this binary's.

mod common;

use std::sync::{Mutex, OnceLock};

use shadergrad::gpu::Gpu;
use shadergrad::graph::tune::{choose, pick, CACHE_ENV, MARGIN, TUNE_ENV};
use shadergrad::kernels::elementwise::fill;
use shadergrad::kernels::Dispatch;
use shadergrad::tensor::Tensor;
use shadergrad::{Error, Result};

/// The tests of this binary take turns: a wait for the GPU waits for every thread's work,
/// so timings taken side by side would measure each other.
static TURN: Mutex<()> = Mutex::new(());

/// The shared GPU, with tuning on and a private cache directory (set once, before any test
/// of this binary reads them).
fn gpu() -> Option<&'static Gpu> {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // Under target/tmp (cargo's scratch folder for integration tests), not /tmp.
        let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("shadergrad-tune-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        // SAFETY (edition 2021: safe): set once, before any test reads them.
        std::env::set_var(TUNE_ENV, "1");
        std::env::set_var(CACHE_ENV, &d);
        d
    });
    assert!(dir.exists());
    common::gpu()
}

/// `times` fills of a tensor of `n` floats: the cost of a candidate, chosen by the test.
fn work(gpu: &Gpu, n: usize, times: usize) -> Result<Vec<Dispatch>> {
    let t = Tensor::zeros(gpu, "tune test", &[n])?;
    (0..times).map(|_| fill(gpu, &t, 1.0)).collect()
}

fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("candidate {i}")).collect()
}

fn cache_text() -> String {
    let dir = std::env::var_os(CACHE_ENV).unwrap();
    std::fs::read_to_string(std::path::Path::new(&dir).join("kernel-choices.json")).unwrap()
}

#[test]
fn a_clearly_faster_candidate_replaces_the_default_and_is_remembered() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(gpu) = gpu() else { return };
    let what = "test: slow default, fast second";
    let build = |i: usize| match i {
        0 => work(gpu, 1 << 22, 8),
        _ => work(gpu, 16, 1),
    };
    assert_eq!(choose(gpu, what, &labels(2), &build).unwrap(), 1);
    let text = cache_text();
    assert!(
        text.contains(what) && text.contains("candidate 1"),
        "not cached: {text}"
    );
    // Remembered: a second call takes the cached choice without timing (a build that
    // fails proves nothing is built).
    let never = |_: usize| -> Result<Vec<Dispatch>> { Err(Error::usage("test", "not built")) };
    assert_eq!(choose(gpu, what, &labels(2), &never).unwrap(), 1);
}

#[test]
fn the_default_stays_unless_another_is_clearly_faster() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(gpu) = gpu() else { return };
    let slower_second = |i: usize| match i {
        0 => work(gpu, 16, 1),
        _ => work(gpu, 1 << 22, 8),
    };
    let what = "test: fast default, slow second";
    assert_eq!(choose(gpu, what, &labels(2), &slower_second).unwrap(), 0);
}

/// The decision on given medians (a timed tie would test the machine's noise, not the
/// rule): within the margin the default stays, past it the fastest wins, and the default
/// is the first buildable candidate.
#[test]
fn near_ties_keep_the_default() {
    let inf = f64::INFINITY;
    assert_eq!(pick(&[10.0, 9.5, 9.4]), 0, "5-6% faster: noise");
    assert_eq!(pick(&[10.0, 9.5, 9.0]), 2, "10% faster");
    assert_eq!(pick(&[10.0, MARGIN * 10.0]), 0, "exactly the margin");
    assert_eq!(
        pick(&[inf, 10.0, 9.5]),
        1,
        "the first buildable is the default"
    );
    assert_eq!(pick(&[inf, 10.0, 5.0]), 2);
    assert_eq!(pick(&[inf, inf]), 0);
}

#[test]
fn a_candidate_that_cannot_be_built_is_skipped() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(gpu) = gpu() else { return };
    let first_fails = |i: usize| match i {
        0 => Err(Error::usage("test", "grid past the device's limits")),
        1 => work(gpu, 1 << 22, 8),
        _ => work(gpu, 16, 1),
    };
    let what = "test: the default cannot run";
    assert_eq!(choose(gpu, what, &labels(3), &first_fails).unwrap(), 2);
    // None buildable: candidate 0, whose own error lowering then reports.
    let none = |_: usize| -> Result<Vec<Dispatch>> { Err(Error::usage("test", "never")) };
    assert_eq!(choose(gpu, "test: none", &labels(2), &none).unwrap(), 0);
}
