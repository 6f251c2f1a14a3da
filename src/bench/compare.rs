//! `--compare OLD.json`: each row of this run against the row of the same kernel and shape
//! in an older run. Times are normalised by the roof of each run (the FMA roof for rows
//! bound by compute, the copy roof for the others), so that a machine that is uniformly
//! slower or busier compares equal. A row is "slower" or "faster" only when the two runs'
//! ranges (min to max, normalised) do not overlap, and a regression only when it is slower
//! and the ratio of its normalised best (min) times passes the threshold: other work on the
//! machine only ever adds time, so the best run is the one it disturbed least.

use super::report::{Report, Row};

/// What one row's comparison found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The ranges overlap: no change beyond the runs' own spread.
    Same,
    Faster,
    /// Slower beyond the spread, but within the threshold.
    Slower,
    /// Slower beyond the spread and by more than the threshold.
    Regression,
    /// In one run only, or failed / skipped in one.
    Unmatched,
}

pub struct Comparison {
    pub kernel: String,
    pub shape: String,
    pub old_ms: f64,
    pub new_ms: f64,
    /// new / old medians, as measured.
    pub ratio: f64,
    /// new / old best (min) times, each over its run's roof.
    pub normalised: f64,
    pub verdict: Verdict,
}

/// How much faster this run's machine is than the old one's for rows bound by `bound`.
fn roof_speedup(old: &Report, new: &Report, bound: &str) -> f64 {
    match bound {
        "copy" => new.roof.gbps / old.roof.gbps,
        _ => new.roof.gflops / old.roof.gflops,
    }
}

pub fn compare(old: &Report, new: &Report, threshold: f64) -> Vec<Comparison> {
    let find = |r: &Row| {
        old.rows
            .iter()
            .find(|o| o.kernel == r.kernel && o.shape == r.shape)
    };
    new.rows
        .iter()
        .map(|r| {
            let mut c = Comparison {
                kernel: r.kernel.clone(),
                shape: r.shape.clone(),
                old_ms: 0.0,
                new_ms: r.ms_median,
                ratio: f64::NAN,
                normalised: f64::NAN,
                verdict: Verdict::Unmatched,
            };
            let Some(o) = find(r).filter(|o| o.timed() && r.timed() && o.ms_median > 0.0) else {
                return c;
            };
            // The roof rows define the normalisation: compare them as measured.
            let scale = if r.family == "roof" {
                1.0
            } else {
                roof_speedup(old, new, &o.bound)
            };
            let (lo, hi) = (r.ms_min * scale, r.ms_max * scale);
            c.old_ms = o.ms_median;
            c.ratio = r.ms_median / o.ms_median;
            c.normalised = lo / o.ms_min.max(f64::MIN_POSITIVE);
            c.verdict = if lo > o.ms_max {
                if c.normalised > threshold && r.family != "roof" {
                    Verdict::Regression
                } else {
                    Verdict::Slower
                }
            } else if hi < o.ms_min {
                Verdict::Faster
            } else {
                Verdict::Same
            };
            c
        })
        .collect()
}

pub fn print(old_path: &str, old: &Report, new: &Report, rows: &[Comparison], threshold: f64) {
    println!(
        "\ncompared with {old_path} ({}, commit {}, roof {:.1} GFLOP/s, {:.1} GB/s); ms: medians; ratio: of the medians; norm. min: of the best times, each over its run's roof; regression: slower beyond both runs' spread and norm. min over {threshold}x",
        old.adapter, old.commit, old.roof.gflops, old.roof.gbps
    );
    println!(
        "  machine speed ratio (new roof / old roof): fma {:.2}, copy {:.2}",
        new.roof.gflops / old.roof.gflops,
        new.roof.gbps / old.roof.gbps
    );
    println!(
        "{:<32} {:<42} {:>9} {:>9} {:>7} {:>10}  verdict",
        "kernel", "shape", "old ms", "new ms", "ratio", "norm. min"
    );
    for c in rows {
        let verdict = match c.verdict {
            Verdict::Same => "same (within spread)",
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::Regression => "REGRESSION",
            Verdict::Unmatched => "not in both runs",
        };
        if c.verdict == Verdict::Unmatched {
            println!(
                "{:<32} {:<42} {:>9} {:>9.3} {:>7} {:>10}  {verdict}",
                c.kernel, c.shape, "-", c.new_ms, "-", "-"
            );
        } else {
            println!(
                "{:<32} {:<42} {:>9.3} {:>9.3} {:>7.2} {:>10.2}  {verdict}",
                c.kernel, c.shape, c.old_ms, c.new_ms, c.ratio, c.normalised
            );
        }
    }
}
