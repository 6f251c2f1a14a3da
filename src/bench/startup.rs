//! The engine rows: a training step of the seed CNN at batch 128 (real steps through
//! `Trainer` on MNIST), and the cold start: a new process's time from launch to its first
//! finished step (shader compile, pipeline creation, upload), without and with wgpu's
//! pipeline cache kept on disk.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::report::Row;
use super::timer::{Stats, Timer};
use crate::executor::Trainer;
use crate::gpu::{Gpu, PIPELINE_CACHE_ENV};
use crate::kernels::conv2d::{Conv2dSpec, Padding};
use crate::kernels::matmul::MatmulSpec;
use crate::kernels::optim::Optimizer;
use crate::model::Sequential;
use crate::{data, Error, Result};

/// Set in the child process of the cold-start row.
pub const CHILD_ENV: &str = "SHADERGRAD_BENCH_CHILD";

pub const BATCH: usize = 128;

/// The seed CNN's flops per training step at batch 128: forward, dinput and dweight of the
/// Dense 5408->128 and of the conv (the rest is small).
pub fn step_flops() -> f64 {
    let conv = Conv2dSpec {
        batch: BATCH,
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 32,
        kh: 3,
        kw: 3,
        padding: Padding::Valid,
        stride: 1,
    };
    3.0 * (MatmulSpec::new(BATCH, 128, 5408).flops() + conv.flops())
}

fn row(kernel: &str, shape: String, timer: Timer, flops: f64) -> Row {
    Row {
        kernel: kernel.into(),
        shape,
        family: "engine".into(),
        entry: String::new(),
        ms_min: 0.0,
        ms_median: 0.0,
        ms_max: 0.0,
        runs: 0,
        timer: timer.name().into(),
        flops,
        bytes: 0.0,
        gflops: 0.0,
        gbps: 0.0,
        pct_roof: 0.0,
        bound: "fma".into(),
        check: "ok".into(),
    }
}

/// The train_step row before it is measured.
pub fn train_step_placeholder() -> Row {
    row(
        "train_step",
        format!("seed CNN, batch {BATCH}"),
        Timer::WallClock,
        step_flops(),
    )
}

