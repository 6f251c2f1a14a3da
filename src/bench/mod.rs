//! `shadergrad bench`: kernel microbenchmarks over the engine's own kernel wrappers.
//!
//! Before the suite, a peak-FMA and a copy-bandwidth kernel measure this adapter's roof.
//! Every row is then checked against its CPU reference (a wrong kernel prints FAIL and is
//! not timed), timed over N passes after warm-up (GPU timestamp queries where the adapter
//! has them, else the wall clock around a waited submit), and printed with min / median /
//! max ms, GFLOP/s, GB/s and % of the roof. Files: [`suite`] (the rows), [`timer`] (how a
//! row is timed), [`startup`] (training step and cold start), [`report`] (table and JSON),
//! [`compare`](mod@compare) (`--compare`).

pub mod compare;
pub mod report;
pub mod startup;
pub mod suite;
pub mod timer;

pub use compare::{compare, Comparison, Verdict};
pub use report::{Report, Roof, Row};

use crate::gpu::Gpu;
use crate::Result;
use timer::{Budget, PassTimer, Stats, Timer};

/// Testing aid: `SHADERGRAD_BENCH_SLOW=PATTERN[:FACTOR]` records the dispatches of every row
/// whose kernel name contains PATTERN FACTOR times (default 8) per timed run, a deliberately
/// slowed kernel for proving that `--compare` flags it.
pub const SLOW_ENV: &str = "SHADERGRAD_BENCH_SLOW";

/// The git commit this build came from (build.rs), or "unknown".
pub const COMMIT: &str = match option_env!("SHADERGRAD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The wgpu version in Cargo.lock (build.rs).
pub const WGPU_VERSION: &str = match option_env!("SHADERGRAD_WGPU_VERSION") {
    Some(v) => v,
    None => "unknown",
};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only rows whose kernel or shape contains this (case-insensitive); the roof always runs.
    pub filter: Option<String>,
    /// Fewer rows and runs: under 2 minutes on lavapipe.
    pub quick: bool,
}

impl Options {
    fn selects(&self, kernel: &str, shape: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| {
            let f = f.to_lowercase();
            kernel.to_lowercase().contains(&f) || shape.to_lowercase().contains(&f)
        })
    }

    pub fn budget(&self) -> Budget {
        if self.quick {
            Budget {
                runs: 5,
                pass_ms: 10.0,
                row_ms: 1500.0,
            }
        } else {
            Budget {
                runs: 15,
                pass_ms: 30.0,
                row_ms: 8000.0,
            }
        }
    }
}

/// The injected slowdown for `kernel` ([`SLOW_ENV`]): 1 unless it names this kernel.
fn slowdown(kernel: &str) -> usize {
    let Ok(v) = std::env::var(SLOW_ENV) else {
        return 1;
    };
    let (pattern, factor) = match v.rsplit_once(':') {
        Some((p, f)) => (p.to_string(), f.trim().parse().unwrap_or(8)),
        None => (v.clone(), 8),
    };
    if !pattern.is_empty() && kernel.contains(&pattern) {
        factor
    } else {
        1
    }
}

/// Set up, check and time one case: a row whose check fails says FAIL and is not timed.
pub fn run_case(
    gpu: &Gpu,
    pass: &PassTimer,
    case: &suite::Case,
    budget: &Budget,
    roof: Option<&Roof>,
) -> Row {
    let mut row = Row {
        kernel: case.kernel.into(),
        shape: case.shape.clone(),
        family: String::new(),
        entry: String::new(),
        ms_min: 0.0,
        ms_median: 0.0,
        ms_max: 0.0,
        runs: 0,
        timer: pass.timer.name().into(),
        flops: case.flops,
        bytes: case.bytes,
        gflops: 0.0,
        gbps: 0.0,
        pct_roof: 0.0,
        bound: String::new(),
        check: "ok".into(),
    };
    let result = (|| -> Result<Option<Stats>> {
        let Some(prepared) = (case.setup)(gpu)? else {
            row.check = "skipped: not on this adapter".into();
            return Ok(None);
        };
        let entries: Vec<&str> = prepared.dispatches.iter().map(|d| d.name).collect();
        row.family = suite::family(case.kernel, &entries).into();
        row.entry = suite::entry_label(&prepared.dispatches);
        let ds: Vec<_> = prepared.dispatches.iter().collect();
        crate::kernels::run(gpu, &ds)?;
        if let Some(msg) = (prepared.check)()? {
            row.check = format!("FAIL: {msg}");
            return Ok(None);
        }
        pass.measure(&ds, budget, slowdown(case.kernel)).map(Some)
    })();
    match result {
        Ok(Some(stats)) => row.rate(&stats, roof),
        Ok(None) => {}
        Err(e) => row.check = format!("FAIL: {e}"),
    }
    row
}

