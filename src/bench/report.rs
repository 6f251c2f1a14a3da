//! A bench run as data: the adapter, the roof and the rows; the table printed to the
//! terminal; and the JSON file (`--json`), written and read back (`--compare`), every field
//! checked and named on error.

use std::path::Path;

use serde_json::{json, Value};

use super::timer::Stats;
use crate::{Error, Result};

/// The adapter's measured roof: the GFLOP/s of the peak-FMA kernel's and the GB/s of the
/// copy kernel's best run in this run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roof {
    pub gflops: f64,
    pub gbps: f64,
}

/// One measured row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The op (the wrapper's name): with `shape`, what `--compare` matches rows by.
    pub kernel: String,
    pub shape: String,
    /// gpu | window | subgroup | portable | engine (a whole step) | roof.
    pub family: String,
    /// The entry points the row dispatches ("matmul_window x4").
    pub entry: String,
    pub ms_min: f64,
    pub ms_median: f64,
    pub ms_max: f64,
    pub runs: usize,
    /// gpu-timestamps or wall-clock.
    pub timer: String,
    pub flops: f64,
    pub bytes: f64,
    /// At the median; 0 where the row counts no flops (or bytes).
    pub gflops: f64,
    pub gbps: f64,
    /// The larger of GFLOP/s over the FMA roof and GB/s over the copy roof, in percent.
    pub pct_roof: f64,
    /// "fma" or "copy": the roof `pct_roof` (and `--compare`'s normalisation) uses.
    pub bound: String,
    /// "ok", or "FAIL: ..." (not timed), or "skipped: ..." (not run here).
    pub check: String,
}

impl Row {
    pub fn timed(&self) -> bool {
        self.check == "ok"
    }

    /// Fill the rates and % of roof from the times, flops and bytes.
    pub fn rate(&mut self, s: &Stats, roof: Option<&Roof>) {
        (self.ms_min, self.ms_median, self.ms_max, self.runs) = (s.min, s.median, s.max, s.runs);
        self.gflops = self.flops / s.median / 1e6;
        self.gbps = self.bytes / s.median / 1e6;
        if let Some(r) = roof {
            let fma = 100.0 * self.gflops / r.gflops;
            let copy = 100.0 * self.gbps / r.gbps;
            (self.pct_roof, self.bound) = if fma >= copy {
                (fma, "fma".into())
            } else {
                (copy, "copy".into())
            };
        }
    }
}

pub struct Report {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub device_type: String,
    /// shadergrad's version.
    pub version: String,
    /// The git commit the binary was built from, or "unknown".
    pub commit: String,
    pub wgpu: String,
    pub timer: String,
    pub quick: bool,
    pub roof: Roof,
    pub rows: Vec<Row>,
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_rate(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.2}")
    } else {
        "-".into()
    }
}

/// The table's header and one line per row.
pub fn header() -> String {
    format!(
        "{:<32} {:<9} {:<42} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  {}",
        "kernel",
        "family",
        "shape",
        "ms min",
        "median",
        "max",
        "GFLOP/s",
        "GB/s",
        "% roof",
        "check  (dispatches)"
    )
}

pub fn line(r: &Row) -> String {
    let name = &r.kernel;
    let entry = if r.entry.is_empty() || r.entry == r.kernel {
        String::new()
    } else {
        format!("  ({})", r.entry)
    };
    if !r.timed() {
        return format!(
            "{name:<32} {:<9} {:<42} {}{entry}",
            r.family, r.shape, r.check
        );
    }
    let pct = if r.pct_roof > 0.0 {
        format!("{:.1} {}", r.pct_roof, r.bound)
    } else {
        "-".into()
    };
    let timer = if r.timer == "wall-clock" {
        " (wall clock)"
    } else {
        ""
    };
    format!(
        "{name:<32} {:<9} {:<42} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  ok{timer}{entry}",
        r.family,
        r.shape,
        fmt_ms(r.ms_min),
        fmt_ms(r.ms_median),
        fmt_ms(r.ms_max),
        fmt_rate(r.gflops),
        fmt_rate(r.gbps),
        pct,
    )
}

