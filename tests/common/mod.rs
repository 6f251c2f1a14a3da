//! Shared by the GPU test files: one adapter per test binary, the skip-or-fail rule, and
//! the tolerance check.
#![allow(dead_code)]

use std::sync::OnceLock;

use shadergrad::data::{default_data_dir, load_mnist, Mnist};
use shadergrad::gpu::Gpu;

/// The shared GPU, or None (with the reason printed) when no adapter exists. With
/// `SHADERGRAD_REQUIRE_GPU=1` a missing adapter fails the test instead.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("SHADERGRAD_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("SHADERGRAD_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

/// The vendored MNIST (data/mnist), loaded once per test binary.
pub fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| load_mnist(&default_data_dir()).expect("vendored MNIST in data/mnist"))
}

/// Assert |got - want| <= atol + rtol * |want| elementwise, printing the first mismatches.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let (g, w) = (got[i] as f64, want[i]);
            // NaN compares false, so a NaN on either side counts as a mismatch.
            let close = (g - w).abs() <= atol + rtol * w.abs();
            !close
        })
        .collect();
    if !bad.is_empty() {
        let mut msg = format!(
            "{what}: {} of {} elements differ (rtol {rtol}, atol {atol})",
            bad.len(),
            got.len()
        );
        for &i in bad.iter().take(8) {
            msg += &format!("\n  [{i}] gpu {} reference {}", got[i], want[i]);
        }
        panic!("{msg}");
    }
}