/// Run the suite on `gpu`, printing each row as it is measured.
pub fn run(gpu: &Gpu, opts: &Options) -> Result<Report> {
    let timer = Timer::for_gpu(gpu);
    let budget = opts.budget();
    print_header(gpu, timer, &budget, opts);
    let pass = PassTimer::new(gpu);
    let mut rows = Vec::new();
    let mut roof = None;
    for case in suite::cases() {
        let is_roof = matches!(case.kernel, "peak_fma" | "copy_bandwidth");
        if !is_roof && (!opts.selects(case.kernel, &case.shape) || (opts.quick && !case.quick)) {
            continue;
        }
        let mut row = run_case(gpu, &pass, &case, &budget, roof.as_ref());
        if is_roof {
            if !row.timed() {
                println!("{}", report::line(&row));
                return Err(crate::Error::gpu(
                    "bench roof",
                    format!("{} {}", row.kernel, row.check),
                ));
            }
            row.family = "roof".into();
            rows.push(row);
            if rows.len() == 2 {
                roof = Some(set_roof(&mut rows));
            }
            continue;
        }
        println!("{}", report::line(&row));
        rows.push(row);
    }
    let roof = roof.unwrap_or(Roof {
        gflops: f64::NAN,
        gbps: f64::NAN,
    });
    rows.extend(step_rows(gpu, opts, &roof));
    let info = &gpu.info;
    Ok(Report {
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        device_type: format!("{:?}", info.device_type),
        version: env!("CARGO_PKG_VERSION").into(),
        commit: COMMIT.into(),
        wgpu: WGPU_VERSION.into(),
        timer: timer.name().into(),
        quick: opts.quick,
        roof,
        rows,
    })
}

/// The adapter, the build and how rows are timed, then the table's header.
fn print_header(gpu: &Gpu, timer: Timer, budget: &Budget, opts: &Options) {
    println!("adapter: {}", gpu.describe());
    println!(
        "shadergrad {} (commit {COMMIT}), wgpu {WGPU_VERSION}; kernel rows timed by {}, {} runs after warm-up{}",
        env!("CARGO_PKG_VERSION"),
        match timer {
            Timer::Timestamps => "GPU timestamp queries around each pass",
            Timer::WallClock => "the wall clock around each waited submit (no timestamp queries)",
        },
        budget.runs,
        if opts.quick { " (--quick)" } else { "" }
    );
    println!("\n{}", report::header());
}

/// The roof from the two roof rows (peak FMA, copy bandwidth): their best runs, what this
/// adapter can reach. Their own % roof is their median against it. Prints both rows.
fn set_roof(rows: &mut [Row]) -> Roof {
    let best = |r: &Row, amount: f64| amount / r.ms_min / 1e6;
    let r = Roof {
        gflops: best(&rows[0], rows[0].flops),
        gbps: best(&rows[1], rows[1].bytes),
    };
    (rows[0].pct_roof, rows[0].bound) = (100.0 * rows[0].gflops / r.gflops, "fma".into());
    (rows[1].pct_roof, rows[1].bound) = (100.0 * rows[1].gbps / r.gbps, "copy".into());
    for row in rows.iter() {
        println!("{}", report::line(row));
    }
    println!(
        "{:<32} roof (best runs): {:.2} GFLOP/s (peak FMA), {:.2} GB/s (copy)",
        "", r.gflops, r.gbps
    );
    r
}

/// The whole-step rows: the seed CNN's training step and its cold start.
fn step_rows(gpu: &Gpu, opts: &Options, roof: &Roof) -> Vec<Row> {
    let mut rows = Vec::new();
    if opts.selects("train_step", "seed CNN") {
        let steps = if opts.quick { 5 } else { 20 };
        let mut row = match startup::train_step(gpu, steps, slowdown("train_step")) {
            Ok(r) => r,
            Err(e) => {
                let mut r = startup::train_step_placeholder();
                r.check = format!("FAIL: {e}");
                r
            }
        };
        if row.timed() {
            row.pct_roof = 100.0 * row.gflops / roof.gflops;
        }
        println!("{}", report::line(&row));
        rows.push(row);
    }
    if opts.selects("cold_start", "seed CNN") {
        for row in startup::cold_start(gpu, if opts.quick { 1 } else { 3 }) {
            println!("{}", report::line(&row));
            rows.push(row);
        }
    }
    rows
}