impl Report {
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "kernel": r.kernel, "shape": r.shape, "family": r.family, "entry": r.entry,
                    "ms_min": r.ms_min, "ms_median": r.ms_median, "ms_max": r.ms_max,
                    "runs": r.runs, "timer": r.timer, "flops": r.flops, "bytes": r.bytes,
                    "gflops": r.gflops, "gbps": r.gbps, "pct_roof": r.pct_roof,
                    "bound": r.bound, "check": r.check,
                })
            })
            .collect();
        json!({
            "adapter": self.adapter, "backend": self.backend, "driver": self.driver,
            "device_type": self.device_type, "version": self.version, "commit": self.commit,
            "wgpu": self.wgpu, "timer": self.timer, "quick": self.quick,
            "roof": { "gflops": self.roof.gflops, "gbps": self.roof.gbps },
            "rows": rows,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// Read a file written by [`Report::write`]; a missing or mistyped field is an error
    /// naming the file and the field (`rows[3].ms_median`).
    pub fn read(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, "(file)", format!("not JSON: {e}")))?;
        let f = Fields {
            path,
            v: &v,
            at: String::new(),
        };
        let [adapter, backend, driver, device_type, version, commit, wgpu, timer] = [
            "adapter",
            "backend",
            "driver",
            "device_type",
            "version",
            "commit",
            "wgpu",
            "timer",
        ]
        .map(|k| f.str(k));
        let adapter = adapter?;
        let roof = f.obj("roof")?;
        let roof = Roof {
            gflops: roof.positive("gflops")?,
            gbps: roof.positive("gbps")?,
        };
        let rows = f
            .get("rows")?
            .as_array()
            .ok_or_else(|| f.bad("rows", "not an array"))?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let r = Fields {
                    path,
                    v,
                    at: format!("rows[{i}]."),
                };
                Ok(Row {
                    kernel: r.str("kernel")?,
                    shape: r.str("shape")?,
                    family: r.str("family")?,
                    entry: r.str_or("entry", ""),
                    ms_min: r.num("ms_min")?,
                    ms_median: r.num("ms_median")?,
                    ms_max: r.num("ms_max")?,
                    runs: r.num_or("runs", 0.0) as usize,
                    timer: r.str_or("timer", ""),
                    flops: r.num_or("flops", 0.0),
                    bytes: r.num_or("bytes", 0.0),
                    gflops: r.num("gflops")?,
                    gbps: r.num("gbps")?,
                    pct_roof: r.num("pct_roof")?,
                    bound: r.str_or("bound", "fma"),
                    check: r.str_or("check", "ok"),
                })
            })
            .collect::<Result<Vec<Row>>>()?;
        Ok(Report {
            adapter,
            backend: backend?,
            driver: driver?,
            device_type: device_type?,
            version: version?,
            commit: commit?,
            wgpu: wgpu?,
            timer: timer?,
            quick: f.v.get("quick").and_then(Value::as_bool).unwrap_or(false),
            roof,
            rows,
        })
    }
}

/// One JSON object of a file being read, and where it is (for the error's field name).
struct Fields<'a> {
    path: &'a Path,
    v: &'a Value,
    at: String,
}

impl<'a> Fields<'a> {
    fn bad(&self, name: &str, msg: &str) -> Error {
        Error::data(self.path, format!("{}{name}", self.at), msg)
    }

    fn get(&self, name: &str) -> Result<&'a Value> {
        self.v.get(name).ok_or_else(|| self.bad(name, "missing"))
    }

    fn obj(&self, name: &str) -> Result<Fields<'a>> {
        let v = self.get(name)?;
        if !v.is_object() {
            return Err(self.bad(name, "not an object"));
        }
        Ok(Fields {
            path: self.path,
            v,
            at: format!("{}{name}.", self.at),
        })
    }

    fn str(&self, name: &str) -> Result<String> {
        self.get(name)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(name, "not a string"))
    }

    fn str_or(&self, name: &str, default: &str) -> String {
        self.v
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    }

    fn num(&self, name: &str) -> Result<f64> {
        self.get(name)?
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| self.bad(name, "not a non-negative number"))
    }

    fn positive(&self, name: &str) -> Result<f64> {
        Some(self.num(name)?)
            .filter(|v| *v > 0.0)
            .ok_or_else(|| self.bad(name, "not a positive number"))
    }

    fn num_or(&self, name: &str, default: f64) -> f64 {
        self.v.get(name).and_then(Value::as_f64).unwrap_or(default)
    }
}
