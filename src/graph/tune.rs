//! Kernel choice by measurement. Where several kernels (or operand layouts) can compute a
//! node, each is timed once on the node's real shapes when the plan is built, and the
//! fastest is kept. The choice is cached in memory and on disk, keyed by adapter, driver and
//! shape: kernels round differently, so the cache is what keeps reruns bit-identical.
//! `SHADERGRAD_TUNE=0` skips the timing and the cache and takes the table's default (the
//! first candidate), for runs that must not depend on a cache. Choices are logged at
//! `RUST_LOG=info`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::ir::*;
use super::lower::{conv_forward, conv_spec, matmul_spec, product_spec};
use crate::gpu::Gpu;
use crate::kernels::conv2d::*;
use crate::kernels::matmul::{
    matmul_candidates, matmul_with, runs_windowed, MatmulKernel, MatmulSpec, Strided,
};
use crate::kernels::transpose::transpose;
use crate::kernels::{run_all, Dispatch};
use crate::platform::Instant;
use crate::tensor::Tensor;
use crate::Result;

pub const TUNE_ENV: &str = "SHADERGRAD_TUNE";
/// Directory of the on-disk cache (default `$XDG_CACHE_HOME/shadergrad` or
/// `~/.cache/shadergrad`).
pub const CACHE_ENV: &str = "SHADERGRAD_CACHE_DIR";

static MEMORY: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// Off in the browser, which cannot wait on the GPU to time a candidate.
pub fn tuning_on() -> bool {
    cfg!(native) && std::env::var(TUNE_ENV).map_or(true, |v| v != "0")
}

fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os(CACHE_ENV).map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("shadergrad"))
    })?;
    Some(dir.join("kernel-choices.json"))
}