/// One training step of the seed CNN, timed by the wall clock around each step and a wait,
/// after two warm-up steps. Checked first: the loss of the first steps is finite and the
/// mean loss falls below ln 10 (what an untrained 10-class model scores).
pub fn train_step(gpu: &Gpu, steps: usize, slow: usize) -> Result<Row> {
    let mut r = train_step_placeholder();
    // No dataset is no fault of the kernels: the row is skipped, not failed.
    let mnist = match data::load_mnist(&data::default_data_dir()) {
        Ok(m) => m,
        Err(e) => {
            r.check = format!("skipped: {e}");
            return Ok(r);
        }
    };
    let mut trainer = Trainer::new(gpu, Sequential::mnist_cnn(), Optimizer::adam(1e-3), 1)?;
    let set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let order: Vec<u32> = (0..mnist.train.len() as u32).collect();
    let source = trainer.add_source(set, &order)?;
    let batches = mnist.train.len() / BATCH;
    let mut at = 0;
    let mut step = |trainer: &mut Trainer| -> Result<()> {
        trainer.step(source, (at % batches) * BATCH, BATCH, true)?;
        at += 1;
        Ok(())
    };
    for _ in 0..20 {
        step(&mut trainer)?;
    }
    let m = trainer.read_metrics()?;
    if m.non_finite || !m.loss.is_finite() || m.loss >= 10f64.ln() {
        r.check = format!(
            "FAIL: mean loss {:.4} over the first 20 steps is not below ln 10 = 2.3026",
            m.loss
        );
        return Ok(r);
    }
    let mut samples = Vec::with_capacity(steps);
    for _ in 0..steps {
        let started = Instant::now();
        for _ in 0..slow.max(1) {
            step(&mut trainer)?;
        }
        gpu.wait("bench train_step", None)?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let stats = Stats::of(&samples, 1);
    r.rate(&stats, None);
    r.entry = format!("{:.0} images/s", BATCH as f64 * 1e3 / stats.median);
    Ok(r)
}

/// In the child process of [`cold_start`]: load MNIST, open the device, build the trainer,
/// run one step and wait, then print the phases (ms) as one JSON line. Returns the exit
/// code, or None when this process is not such a child.
pub fn child_main() -> Option<u8> {
    std::env::var_os(CHILD_ENV)?;
    let run = || -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let mnist = data::load_mnist(&data::default_data_dir())?;
        let t = Instant::now();
        let gpu = Gpu::new()?;
        let device = ms(t);
        let t = Instant::now();
        let mut trainer = Trainer::new(&gpu, Sequential::mnist_cnn(), Optimizer::adam(1e-3), 1)?;
        let set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
        let order: Vec<u32> = (0..mnist.train.len() as u32).collect();
        let source = trainer.add_source(set, &order)?;
        let upload = ms(t);
        let t = Instant::now();
        trainer.step(source, 0, BATCH, true)?;
        let m = trainer.read_metrics()?;
        let first_step = ms(t);
        if m.non_finite {
            return Err(Error::gpu(
                "cold start",
                "the first step's loss is not finite",
            ));
        }
        let total = ms(t0);
        gpu.save_pipeline_cache()?;
        Ok(serde_json::json!({
            "data_ms": total - device - upload - first_step, "device_ms": device,
            "upload_ms": upload, "first_step_ms": first_step,
        }))
    };
    match run() {
        Ok(v) => {
            println!("{v}");
            Some(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Some(1)
        }
    }
}

/// One child process: wall ms from spawn to exit, and its phases.
fn child(exe: &Path, cache: Option<&Path>) -> Result<(f64, String)> {
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, "1");
    match cache {
        Some(dir) => cmd.env(PIPELINE_CACHE_ENV, dir),
        None => cmd.env_remove(PIPELINE_CACHE_ENV),
    };
    let started = Instant::now();
    let out = cmd.output().map_err(|e| Error::io(exe, e))?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = format!(
            "cold-start child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(Error::gpu("bench cold_start", msg));
    }
    let phases: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let p = |k: &str| {
        phases
            .get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let text = format!(
        "data {:.0} ms, device {:.0}, build+upload {:.0}, first step {:.0}",
        p("data_ms"),
        p("device_ms"),
        p("upload_ms"),
        p("first_step_ms")
    );
    Ok((wall, text))
}

/// The cold-start rows: `runs` launches of this executable to a first finished step,
/// without a pipeline cache, and (where the adapter has PIPELINE_CACHE) with one on disk
/// that an earlier launch filled.
pub fn cold_start(gpu: &Gpu, runs: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            let mut r = row(
                "cold_start",
                "seed CNN, batch 128".into(),
                Timer::WallClock,
                0.0,
            );
            r.check = format!("skipped: no path to this executable ({e})");
            return vec![r];
        }
    };
    let cache_dir =
        std::env::temp_dir().join(format!("shadergrad-bench-cache-{}", std::process::id()));
    let has_cache = gpu
        .adapter
        .features()
        .contains(wgpu::Features::PIPELINE_CACHE);
    for cached in [false, true] {
        let shape = if cached {
            "seed CNN, batch 128, pipeline cache"
        } else {
            "seed CNN, batch 128, no cache"
        };
        let mut r = row("cold_start", shape.into(), Timer::WallClock, 0.0);
        r.bound = String::new();
        if cached && !has_cache {
            r.check = "skipped: the adapter has no PIPELINE_CACHE".into();
            rows.push(r);
            continue;
        }
        let cache = cached.then_some(cache_dir.as_path());
        let result = (|| -> Result<(Vec<f64>, String)> {
            if cached {
                child(&exe, cache)?; // fills the cache
            }
            let mut samples = Vec::new();
            let mut phases = String::new();
            for _ in 0..runs {
                let (ms, p) = child(&exe, cache)?;
                samples.push(ms);
                phases = p;
            }
            Ok((samples, phases))
        })();
        match result {
            Ok((samples, phases)) => {
                r.rate(&Stats::of(&samples, 1), None);
                r.entry = phases;
                if cached {
                    // What the driver put in the cache (wgpu's own header is ~100 bytes).
                    let bytes: u64 = std::fs::read_dir(&cache_dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum();
                    r.entry += &format!(", cache file {bytes} B");
                }
            }
            Err(e) => r.check = format!("FAIL: {e}"),
        }
        rows.push(r);
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    rows
}
