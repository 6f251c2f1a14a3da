//! `shadergrad bench`: the JSON file read back (bad files name the file and field), the
//! comparison's normalisation and spread rule, and on the GPU the binary end to end: a
//! normal compare passes and a deliberately slowed kernel (SHADERGRAD_BENCH_SLOW) is
//! flagged; no Mesa XDG_RUNTIME_DIR noise on a first run.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use shadergrad::bench::suite::close;
use shadergrad::bench::{compare, Report, Roof, Row, Verdict};

fn row(kernel: &str, ms: [f64; 3], bound: &str) -> Row {
    Row {
        kernel: kernel.into(),
        shape: "4x4".into(),
        family: "portable".into(),
        entry: kernel.into(),
        ms_min: ms[0],
        ms_median: ms[1],
        ms_max: ms[2],
        runs: 5,
        timer: "gpu-timestamps".into(),
        flops: 1e6,
        bytes: 1e6,
        gflops: 2.5,
        gbps: 0.5,
        pct_roof: 10.0,
        bound: bound.into(),
        check: "ok".into(),
    }
}

fn report(roof: Roof, rows: Vec<Row>) -> Report {
    Report {
        adapter: "test".into(),
        backend: "Vulkan".into(),
        driver: "d".into(),
        device_type: "Cpu".into(),
        version: "0.1.0".into(),
        commit: "unknown".into(),
        wgpu: "30.0.2".into(),
        timer: "gpu-timestamps".into(),
        quick: true,
        roof,
        rows,
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadergrad-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn json_round_trips_and_bad_files_name_the_field() {
    let r = report(
        Roof {
            gflops: 10.0,
            gbps: 5.0,
        },
        vec![row("matmul", [1.0, 1.1, 1.3], "fma")],
    );
    let path = tmp("round.json");
    r.write(&path).unwrap();
    let back = Report::read(&path).unwrap();
    assert_eq!(back.rows, r.rows);
    assert_eq!(back.roof, r.roof);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for field in [
        "adapter",
        "backend",
        "driver",
        "device_type",
        "version",
        "commit",
        "wgpu",
        "timer",
    ] {
        assert!(v[field].is_string(), "{field}");
    }
    for field in [
        "kernel",
        "shape",
        "family",
        "ms_min",
        "ms_median",
        "ms_max",
        "gflops",
        "gbps",
        "pct_roof",
    ] {
        assert!(!v["rows"][0][field].is_null(), "rows[0].{field}");
    }

    let mut bad = v.clone();
    bad["rows"][0]["ms_median"] = serde_json::json!("fast");
    std::fs::write(&path, bad.to_string()).unwrap();
    let e = Report::read(&path).err().unwrap().to_string();
    assert!(
        e.contains("round.json") && e.contains("rows[0].ms_median"),
        "{e}"
    );
    let mut bad = v.clone();
    bad["roof"].as_object_mut().unwrap().remove("gbps");
    std::fs::write(&path, bad.to_string()).unwrap();
    let e = Report::read(&path).err().unwrap().to_string();
    assert!(e.contains("roof.gbps") && e.contains("missing"), "{e}");
    std::fs::write(&path, "{ not json").unwrap();
    let e = Report::read(&path).err().unwrap().to_string();
    assert!(e.contains("round.json") && e.contains("not JSON"), "{e}");
    let e = Report::read(&tmp("absent.json")).err().unwrap().to_string();
    assert!(e.contains("absent.json"), "{e}");
}

#[test]
fn compare_normalises_by_the_roof_and_respects_the_spread() {
    let roof = Roof {
        gflops: 10.0,
        gbps: 5.0,
    };
    let old = report(
        roof,
        vec![
            row("a", [1.0, 1.1, 1.2], "fma"),
            row("b", [1.0, 1.1, 1.2], "copy"),
            row("c", [1.0, 1.1, 1.2], "fma"),
        ],
    );
    // A machine half as fast: every row twice as slow, the roof half: nothing regressed.
    let slow_machine = report(
        Roof {
            gflops: 5.0,
            gbps: 2.5,
        },
        vec![
            row("a", [2.0, 2.2, 2.4], "fma"),
            row("b", [2.0, 2.2, 2.4], "copy"),
            row("c", [2.0, 2.2, 2.4], "fma"),
        ],
    );
    for c in compare(&old, &slow_machine, 2.0) {
        assert_eq!(c.verdict, Verdict::Same, "{} {}", c.kernel, c.normalised);
        assert!((c.ratio - 2.0).abs() < 1e-9 && (c.normalised - 1.0).abs() < 1e-9);
    }
    // Same machine: a 4x slower row regresses, a 1.3x slower one beyond the spread is only
    // slower, one within the spread is the same.
    let new = report(
        roof,
        vec![
            row("a", [4.0, 4.4, 4.8], "fma"),
            row("b", [1.3, 1.43, 1.5], "copy"),
            row("c", [1.1, 1.2, 1.3], "fma"),
            row("d", [1.0, 1.0, 1.0], "fma"),
        ],
    );
    let v: Vec<Verdict> = compare(&old, &new, 2.0).iter().map(|c| c.verdict).collect();
    assert_eq!(
        v,
        [
            Verdict::Regression,
            Verdict::Slower,
            Verdict::Same,
            Verdict::Unmatched
        ]
    );
    assert_eq!(compare(&new, &old, 2.0)[0].verdict, Verdict::Faster);
}

#[test]
fn close_reports_the_first_mismatch() {
    assert_eq!(close(&[1.0, 2.0], &[1.0, 2.0], 0.0, 0.0), None);
    let m = close(&[1.0, 2.5, f32::NAN], &[1.0, 2.0, 3.0], 1e-4, 1e-4).unwrap();
    assert!(
        m.starts_with("2 of 3 values differ") && m.contains("[1]"),
        "{m}"
    );
}

fn bench(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadergrad"));
    cmd.arg("bench").args(args).env_remove("XDG_RUNTIME_DIR");
    cmd.env_remove(shadergrad::bench::SLOW_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the shadergrad binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_slowed_kernel_is_flagged_and_a_normal_compare_passes() {
    if common::gpu().is_none() {
        return;
    }
    let base = tmp("base.json");
    let base_s = base.to_str().unwrap();
    let quick = ["--quick", "--filter", "transpose"];
    let (out, text) = bench(&[&quick[..], &["--json", base_s]].concat(), &[]);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("XDG_RUNTIME_DIR"), "Mesa noise:\n{text}");
    assert!(
        text.contains("roof (best runs):") && text.contains("% roof"),
        "{text}"
    );
    let r = Report::read(&base).unwrap();
    let kernels: Vec<&str> = r.rows.iter().map(|r| r.kernel.as_str()).collect();
    assert_eq!(
        kernels,
        ["peak_fma", "copy_bandwidth", "transpose"],
        "{text}"
    );
    assert!(
        r.rows.iter().all(|r| r.check == "ok" && r.ms_median > 0.0),
        "{text}"
    );

    // The same code again: no regression (generous threshold: other work shares the CPU).
    let compare = [&quick[..], &["--compare", base_s, "--threshold", "4"]].concat();
    let (out, text) = bench(&compare, &[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("norm. min") && !text.contains("REGRESSION"),
        "{text}"
    );

    // transpose recorded 16 times a run: flagged, and the exit status says so.
    let (out, text) = bench(&compare, &[(shadergrad::bench::SLOW_ENV, "transpose:16")]);
    assert!(!out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("transpose") && l.contains("REGRESSION"));
    assert!(line.is_some(), "{text}");
    assert!(text.contains("regressed against"), "{text}");
}

#[test]
fn bad_baselines_fail_before_measuring() {
    let path = tmp("broken.json");
    std::fs::write(&path, r#"{"adapter": 3}"#).unwrap();
    let (out, text) = bench(&["--compare", path.to_str().unwrap()], &[]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("broken.json") && text.contains("adapter"),
        "{text}"
    );
    assert!(
        !text.contains("roof (best runs)"),
        "measured before reading the baseline:\n{text}"
    );
}

#[test]
fn info_prints_no_mesa_runtime_dir_errors() {
    if common::gpu().is_none() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(!text.contains("XDG_RUNTIME_DIR"), "{text}");
}

#[test]
fn roof_kernels_match_their_references() {
    use shadergrad::kernels::roof::*;
    use shadergrad::kernels::{run, LOOP_BUDGET};
    use shadergrad::tensor::Tensor;
    let Some(gpu) = common::gpu() else { return };
    // Awkward sizes: 1, primes, a workgroup plus one; rounds 1, a prime, many.
    for n in [1, 7, 257, 1031] {
        for iters in [1, 13, 500] {
            let y = Tensor::zeros(gpu, "y", &[n, 4]).unwrap();
            run(gpu, &[&peak_fma(gpu, iters, &y).unwrap()]).unwrap();
            let want: Vec<f64> = (0..n).flat_map(|i| peak_fma_ref(i, iters)).collect();
            common::assert_close(
                &format!("peak_fma n={n} iters={iters}"),
                &y.to_f32(gpu).unwrap(),
                &want,
                // f32 rounding grows with the chain: ~1 ulp a round.
                1e-6 + 2e-7 * iters as f64,
                1e-6,
            );
        }
        let x: Vec<f32> = (0..4 * n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let tx = Tensor::from_f32(gpu, "x", &[n, 4], &x).unwrap();
        let ty = Tensor::zeros(gpu, "y", &[n, 4]).unwrap();
        run(gpu, &[&copy_bandwidth(gpu, &tx, &ty).unwrap()]).unwrap();
        assert_eq!(ty.to_f32(gpu).unwrap(), x, "copy_bandwidth n={n}");
    }
    // Bad shapes are errors naming the op, never panics.
    let odd = Tensor::zeros(gpu, "odd", &[6]).unwrap();
    let y = Tensor::zeros(gpu, "y", &[8]).unwrap();
    for e in [
        peak_fma(gpu, 10, &odd).err(),
        peak_fma(gpu, 0, &y).err(),
        peak_fma(gpu, LOOP_BUDGET + 1, &y).err(),
        copy_bandwidth(gpu, &odd, &odd).err(),
        copy_bandwidth(gpu, &y, &Tensor::zeros(gpu, "z", &[4]).unwrap()).err(),
    ] {
        let e = e.expect("refused").to_string();
        assert!(
            e.contains("peak_fma") || e.contains("copy_bandwidth"),
            "{e}"
        );
    }
}

#[test]
fn a_wrong_kernel_fails_its_check_and_is_not_timed() {
    use shadergrad::bench::suite::{Case, Prepared};
    use shadergrad::bench::timer::PassTimer;
    use shadergrad::bench::{run_case, Options};
    use shadergrad::kernels::transpose::{transpose, transpose_ref};
    use shadergrad::tensor::Tensor;
    let Some(gpu) = common::gpu() else { return };
    // transpose checked against the reference of the wrong shape: a kernel that is "wrong".
    let case = |wrong: bool| Case {
        kernel: "transpose",
        shape: "3x5".into(),
        flops: 0.0,
        bytes: 120.0,
        quick: true,
        setup: Box::new(move |gpu| {
            let xv: Vec<f32> = (0..15).map(|i| i as f32).collect();
            let x = Tensor::from_f32(gpu, "x", &[3, 5], &xv)?;
            let y = Tensor::zeros(gpu, "y", &[5, 3])?;
            let d = transpose(gpu, &x, &y)?;
            let check = Box::new(move || {
                let xs: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
                let (r, c) = if wrong { (5, 3) } else { (3, 5) };
                Ok(close(&y.to_f32(gpu)?, &transpose_ref(&xs, r, c), 0.0, 0.0))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    };
    let opts = Options {
        quick: true,
        ..Options::default()
    };
    let pass = PassTimer::new(gpu);
    let good = run_case(gpu, &pass, &case(false), &opts.budget(), None);
    assert!(
        good.timed() && good.runs >= 3 && good.ms_median > 0.0,
        "{good:?}"
    );
    let bad = run_case(gpu, &pass, &case(true), &opts.budget(), None);
    assert!(bad.check.starts_with("FAIL: "), "{bad:?}");
    assert!(bad.check.contains("values differ"), "{bad:?}");
    assert_eq!(
        (bad.runs, bad.ms_median),
        (0, 0.0),
        "a failed row is not timed"
    );
    assert!(shadergrad::bench::report::line(&bad).contains("FAIL"));
}