fn load_disk() -> HashMap<String, String> {
    cache_file()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// A cached choice for `key`, if any.
fn cached(key: &str) -> Option<String> {
    let mut m = MEMORY.lock().ok()?;
    m.get_or_insert_with(load_disk).get(key).cloned()
}

fn remember(key: &str, choice: &str) {
    let Ok(mut m) = MEMORY.lock() else { return };
    let map = m.get_or_insert_with(load_disk);
    map.insert(key.into(), choice.into());
    // Merge with what other processes wrote since, then replace the file atomically.
    let mut disk = load_disk();
    disk.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let (Some(p), Ok(bytes)) = (cache_file(), serde_json::to_vec_pretty(&disk)) {
        let ok = p.parent().map(std::fs::create_dir_all).is_some()
            && crate::checkpoint::write_atomic(&p, &bytes).is_ok();
        if !ok {
            log::warn!("could not write the kernel-choice cache {}", p.display());
        }
    }
}

/// Rounds of timing per candidate; the candidates take turns, so a burst of load on the
/// machine slows every candidate alike.
const ROUNDS: usize = 7;
/// A candidate replaces the table's default only when its median is at least this much
/// faster: measurement noise alone must not change which kernel runs.
pub const MARGIN: f64 = 0.93;

/// Wall-clock milliseconds of one run of the dispatches, waiting for the GPU.
fn time_once(gpu: &Gpu, d: &[Dispatch]) -> Result<f64> {
    let t = Instant::now();
    run_all(gpu, d)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Median milliseconds of each candidate over interleaved rounds after a warm-up run;
/// infinity for a candidate that cannot be built or run here.
fn measure(
    gpu: &Gpu,
    what: &str,
    labels: &[String],
    built: Vec<Result<Vec<Dispatch>>>,
) -> Vec<f64> {
    let mut samples = vec![Vec::new(); labels.len()];
    let ok: Vec<bool> = built
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            Ok(d) => run_all(gpu, d).is_ok(),
            Err(e) => {
                log::info!("kernel choice {what}: {} cannot run here: {e}", labels[i]);
                false
            }
        })
        .collect();
    for _ in 0..ROUNDS {
        for (i, b) in built.iter().enumerate() {
            if let (true, Ok(d)) = (ok[i], b) {
                samples[i].push(time_once(gpu, d).unwrap_or(f64::INFINITY));
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s.get(s.len() / 2).copied().unwrap_or(f64::INFINITY)
        })
        .collect()
}

/// The decision on measured medians (infinite: not buildable): the fastest candidate if it
/// beats the default, the first buildable one, by [`MARGIN`]; else that default.
pub fn pick(ms: &[f64]) -> usize {
    let default = ms.iter().position(|m| m.is_finite()).unwrap_or(0);
    let fastest = (0..ms.len())
        .min_by(|&a, &b| ms[a].total_cmp(&ms[b]))
        .unwrap_or(0);
    match ms[fastest] < MARGIN * ms[default] {
        true => fastest,
        false => default,
    }
}

/// Index of the chosen candidate for `what`: the cached one, else the measured fastest if it
/// beats the table's default (the first candidate) by a clear margin, else the default.
/// `build(i)` makes candidate i's dispatches on scratch tensors.
pub fn choose(
    gpu: &Gpu,
    what: &str,
    labels: &[String],
    build: &dyn Fn(usize) -> Result<Vec<Dispatch>>,
) -> Result<usize> {
    // A candidate that cannot be built here (a grid past the device's limits, say) is
    // skipped; when none can, candidate 0 is returned and lowering reports its error.
    if labels.len() < 2 {
        return Ok(0);
    }
    if !tuning_on() {
        return Ok((0..labels.len()).find(|&i| build(i).is_ok()).unwrap_or(0));
    }
    let info = &gpu.info;
    // The candidates are part of the key: a new kernel is measured, not hidden by a choice
    // cached before it existed.
    let key = format!(
        "{} | {:?} | {} {} | {what} | {}",
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        labels.join(", ")
    );
    if let Some(c) = cached(&key).and_then(|c| labels.iter().position(|l| *l == c)) {
        return Ok(c);
    }
    let ms = measure(gpu, what, labels, (0..labels.len()).map(build).collect());
    if ms.iter().all(|m| m.is_infinite()) {
        return Ok(0);
    }
    let best = pick(&ms);
    let report: Vec<String> = labels
        .iter()
        .zip(&ms)
        .map(|(l, m)| format!("{l} {m:.2} ms"))
        .collect();
    log::info!(
        "kernel choice {what}: {} (measured {})",
        labels[best],
        report.join(", ")
    );
    remember(&key, &labels[best]);
    Ok(best)
}

/// The kernel each matmul node runs (ids of the sorted graph).
#[derive(Default)]
pub struct Choices {
    matmul: HashMap<Id, MatmulKernel>,
    conv: HashMap<Id, Conv2dKernel>,
}

impl Choices {
    /// The kernel of a conv node (forward, input or weight gradient); direct if unchosen.
    pub fn conv(&self, id: Id) -> Conv2dKernel {
        self.conv.get(&id).copied().unwrap_or(Conv2dKernel::Direct)
    }

    pub fn matmul(&self, gpu: &Gpu, id: Id, spec: &MatmulSpec) -> MatmulKernel {
        self.matmul.get(&id).copied().unwrap_or_else(|| {
            matmul_candidates(gpu, spec)
                .first()
                .copied()
                .unwrap_or_else(|| MatmulKernel::for_gpu(gpu))
        })
    }
}

/// `shape` stacked `n` times along a new leading axis (itself when n == 1).
fn stacked(n: usize, shape: [usize; 2]) -> Vec<usize> {
    match n {
        1 => shape.to_vec(),
        _ => vec![n, shape[0], shape[1]],
    }
}

/// Scratch operands of a product: A, B, bias, C (a viewed operand: as many elements as its
/// view reaches).
fn scratch(gpu: &Gpu, s: &MatmulSpec) -> Result<[Tensor; 4]> {
    let reach = |v: Option<Strided>, [r, c]: [usize; 2], shape: Vec<usize>| match v {
        Some(v) => vec![v.last(s.batch, r, c) + 1],
        None => shape,
    };
    let b_batch = if s.shared_b { 1 } else { s.batch };
    Ok([
        Tensor::zeros(
            gpu,
            "tune A",
            &reach(s.a_view, s.a_shape(), stacked(s.batch, s.a_shape())),
        )?,
        Tensor::zeros(
            gpu,
            "tune B",
            &reach(s.b_view, s.b_shape(), stacked(b_batch, s.b_shape())),
        )?,
        Tensor::zeros(gpu, "tune bias", &[s.n])?,
        Tensor::zeros(
            gpu,
            "tune C",
            &reach(s.c_view, [s.m, s.n], vec![s.batch * s.m * s.n]),
        )?,
    ])
}

/// Pick each matmul node's kernel by measurement.
pub fn choose_kernels(gpu: &Gpu, g: &Graph) -> Result<Choices> {
    let mut choices = Choices::default();
    for id in g.ids() {
        // A group's products share their candidates: the first is timed for all.
        let spec = match &g.node(id).op {
            Op::MatMul(t) => matmul_spec(g, id, *t)?,
            Op::MatMulGroup(ts) if !ts.is_empty() => {
                let n = g.node(id);
                product_spec(g, [n.inputs[0], n.inputs[1]], ts[0])?
            }
            _ => continue,
        };
        let cands = matmul_candidates(gpu, &spec);
        let labels: Vec<String> = cands.iter().map(|k| format!("{k:?}")).collect();
        let [a, b, bias, c] = scratch(gpu, &spec)?;
        let bias = spec.bias.then_some(&bias);
        let i = choose(gpu, &format!("matmul {spec:?}"), &labels, &|i| {
            matmul_with(gpu, &spec, cands[i], &a, &b, bias, &c)
        })?;
        choices.matmul.insert(id, cands[i]);
    }
    for id in g.ids() {
        if let Some(k) = choose_conv(gpu, g, id)? {
            choices.conv.insert(id, k);
        }
    }
    Ok(choices)
}

/// The measured kernel of a conv node (None for other nodes).
fn choose_conv(gpu: &Gpu, g: &Graph, id: Id) -> Result<Option<Conv2dKernel>> {
    let n = g.node(id);
    let (s, pass) = match n.op {
        Op::Conv2d(c) => (conv_spec(g, n.inputs[0], n.inputs[1], c)?, 0),
        Op::Conv2dBackwardInput(c) => (conv_spec(g, id, n.inputs[1], c)?, 1),
        Op::Conv2dBackwardWeight { conv, .. } => (conv_spec(g, n.inputs[1], id, conv)?, 2),
        _ => return Ok(None),
    };
    let cands = match pass {
        0 => conv2d_forward_candidates(gpu, &s),
        1 => conv2d_backward_input_candidates(gpu, &s),
        _ => conv2d_backward_weight_candidates(gpu, &s),
    };
    let x = Tensor::zeros(gpu, "tune x", &s.x_shape())?;
    let w = Tensor::zeros(gpu, "tune w", &s.w_shape())?;
    let y = Tensor::zeros(gpu, "tune y", &s.y_shape())?;
    let labels: Vec<String> = cands.iter().map(|k| format!("{k:?}")).collect();
    let i = choose(
        gpu,
        &format!("conv2d pass {pass} {s:?}"),
        &labels,
        &|i| match pass {
            0 => conv_forward(gpu, cands[i], &s, [&x, &w], None, false, &y),
            1 => conv2d_backward_input_with(gpu, cands[i], &s, &y, &w, &x),
            _ => {
                let rows = conv2d_backward_weight_rows(gpu, cands[i], &s);
                let part = Tensor::zeros(gpu, "tune partials", &[rows, s.part_row()])?;
                conv2d_backward_weight_with(gpu, cands[i], &s, &y, &x, &part)
            }
        },
    )?;
    Ok(cands.get(i).copied())
}

/// On uniform-window adapters a product whose operands do not cut into windows may run
/// windowed with one or both operands transposed first. Time the product as it is against
/// the fewest transposes that make it windowed, and rewrite the graph to the faster (the
/// transposes of one value are shared by every product that reads it).
pub fn choose_layouts(gpu: &Gpu, g: &mut Graph) -> Result<()> {
    if !gpu.windows() {
        return Ok(());
    }
    for id in g.ids().collect::<Vec<_>>() {
        let Op::MatMul(t) = g.node(id).op else {
            continue;
        };
        let spec = matmul_spec(g, id, t)?;
        if spec.batch > 1 || spec.viewed() || runs_windowed(gpu, &spec) {
            continue;
        }
        let flips = [(true, false), (false, true), (true, true)];
        let Some(&(fa, fb)) = flips.iter().find(|(fa, fb)| {
            runs_windowed(
                gpu,
                &MatmulSpec {
                    transpose_a: spec.transpose_a ^ fa,
                    transpose_b: spec.transpose_b ^ fb,
                    ..spec
                },
            )
        }) else {
            continue;
        };
        let flipped = MatmulSpec {
            transpose_a: spec.transpose_a ^ fa,
            transpose_b: spec.transpose_b ^ fb,
            ..spec
        };
        let [a, b, bias, c] = scratch(gpu, &spec)?;
        let (at, bt) = (
            Tensor::zeros(gpu, "tune A^T", &flipped.a_shape())?,
            Tensor::zeros(gpu, "tune B^T", &flipped.b_shape())?,
        );
        let bias = spec.bias.then_some(&bias);
        // The table's default is the windowed layout (the transposes of an operand are
        // shared by the products that read it, which the timing here does not credit).
        let labels = [
            format!("transposed (A {fa}, B {fb})"),
            "as stored".to_string(),
        ];
        let k = MatmulKernel::for_gpu(gpu);
        let pick = choose(gpu, &format!("matmul layout {spec:?}"), &labels, &|i| {
            if i == 1 {
                return matmul_with(gpu, &spec, k, &a, &b, bias, &c);
            }
            let mut d = Vec::new();
            if fa {
                d.push(transpose(gpu, &a, &at)?)
            }
            if fb {
                d.push(transpose(gpu, &b, &bt)?)
            }
            d.extend(matmul_with(
                gpu,
                &flipped,
                k,
                if fa { &at } else { &a },
                if fb { &bt } else { &b },
                bias,
                &c,
            )?);
            Ok(d)
        })?;
        if pick == 0 {
            flip_operands(g, id, fa, fb)?;
        }
    }
    Ok(())
}

/// Rewrite matmul `id` to read its operands transposed (materialised, shared through CSE).
fn flip_operands(g: &mut Graph, id: Id, fa: bool, fb: bool) -> Result<()> {
    let (a, b) = (g.node(id).inputs[0], g.node(id).inputs[1]);
    let a2 = if fa { g.transpose(a)? } else { a };
    let b2 = if fb { g.transpose(b)? } else { b };
    let node = &mut g.nodes[id.index()];
    if let Op::MatMul(t) = &mut node.op {
        t.ta ^= fa;
        t.tb ^= fb;
    }
    node.inputs[0] = a2;
    node.inputs[1] = b2;
    Ok(())
}
