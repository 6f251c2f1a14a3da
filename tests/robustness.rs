//! Robustness: bad input, faults and limits never crash, hang or lose work.
//!
//! Most cases drive the real `shadergrad` binary on small inputs written into a temp dir and
//! print what it said (`cargo test --test robustness -- --nocapture` shows every case's
//! message); each must exit non-zero (or 130 for Ctrl-C), name the file or limit, and never
//! panic. The rest run in-process: GPU faults injected into a private device, devices opened
//! with lower limits than the adapter's, and seeded fuzzing of the IDX, checkpoint and PNG
//! readers plus a replay of the committed corpus in `tests/corpus/`.
//!
//! Cases that need no GPU run everywhere; the GPU ones skip when there is no adapter (or
//! fail, with `SHADERGRAD_REQUIRE_GPU=1`, as `.ci/run` sets).

use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shadergrad::checkpoint::{self, Checkpoint};
use shadergrad::data::{self, default_data_dir, load_mnist, parse_idx, Mnist};
use shadergrad::executor::Trainer;
use shadergrad::fit::{check_batch, check_params, max_batch};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;
use shadergrad::rng::Rng;
use shadergrad::{predict, Error};

const PIXELS: usize = 28 * 28;
/// No run of the binary here takes more than a few seconds; one that passes this is hung.
const RUN_LIMIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------- helpers

/// The shared GPU for in-process cases, or None (with the reason printed) when there is no
/// adapter; with `SHADERGRAD_REQUIRE_GPU=1` a missing adapter fails the test instead.
fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                std::env::var("SHADERGRAD_REQUIRE_GPU").as_deref() != Ok("1"),
                "SHADERGRAD_REQUIRE_GPU=1 but no GPU: {e}"
            );
            eprintln!("skipping GPU case: {e}");
            None
        }
    }
}

/// A device of its own on the shared GPU's adapter, for cases that fault or limit it.
fn private_gpu(limits: impl FnOnce(&mut wgpu::Limits)) -> Option<Gpu> {
    let shared = gpu()?;
    let mut l = shared.adapter.limits();
    limits(&mut l);
    Some(Gpu::with_adapter_limits(shared.adapter.clone(), l).expect("a device on the adapter"))
}

fn mnist() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| load_mnist(&default_data_dir()).expect("vendored MNIST in data/mnist"))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shadergrad-robust-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn be(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn idx_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    [
        be(&[0x803, n as u32, rows as u32, cols as u32]),
        pixels.to_vec(),
    ]
    .concat()
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    [be(&[0x801, labels.len() as u32]), labels.to_vec()].concat()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The four MNIST files in `dir`: the first `n_train` and `n_test` images of the vendored
/// MNIST, raw.
fn write_mnist(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let m = mnist();
    for (split, n, images, labels) in [
        (&m.train, n_train, data::TRAIN_IMAGES, data::TRAIN_LABELS),
        (&m.test, n_test, data::TEST_IMAGES, data::TEST_LABELS),
    ] {
        let px = &split.images[..n * PIXELS];
        std::fs::write(dir.join(images), idx_images(n, 28, 28, px)).unwrap();
        std::fs::write(dir.join(labels), idx_labels(&split.labels[..n])).unwrap();
    }
}

/// What a run of the binary did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The lines a user reads as the outcome: the stderr lines from us (not the drivers').
    fn message(&self) -> String {
        let ours: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with('[') && !l.trim().is_empty())
            .filter(|l| !l.starts_with("    \t") && !l.starts_with("error: XDG_RUNTIME_DIR"))
            .collect();
        ours.join("\n")
    }
}

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadergrad"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Wait for `child` at most [`RUN_LIMIT`]; a child still running then is killed and the
/// test fails (a hang).
fn finish(mut child: Child, what: &str, out: &Path, err: &Path) -> Run {
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {RUN_LIMIT:?} (hung)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

/// Run the binary to the end (output through files: no pipe can fill up and block it).
fn run_with(mut cmd: Command, what: &str) -> Run {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base =
        std::env::temp_dir().join(format!("shadergrad-robust-{}-out{n}", std::process::id()));
    let (out, err) = (base.with_extension("stdout"), base.with_extension("stderr"));
    let child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("the shadergrad binary runs");
    let run = finish(child, what, &out, &err);
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
    run
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_with(command(args, env), &format!("{args:?}"))
}

/// A case that must fail: non-zero exit, no panic, every needle in the output. Prints the
/// case and its message (the issue note quotes them).
#[track_caller]
fn expect_failure(case: &str, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> Run {
    let r = run(args, env);
    check_failure(case, &r, needles);
    r
}

#[track_caller]
fn check_failure(case: &str, r: &Run, needles: &[&str]) {
    let all = r.all();
    println!(
        "case {case}: exit {:?}\n  {}",
        r.code(),
        r.message().replace('\n', "\n  ")
    );
    assert!(!all.contains("panicked"), "{case} panicked:\n{all}");
    assert!(!r.status.success(), "{case}: should fail:\n{all}");
    assert!(r.code().is_some(), "{case}: killed by a signal:\n{all}");
    for n in needles {
        assert!(all.contains(n), "{case}: the output lacks {n:?}:\n{all}");
    }
}

#[track_caller]
fn expect_success(case: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let r = run(args, env);
    let all = r.all();
    println!("case {case}: exit {:?}", r.code());
    assert!(!all.contains("panicked"), "{case} panicked:\n{all}");
    assert!(r.status.success(), "{case}: should succeed:\n{all}");
    r
}

fn bits(values: &[Vec<f32>]) -> Vec<u32> {
    values.iter().flatten().map(|v| v.to_bits()).collect()
}

/// Run `f` on `input`; a panic fails the test, saving the input for replay and naming it.
fn no_panic<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{}-{}", what.replace(['/', ' '], "_"), input.len()));
            let _ = std::fs::write(&file, input);
            let head: String = input.iter().take(48).map(|b| format!("{b:02x}")).collect();
            panic!(
                "{what}: the reader panicked ({msg}) on {} bytes starting {head}; input saved to {}",
                input.len(),
                file.display()
            );
        }
    }
}

// ---------------------------------------------------------------- 1. data files

/// A good small MNIST directory (64 training and 16 test images, synthetic).
fn good_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(1);
    let px = |n: usize, rng: &mut Rng| -> Vec<u8> {
        (0..n * PIXELS).map(|_| rng.below(256) as u8).collect()
    };
    let labels = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 10) as u8).collect() };
    std::fs::write(
        dir.join(data::TRAIN_IMAGES),
        idx_images(64, 28, 28, &px(64, &mut rng)),
    )
    .unwrap();
    std::fs::write(dir.join(data::TRAIN_LABELS), idx_labels(&labels(64))).unwrap();
    std::fs::write(
        dir.join(data::TEST_IMAGES),
        idx_images(16, 28, 28, &px(16, &mut rng)),
    )
    .unwrap();
    std::fs::write(dir.join(data::TEST_LABELS), idx_labels(&labels(16))).unwrap();
}

/// The effective user id, from `id -u` (0 for root, whom file permissions do not stop).
fn euid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn bad_data_files_name_the_file_and_the_problem() {
    let tmp = TempDir::new("data");
    type Break = Box<dyn Fn(&Path)>;
    let images = |d: &Path| d.join(data::TRAIN_IMAGES);
    let labels = |d: &Path| d.join(data::TRAIN_LABELS);
    let rewrite = |path: PathBuf, f: &dyn Fn(Vec<u8>) -> Vec<u8>| {
        let b = std::fs::read(&path).unwrap();
        std::fs::write(&path, f(b)).unwrap();
    };
    // A stream of 300 MiB of zeros in 1 KiB of gzip members: past the 256 MiB cap.
    let bomb = {
        let member = gzip(&vec![0u8; 1 << 20]);
        let mut b = gzip(&idx_labels(&[1, 2, 3]));
        for _ in 0..300 {
            b.extend_from_slice(&member);
        }
        b
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Break, Vec<&str>)> = vec![
        ("truncated images", Box::new(move |d| rewrite(images(d), &|b| b[..b.len() - 1000].to_vec())),
            vec![data::TRAIN_IMAGES, "length", "truncated"]),
        ("empty labels file", Box::new(move |d| std::fs::write(labels(d), b"").unwrap()),
            vec![data::TRAIN_LABELS, "file is empty"]),
        ("wrong magic (a zip file)", Box::new(move |d| rewrite(images(d), &|b| [b"PK\x03\x04".to_vec(), b[4..].to_vec()].concat())),
            vec![data::TRAIN_IMAGES, "magic", "0x504b0304"]),
        ("wrong element type (f32)", Box::new(move |d| rewrite(images(d), &|mut b| { b[2] = 0x0d; b })),
            vec![data::TRAIN_IMAGES, "element type", "f32"]),
        ("dims larger than the data", Box::new(move |d| rewrite(images(d), &|mut b| { b[4..8].copy_from_slice(&100u32.to_be_bytes()); b })),
            vec![data::TRAIN_IMAGES, "length", "dims [100, 28, 28]"]),
        ("dims smaller than the data", Box::new(move |d| rewrite(images(d), &|mut b| { b[4..8].copy_from_slice(&63u32.to_be_bytes()); b })),
            vec![data::TRAIN_IMAGES, "trailing bytes"]),
        ("dims overflowing", Box::new(move |d| rewrite(images(d), &|mut b| { b[4..16].copy_from_slice(&be(&[u32::MAX; 3])); b })),
            vec![data::TRAIN_IMAGES, "dims"]),
        ("zero-width images", Box::new(move |d| std::fs::write(images(d), idx_images(64, 28, 0, &[])).unwrap()),
            vec![data::TRAIN_IMAGES, "image size is 28x0"]),
        ("a labels file where the images belong", Box::new(move |d| std::fs::write(images(d), idx_labels(&[1; 64])).unwrap()),
            vec![data::TRAIN_IMAGES, "magic", "3 dims"]),
        ("images/labels count mismatch", Box::new(move |d| std::fs::write(labels(d), idx_labels(&[1; 63])).unwrap()),
            vec![data::TRAIN_LABELS, "count", "64 images", "63 labels"]),
        ("a test label 10 (training labels 0..=9)", Box::new(move |d| rewrite(d.join(data::TEST_LABELS), &|mut b| { b[8 + 5] = 10; b })),
            vec![data::TEST_LABELS, "label at index 5 is 10", "0..=9 (10 classes)"]),
        ("a test label 255", Box::new(move |d| rewrite(d.join(data::TEST_LABELS), &|mut b| { let n = b.len(); b[n - 1] = 255; b })),
            vec![data::TEST_LABELS, "label at index 15 is 255"]),
        ("training labels all 0", Box::new(move |d| std::fs::write(labels(d), idx_labels(&[0; 64])).unwrap()),
            vec![data::TRAIN_LABELS, "at least 2 classes"]),
        ("corrupt gzip", Box::new(move |d| {
            let mut gz = gzip(&std::fs::read(labels(d)).unwrap());
            let n = gz.len();
            gz[n - 6] ^= 0xff; // the CRC
            std::fs::remove_file(labels(d)).unwrap();
            std::fs::write(d.join(format!("{}.gz", data::TRAIN_LABELS)), gz).unwrap();
        }), vec!["train-labels-idx1-ubyte.gz", "gzip"]),
        ("truncated gzip", Box::new(move |d| {
            let gz = gzip(&std::fs::read(images(d)).unwrap());
            std::fs::remove_file(images(d)).unwrap();
            std::fs::write(d.join(format!("{}.gz", data::TRAIN_IMAGES)), &gz[..gz.len() / 2]).unwrap();
        }), vec!["train-images-idx3-ubyte.gz", "gzip", "corrupt or truncated"]),
        ("gzip inflating past the cap", Box::new(move |d| {
            std::fs::remove_file(labels(d)).unwrap();
            std::fs::write(d.join(format!("{}.gz", data::TRAIN_LABELS)), &bomb).unwrap();
        }), vec!["train-labels-idx1-ubyte.gz", "exceeds the cap of 268435456 bytes"]),
        ("a missing file", Box::new(move |d| std::fs::remove_file(d.join(data::TEST_LABELS)).unwrap()),
            vec![data::TEST_LABELS, "missing", "t10k-labels-idx1-ubyte.gz"]),
        ("a directory where a file belongs", Box::new(move |d| {
            std::fs::remove_file(images(d)).unwrap();
            std::fs::create_dir(images(d)).unwrap();
        }), vec![data::TRAIN_IMAGES, "missing"]),
        ("a bad checksum manifest", Box::new(move |d| std::fs::write(d.join(data::SHA256_MANIFEST), "not a digest\n").unwrap()),
            vec![data::SHA256_MANIFEST, "line 1"]),
        ("a checksum mismatch", Box::new(move |d| {
            let lines: String = [data::TRAIN_IMAGES, data::TRAIN_LABELS, data::TEST_IMAGES, data::TEST_LABELS]
                .iter().map(|n| format!("{}  {n}\n", "0".repeat(64))).collect();
            std::fs::write(d.join(data::SHA256_MANIFEST), lines).unwrap();
        }), vec![data::TRAIN_IMAGES, "sha256", "corrupt or not the original"]),
    ];
    for (i, (case, breaks, needles)) in cases.into_iter().enumerate() {
        let dir = tmp.join(&format!("case{i}"));
        good_data(&dir);
        breaks(&dir);
        let d = dir.to_string_lossy().into_owned();
        let args = [
            "train",
            "--model",
            "softmax",
            "--epochs",
            "1",
            "--data-dir",
            &d,
        ];
        let r = expect_failure(case, &args, &[], &needles);
        assert!(
            !r.stdout.contains("adapter:"),
            "{case}: refused only after opening the GPU:\n{}",
            r.all()
        );
    }
    // A named model takes the images' size; a model file's input must be it.
    let dir = tmp.join("size");
    good_data(&dir);
    std::fs::write(images(&dir), idx_images(64, 20, 20, &vec![7; 64 * 400])).unwrap();
    std::fs::write(
        dir.join(data::TEST_IMAGES),
        idx_images(16, 20, 20, &vec![7; 16 * 400]),
    )
    .unwrap();
    let file = tmp.join("m28.json");
    std::fs::write(&file, r#"{"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]}"#).unwrap();
    let (d, f) = (
        dir.to_string_lossy().into_owned(),
        file.to_string_lossy().into_owned(),
    );
    let r = expect_failure(
        "images of the wrong size for the model",
        &[
            "train",
            "--model-file",
            &f,
            "--epochs",
            "1",
            "--data-dir",
            &d,
        ],
        &[],
        &[
            data::TRAIN_IMAGES,
            "the images are 20x20 but the model takes 1x28x28",
        ],
    );
    assert!(
        !r.stdout.contains("adapter:"),
        "refused after opening the GPU:\n{}",
        r.all()
    );
    // The same checks guard evaluate.
    let dir = tmp.join("evaluate");
    good_data(&dir);
    std::fs::write(dir.join(data::TEST_LABELS), idx_labels(&[3; 15])).unwrap();
    let ck = tmp.join("softmax.safetensors");
    checkpoint::save(&ck, &synthetic("softmax")).unwrap();
    let (d, c) = (
        dir.to_string_lossy().into_owned(),
        ck.to_string_lossy().into_owned(),
    );
    expect_failure(
        "evaluate: images/labels count mismatch",
        &["evaluate", "--checkpoint", &c, "--data-dir", &d],
        &[],
        &[data::TEST_LABELS, "16 images", "15 labels"],
    );
    expect_failure(
        "data dir that does not exist",
        &["train", "--data-dir", &tmp.arg("nowhere")],
        &[],
        &["nowhere", "not found or not a directory"],
    );
    expect_failure(
        "data dir that is a file",
        &["train", "--data-dir", &c],
        &[],
        &["softmax.safetensors", "not a directory"],
    );
}

#[cfg(unix)]
#[test]
fn unreadable_data_files_are_io_errors() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = TempDir::new("perm");
    let dir = tmp.join("data");
    good_data(&dir);
    let f = dir.join(data::TRAIN_LABELS);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let mut cmd = command(&["train", "--model", "softmax", "--data-dir", &d], &[]);
    if euid() == Some(0) {
        // Permissions do not stop root: run the case as nobody.
        cmd.uid(65534).gid(65534);
    }
    let r = run_with(cmd, "unreadable labels");
    check_failure(
        "unreadable file (mode 000)",
        &r,
        &[data::TRAIN_LABELS, "Permission denied"],
    );
    // An unreadable directory: its manifest cannot even be looked for.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = command(&["train", "--model", "softmax", "--data-dir", &d], &[]);
    if euid() == Some(0) {
        cmd.uid(65534).gid(65534);
    }
    let r = run_with(cmd, "unreadable dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    check_failure(
        "unreadable directory (mode 000)",
        &r,
        &[&d, "Permission denied"],
    );
}

// ---------------------------------------------------------------- 2. checkpoints

/// A softmax checkpoint with the initial parameters of seed 42 and Adam state.
fn synthetic(kind: &str) -> Checkpoint {
    let model = checkpoint::preset(kind).unwrap();
    let params = model.init_params(42).unwrap();
    let zeros: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    Checkpoint {
        kind: kind.into(),
        model,
        params,
        optimizer: Optimizer::adam(1e-3),
        state: Some(checkpoint::OptimizerState {
            m: zeros.clone(),
            v: zeros,
        }),
        steps: 10,
        epoch: 1,
        seed: 42,
        batch_size: 32,
        validation_split: 0.0,
        history: Vec::new(),
        metrics: Value::Null,
        augment: Default::default(),
        classes: Vec::new(),
    }
}

/// Split a safetensors file into its header JSON and data section.
fn split_file(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join_file(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    [
        (h.len() as u64).to_le_bytes().to_vec(),
        h.into_bytes(),
        data.to_vec(),
    ]
    .concat()
}

/// The file with its header edited by `f`.
fn edit_header(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut h, d) = split_file(bytes);
    f(&mut h);
    join_file(&h, &d)
}

#[test]
fn bad_checkpoints_name_the_file_and_the_field() {
    let tmp = TempDir::new("ckpt");
    let good = synthetic("softmax").to_bytes().unwrap();
    let (header, data) = split_file(&good);
    let off = |name: &str| -> [u64; 2] {
        let o = &header[name]["data_offsets"];
        [o[0].as_u64().unwrap(), o[1].as_u64().unwrap()]
    };
    let [w0, w1] = off("fc1.weight");
    let [b0, b1] = off("fc1.bias");
    // The later of the two moved onto the start of the earlier: an overlap, and no gap
    // before it (the first tensor starts the data).
    let overlapping = if b0 < w0 {
        edit_header(&good, |h| {
            h["fc1.weight"]["data_offsets"] = json!([b0, b0 + w1 - w0])
        })
    } else {
        edit_header(&good, |h| {
            h["fc1.bias"]["data_offsets"] = json!([w0, w0 + b1 - b0])
        })
    };
    let mut nan = data.clone();
    nan[w0 as usize + 40..w0 as usize + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut inf = data.clone();
    inf[b0 as usize..b0 as usize + 4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    let mlp = synthetic("mlp").to_bytes().unwrap();
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty file", vec![], vec!["header length", "shorter than the 8-byte header length"]),
        ("truncated in the data", good[..good.len() - 1001].to_vec(), vec!["data_offsets", "outside the"]),
        ("truncated in the header", good[..100].to_vec(), vec!["header length", "truncated or not safetensors"]),
        ("header length past the end", [u64::MAX.to_le_bytes().to_vec(), good[8..].to_vec()].concat(), vec!["header length", "18446744073709551615"]),
        ("header length too short", [40u64.to_le_bytes().to_vec(), good[8..].to_vec()].concat(), vec!["header: not valid JSON"]),
        ("header not UTF-8", join_file(&json!(null), &[]).iter().take(8).copied().chain([0xff, 0xfe, 0xfd, 0xfc]).collect(), vec!["header: not UTF-8"]),
        ("invalid JSON", [6u64.to_le_bytes().to_vec(), b"{nope}".to_vec()].concat(), vec!["header: not valid JSON"]),
        ("offsets out of range", edit_header(&good, |h| h["fc1.bias"]["data_offsets"] = json!([b0, data.len() + 4])), vec!["fc1.bias.data_offsets", "outside the"]),
        ("offsets reversed", edit_header(&good, |h| h["fc1.bias"]["data_offsets"] = json!([b1, b0])), vec!["fc1.bias.data_offsets"]),
        ("offsets overlapping", overlapping, vec!["data_offsets", "overlaps"]),
        ("offsets not numbers", edit_header(&good, |h| h["fc1.bias"]["data_offsets"] = json!(["0", "40"])), vec!["fc1.bias.data_offsets", "not a pair"]),
        ("wrong dtype (F16)", edit_header(&good, |h| h["fc1.weight"]["dtype"] = json!("F16")), vec!["fc1.weight.dtype", "only F32"]),
        ("wrong dtype (I64)", edit_header(&good, |h| h["optimizer.m.fc1.bias"]["dtype"] = json!("I64")), vec!["optimizer.m.fc1.bias.dtype"]),
        ("model metadata says mlp", edit_header(&good, |h| h["__metadata__"]["model"] = json!("mlp")), vec!["__metadata__.layers"]),
        ("an mlp file claiming to be softmax", edit_header(&mlp, |h| { h["__metadata__"]["model"] = json!("softmax"); h["__metadata__"].as_object_mut().unwrap().remove("layers"); }), vec!["fc1.weight.shape", "is [128, 784]; model softmax needs [10, 784]"]),
        ("unknown model", edit_header(&good, |h| h["__metadata__"]["model"] = json!("resnet")), vec!["__metadata__.model", "resnet"]),
        ("NaN weight", join_file(&header, &nan), vec!["fc1.weight", "value 10 is NaN; weights must be finite"]),
        ("infinite bias", join_file(&header, &inf), vec!["fc1.bias", "value 0 is -inf"]),
        ("interrupted-epoch marker inconsistent", edit_header(&good, |h| h["__metadata__"]["metrics"] = json!(json!({"interrupted": true, "epoch": 5, "step": 3, "steps": 10, "loss": 1.0, "accuracy": 0.5, "count": 96, "seconds": 1.0}).to_string())), vec!["__metadata__.metrics", "interrupted epoch 5 does not follow the 1 epochs"]),
        ("interrupted-epoch marker malformed", edit_header(&good, |h| h["__metadata__"]["metrics"] = json!(json!({"interrupted": true, "epoch": 2}).to_string())), vec!["__metadata__.metrics", "step is not an unsigned integer"]),
    ];
    for (case, bytes, needles) in cases {
        let file = tmp.join("bad.safetensors");
        std::fs::write(&file, &bytes).unwrap();
        let f = file.to_string_lossy().into_owned();
        let mut needles = needles;
        needles.push("checkpoint ");
        needles.push(&f);
        let r = expect_failure(
            &format!("checkpoint: {case}"),
            &["evaluate", "--checkpoint", &f],
            &[],
            &needles,
        );
        assert!(
            !r.stdout.contains("adapter:"),
            "{case}: checked only after opening the GPU"
        );
        // Resuming reads the same way.
        let r = run(&["train", "--resume", &f, "--epochs", "3"], &[]);
        check_failure(&format!("resume: {case}"), &r, &needles);
    }
    let f = tmp.arg("absent.safetensors");
    expect_failure(
        "checkpoint: missing file",
        &["evaluate", "--checkpoint", &f],
        &[],
        &[&f, "No such file"],
    );
    let d = tmp.0.to_string_lossy().into_owned();
    expect_failure(
        "checkpoint: a directory",
        &["predict", "--checkpoint", &d, "x.png"],
        &[],
        &[&d],
    );
    // A model that contradicts the checkpoint's.
    let ok = tmp.join("softmax.safetensors");
    std::fs::write(&ok, &good).unwrap();
    let o = ok.to_string_lossy().into_owned();
    expect_failure(
        "resume: --model cnn on a softmax checkpoint",
        &["train", "--resume", &o, "--model", "cnn", "--epochs", "3"],
        &[],
        &[
            "--model",
            "differs from the checkpoint's setting",
            "model softmax",
        ],
    );
    // Writing never replaces a good checkpoint with NaN weights.
    let mut ck = synthetic("softmax");
    ck.params[0][3] = f32::NAN;
    let e = checkpoint::save(&ok, &ck).unwrap_err().to_string();
    println!("case save NaN weights: {e}");
    assert!(
        e.contains("fc1.weight[3] = NaN") && e.contains("refusing"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&ok).unwrap(),
        good,
        "the file is left as it was"
    );
}

// ---------------------------------------------------------------- 3. GPU faults

#[test]
fn unmatched_adapters_list_the_adapters_that_exist() {
    let tmp = TempDir::new("adapters");
    let dir = tmp.join("data");
    good_data(&dir);
    let d = dir.to_string_lossy().into_owned();
    let args = [
        "train",
        "--model",
        "softmax",
        "--epochs",
        "1",
        "--data-dir",
        &d,
    ];
    let names: Vec<String> = match gpu() {
        Some(g) => vec![g.info.name.clone()],
        None => vec![],
    };
    let named: Vec<&str> = names.iter().map(String::as_str).collect();
    let with = |extra: &[&'static str]| [extra, &named[..]].concat();
    expect_failure(
        "WGPU_ADAPTER_NAME matching nothing",
        &args,
        &[("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")],
        &with(&[
            "no GPU adapter found",
            "WGPU_ADAPTER_NAME=no-such-adapter-xyz",
            "adapters present:",
        ]),
    );
    let other = if cfg!(windows) { "metal" } else { "dx12" };
    let env = [("WGPU_BACKEND", other)];
    let r = expect_failure(
        "WGPU_BACKEND without adapters",
        &args,
        &env,
        &with(&["no GPU adapter found", "adapters present:"]),
    );
    assert!(
        r.all().contains(&format!("WGPU_BACKEND={other}")),
        "{}",
        r.all()
    );
    expect_failure(
        "WGPU_BACKEND naming no backend",
        &args,
        &[("WGPU_BACKEND", "cuda")],
        &with(&["cuda is not a backend", "adapters present:"]),
    );
    // No driver at all: the Vulkan loader and EGL pointed at nothing.
    let none = [
        ("WGPU_BACKEND", "vulkan,gl"),
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
        ("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json"),
    ];
    expect_failure(
        "no adapter at all",
        &args,
        &none,
        &[
            "no GPU adapter found",
            "adapters present: none",
            "Hint: install a Vulkan driver",
        ],
    );
    expect_failure(
        "SHADERGRAD_GPU_TIMEOUT not a number",
        &args,
        &[("SHADERGRAD_GPU_TIMEOUT", "soon")],
        &[
            "SHADERGRAD_GPU_TIMEOUT",
            "\"soon\" is not a positive number of seconds",
        ],
    );
}

/// A trainer on `gpu` holding the first `n` MNIST training images, and a source over them.
fn small_trainer(gpu: &Gpu, model: Sequential, n: usize) -> (Trainer<'_>, usize) {
    let train = &mnist().train;
    let mut t = Trainer::new(gpu, model, Optimizer::adam(1e-3), 42).unwrap();
    let ds = t
        .add_dataset(&train.images[..n * PIXELS], &train.labels[..n])
        .unwrap();
    let order: Vec<u32> = (0..n as u32).collect();
    let src = t.add_source(ds, &order).unwrap();
    (t, src)
}

#[test]
fn device_lost_and_validation_errors_surface_as_gpu_errors() {
    // Device lost: destroy a private device between steps.
    let Some(g) = private_gpu(|_| {}) else { return };
    let (mut t, src) = small_trainer(&g, Sequential::mnist_mlp(), 64);
    t.step(src, 0, 32, true).unwrap();
    t.read_metrics().unwrap();
    g.device.destroy();
    let started = Instant::now();
    let after = t.step(src, 32, 32, true).and_then(|()| t.read_metrics());
    let e = after.expect_err("a step on a lost device fails");
    println!("case device lost mid-training: {e}");
    assert!(matches!(e, Error::Gpu { .. }), "{e:?}");
    assert!(e.to_string().contains("device lost"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
    // Every later use fails the same way, without hanging.
    let e = t.read_params().unwrap_err();
    assert!(e.to_string().contains("device lost"), "{e}");

    // A validation error (an out-of-bounds write) on another private device.
    let Some(g) = private_gpu(|_| {}) else { return };
    let (mut t, src) = small_trainer(&g, Sequential::mnist_softmax(), 64);
    t.step(src, 0, 32, true).unwrap();
    let small = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too small"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    g.queue.write_buffer(&small, 0, &[0u8; 64]);
    let e = t
        .read_metrics()
        .expect_err("the validation error surfaces at the next wait");
    println!("case validation error mid-training: {e}");
    assert!(matches!(e, Error::Gpu { .. }), "{e:?}");
}

#[test]
fn every_gpu_wait_has_a_timeout() {
    let Some(g) = private_gpu(|_| {}) else { return };
    // One CNN training step at batch 64 takes a good fraction of a second on a CPU driver;
    // a microsecond's wait for it must either time out or find it finished. (lavapipe runs
    // deferred submissions inside the wait itself, so there the wait returns finished work
    // and a timeout cannot be provoked; drivers that execute asynchronously time out.)
    let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 64);
    t.step(src, 0, 64, true).unwrap();
    t.read_metrics().unwrap();
    g.set_timeout(Duration::from_micros(1));
    assert_eq!(g.timeout(), Duration::from_micros(1));
    t.step(src, 0, 64, true).unwrap();
    let started = Instant::now();
    let r = t.read_metrics();
    let took = started.elapsed();
    match r {
        Err(e @ Error::Timeout { .. }) => {
            println!("case GPU wait past its timeout: {e}");
            assert!(e.to_string().contains("within 0.000001 s"), "{e}");
            // The device was only slow: with a sane timeout the same read succeeds.
            g.set_timeout(Duration::from_secs(600));
            assert_eq!(t.read_metrics().unwrap().count, 128);
        }
        Ok(m) => {
            println!(
                "case GPU wait with a 1 us timeout: {} ran the step inside the wait ({took:?}); nothing left to time out",
                g.describe()
            );
            assert_eq!(m.count, 128);
        }
        Err(e) => panic!("a wait past its timeout must be Error::Timeout, not {e:?}"),
    }
    assert!(took < Duration::from_secs(60), "no hang");
}

#[test]
fn device_lost_mid_training_keeps_the_last_good_checkpoint() {
    if gpu().is_none() {
        return;
    }
    let tmp = TempDir::new("lost");
    let data = tmp.join("mnist");
    write_mnist(&data, 320, 32);
    let (d, ck) = (
        data.to_string_lossy().into_owned(),
        tmp.arg("model.safetensors"),
    );
    let common = [
        "train",
        "--model",
        "mlp",
        "--batch-size",
        "32",
        "--validation-split",
        "0",
        "--data-dir",
        &d,
    ];
    expect_success(
        "train 1 epoch and save",
        &[&common[..], &["--epochs", "1", "--save", &ck]].concat(),
        &[],
    );
    let before = std::fs::read(&ck).unwrap();
    // Epoch 2 of the resumed run loses the device at its 5th step.
    let r = expect_failure(
        "device lost in epoch 2",
        &["train", "--resume", &ck, "--epochs", "3", "--data-dir", &d],
        &[("SHADERGRAD_TEST_DESTROY_DEVICE_AT_STEP", "5")],
        &[
            "GPU error",
            "device lost",
            "training epoch 2",
            "is left as it was",
        ],
    );
    assert!(!r.all().contains("Epoch 2/3"), "{}", r.all());
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the checkpoint of epoch 1 is untouched"
    );
    assert_eq!(checkpoint::load(Path::new(&ck), None).unwrap().epoch, 1);
    // A run that saves after each epoch and loses the device in the second keeps the first.
    let ck2 = tmp.arg("second.safetensors");
    let r = expect_failure(
        "device lost after one saved epoch",
        &[&common[..], &["--epochs", "3", "--save", &ck2]].concat(),
        &[("SHADERGRAD_TEST_DESTROY_DEVICE_AT_STEP", "13")],
        &[
            "device lost",
            "the last good checkpoint",
            "(after epoch 1), is kept",
        ],
    );
    assert!(r.all().contains("Epoch 1/3") && !r.all().contains("Epoch 2/3"));
    let saved = checkpoint::load(Path::new(&ck2), None).unwrap();
    assert_eq!((saved.epoch, saved.steps), (1, 10));
    let first = checkpoint::load(Path::new(&ck), None).unwrap();
    assert_eq!(
        bits(&saved.params),
        bits(&first.params),
        "exactly epoch 1's parameters"
    );
}

// ---------------------------------------------------------------- 4. limits

#[test]
fn batch_sizes_past_the_limits_are_refused_before_any_gpu_work() {
    let Some(g) = gpu() else { return };
    let tmp = TempDir::new("limits");
    let dir = tmp.join("data");
    good_data(&dir);
    let d = dir.to_string_lossy().into_owned();
    for (model, kind, limit) in [
        (
            Sequential::mnist_cnn(),
            "cnn",
            "storage buffer binding size",
        ),
        (
            Sequential::mnist_mlp(),
            "mlp",
            "loop iterations of the one metrics invocation",
        ),
    ] {
        let max = max_batch(&g.limits, &model, true).unwrap();
        println!("largest batch for {kind} on {}: {max}", g.describe());
        assert!(check_batch(&g.limits, &model, max, true).is_ok());
        let over = (max + 1).to_string();
        let r = expect_failure(
            &format!("{kind} at batch {over} (one past the largest)"),
            &[
                "train",
                "--model",
                kind,
                "--batch-size",
                &over,
                "--data-dir",
                &d,
            ],
            &[],
            &[
                &format!("batch size {over}"),
                limit,
                &format!("use --batch-size {max} or less"),
            ],
        );
        assert!(
            !r.stdout.contains("Total params"),
            "refused before the model was built"
        );
        let ck = tmp.join(&format!("{kind}.safetensors"));
        let mut c = synthetic(kind);
        c.batch_size = max + 1;
        checkpoint::save(&ck, &c).unwrap();
        let ck = ck.to_string_lossy().into_owned();
        expect_failure(
            &format!("evaluate {kind} at batch {over}"),
            &["evaluate", "--checkpoint", &ck, "--data-dir", &d],
            &[],
            &[&format!("batch size {over}"), limit],
        );
    }
    let max = u64::MAX.to_string();
    expect_failure(
        "softmax at batch u64::MAX",
        &[
            "train",
            "--model",
            "softmax",
            "--batch-size",
            &max,
            "--data-dir",
            &d,
        ],
        &[],
        &[&format!("batch size {max}"), "the adapter allows"],
    );
}

#[test]
fn the_largest_batch_runs() {
    let Some(g) = gpu() else { return };
    // The MLP's largest batch (the metrics loop budget) through the binary: one step.
    let mlp = Sequential::mnist_mlp();
    let max = max_batch(&g.limits, &mlp, true).unwrap();
    let tmp = TempDir::new("largest");
    let data = tmp.join("mnist");
    write_mnist(&data, max, 10);
    let (d, b) = (data.to_string_lossy().into_owned(), max.to_string());
    let r = expect_success(
        &format!("mlp at its largest batch, {max}"),
        &[
            "train",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            &b,
            "--validation-split",
            "0",
            "--data-dir",
            &d,
        ],
        &[],
    );
    assert!(
        r.stdout.contains("Epoch 1/1") && r.stdout.contains("test_accuracy"),
        "{}",
        r.all()
    );
    // The CNN's (the storage binding size): the plan builds and one training step runs.
    let cnn = Sequential::mnist_cnn();
    let max = max_batch(&g.limits, &cnn, true).unwrap();
    let started = Instant::now();
    let images: Vec<u8> = mnist()
        .train
        .images
        .iter()
        .cycle()
        .take(max * PIXELS)
        .copied()
        .collect();
    let labels: Vec<u8> = mnist()
        .train
        .labels
        .iter()
        .cycle()
        .take(max)
        .copied()
        .collect();
    let mut t = Trainer::new(g, cnn, Optimizer::adam(1e-3), 42).unwrap();
    let ds = t.add_dataset(&images, &labels).unwrap();
    let src = t
        .add_source(ds, &(0..max as u32).collect::<Vec<_>>())
        .unwrap();
    t.step(src, 0, max, true).unwrap();
    let m = t.read_metrics().unwrap();
    println!(
        "case cnn at its largest batch, {max}: one step, loss {:.4}, {:.1} s",
        m.loss,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(m.count, max);
    assert!(m.loss.is_finite() && !m.non_finite, "{m:?}");
}

#[test]
fn odd_and_partial_batches_train() {
    if gpu().is_none() {
        return;
    }
    let tmp = TempDir::new("batches");
    let data = tmp.join("mnist");
    write_mnist(&data, 300, 50); // 270 training images after the 10% split
    let d = data.to_string_lossy().into_owned();
    for (batch, note) in [
        ("1", "270 steps of 1"),
        ("7", "38 steps of 7 and a last one of 4"),
        ("129", "2 steps of 129 and a last one of 12"),
        ("500", "one partial batch of 270"),
    ] {
        let r = expect_success(
            &format!("softmax at batch {batch} ({note})"),
            &[
                "train",
                "--model",
                "softmax",
                "--epochs",
                "1",
                "--batch-size",
                batch,
                "--validation-split",
                "0.1",
                "--data-dir",
                &d,
            ],
            &[],
        );
        assert!(
            r.stdout.contains("train on 270 samples, validate on 30"),
            "{}",
            r.all()
        );
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("test_loss"))
            .unwrap_or("");
        println!("  {line}");
        assert!(line.contains("test_accuracy"), "{}", r.all());
    }
    // The MLP at odd sizes too (its dense layers have other kernels).
    expect_success(
        "mlp at batch 7",
        &[
            "train",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "7",
            "--validation-split",
            "0.1",
            "--data-dir",
            &d,
        ],
        &[],
    );
}

#[test]
fn a_smaller_gpu_either_runs_or_refuses_naming_the_limit() {
    // Storage bindings of 1 MiB: the MLP's input batch [B, 784] f32 fits up to B = 334.
    let Some(g) = private_gpu(|l| {
        l.max_storage_buffer_binding_size = 1 << 20;
    }) else {
        return;
    };
    let mlp = Sequential::mnist_mlp();
    let max = max_batch(&g.limits, &mlp, true).unwrap();
    assert_eq!(max, (1 << 20) / (784 * 4));
    let e = check_batch(&g.limits, &mlp, max + 1, true).unwrap_err();
    println!("case 1 MiB bindings, mlp at batch {}: {e}", max + 1);
    assert!(e.to_string().contains("storage buffer binding size"), "{e}");
    let (mut t, src) = small_trainer(&g, mlp, max + 1);
    t.step(src, 0, max, true).unwrap();
    assert!(!t.read_metrics().unwrap().non_finite);
    // The kernels' own check agrees: the step one past the largest is refused, not run.
    let e = t.step(src, 0, max + 1, true).unwrap_err();
    println!("case 1 MiB bindings, a step at batch {}: {e}", max + 1);
    assert!(
        matches!(e, Error::Limit { .. }) && e.to_string().contains("storage buffer binding size"),
        "{e}"
    );
    // A dataset larger than one binding is refused when uploaded.
    let images = vec![0u8; 2000 * PIXELS];
    let e = t.add_dataset(&images, &[0; 2000]).unwrap_err();
    println!("case 1 MiB bindings, 2000 images uploaded: {e}");
    assert!(e.to_string().contains("dataset pixels"), "{e}");

    // 64 workgroups per dimension: 1-D grids fold onto 2-D (64 x 64 x 256 invocations).
    let Some(g) = private_gpu(|l| l.max_compute_workgroups_per_dimension = 64) else {
        return;
    };
    let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 16);
    // The conv output alone is 16 x 32 x 26 x 26 = 346,112 invocations: 1,352 groups of 256.
    t.step(src, 0, 16, true).unwrap();
    assert!(!t.read_metrics().unwrap().non_finite);
    // At batch 128 the portable kernels need more (the conv output: 1,352 x 8 groups);
    // adapters with window kernels split the conv into dispatches of 20 images and run it.
    let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 128);
    match t.step(src, 0, 128, true) {
        Ok(()) => {
            println!("case 64 workgroups per dimension, cnn at batch 128: runs");
            assert!(g.windows(), "only the window kernels fit this grid");
            assert!(!t.read_metrics().unwrap().non_finite);
        }
        Err(e) => {
            println!("case 64 workgroups per dimension, cnn at batch 128: {e}");
            assert!(matches!(e, Error::Limit { .. }), "{e:?}");
            assert!(e.to_string().contains("the adapter allows"), "{e}");
        }
    }
    // The batch gather alone needs 1,400 x 784 / 256 = 4,288 groups > 64 x 64: refused.
    let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 1400);
    let e = t.step(src, 0, 1400, true).unwrap_err();
    println!("case 64 workgroups per dimension, cnn at batch 1400: {e}");
    assert!(matches!(e, Error::Limit { .. }), "{e:?}");
    assert!(e.to_string().contains("the adapter allows"), "{e}");

    // Uniform bindings below the window kernels' needs (16 KiB, or 4 a stage): the device
    // keeps the storage-buffer kernels and trains with them.
    for (what, shrink) in [
        (
            "16 KiB uniform bindings",
            (|l: &mut wgpu::Limits| l.max_uniform_buffer_binding_size = 16 << 10)
                as fn(&mut wgpu::Limits),
        ),
        ("4 uniform buffers a stage", |l: &mut wgpu::Limits| {
            l.max_uniform_buffers_per_shader_stage = 4
        }),
    ] {
        let Some(g) = private_gpu(shrink) else {
            return;
        };
        assert!(!g.windows(), "{what}");
        let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 8);
        t.step(src, 0, 8, true).unwrap();
        assert!(!t.read_metrics().unwrap().non_finite);
        println!("case {what}: the storage-buffer kernels run");
    }

    // No workgroup memory at all: no kernel uses any, so training still runs.
    let Some(g) = private_gpu(|l| l.max_compute_workgroup_storage_size = 0) else {
        return;
    };
    let (mut t, src) = small_trainer(&g, Sequential::mnist_cnn(), 8);
    t.step(src, 0, 8, true).unwrap();
    assert!(!t.read_metrics().unwrap().non_finite);
}

// ---------------------------------------------------------------- 5. numerical faults

#[test]
fn non_finite_losses_stop_training_and_keep_the_last_good_checkpoint() {
    if gpu().is_none() {
        return;
    }
    let tmp = TempDir::new("nan");
    let data = tmp.join("mnist");
    write_mnist(&data, 480, 32);
    let d = data.to_string_lossy().into_owned();
    let common = [
        "train",
        "--model",
        "mlp",
        "--batch-size",
        "32",
        "--validation-split",
        "0",
        "--data-dir",
        &d,
    ];
    // --lr 1e3 is not enough to overflow: Adam moves each weight by about lr per step and the
    // loss is computed stably, so the loss is huge but finite.
    let r = expect_success(
        "mlp at --lr 1e3",
        &[&common[..], &["--epochs", "1", "--lr", "1e3"]].concat(),
        &[],
    );
    println!(
        "  {}",
        r.stdout
            .lines()
            .find(|l| l.starts_with("Epoch 1/1"))
            .unwrap_or("")
    );
    // --lr 1e20 overflows in the first epoch: no checkpoint is ever written.
    let ck = tmp.arg("nan.safetensors");
    expect_failure(
        "mlp at --lr 1e20",
        &[
            &common[..],
            &["--epochs", "2", "--lr", "1e20", "--save", &ck],
        ]
        .concat(),
        &[],
        &[
            "non-finite loss",
            "at epoch 1, step 15",
            "training stopped",
            "lower the learning rate",
            "nothing was saved",
        ],
    );
    assert!(!Path::new(&ck).exists(), "no checkpoint of NaN weights");
    // A good first epoch, then the same run diverging in its second: the checkpoint of the
    // first is kept, byte for byte (the optimizer's learning rate is edited in the file to
    // make the resumed run diverge).
    let ck = tmp.arg("good.safetensors");
    expect_success(
        "mlp 1 epoch at --lr 1e-3",
        &[&common[..], &["--epochs", "1", "--save", &ck]].concat(),
        &[],
    );
    let mut c = checkpoint::load(Path::new(&ck), None).unwrap();
    c.optimizer = Optimizer::adam(1e20);
    checkpoint::save(Path::new(&ck), &c).unwrap();
    let before = std::fs::read(&ck).unwrap();
    let r = expect_failure(
        "resumed run diverging in epoch 2",
        &["train", "--resume", &ck, "--epochs", "3", "--data-dir", &d],
        &[],
        &["non-finite loss", "at epoch 2, step", "is left as it was"],
    );
    assert!(!r.all().contains("Epoch 2/3"));
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the last good checkpoint is kept"
    );
    let kept = checkpoint::load(Path::new(&ck), None).unwrap();
    assert_eq!(kept.epoch, 1);
    assert!(kept.params.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn non_finite_parameters_are_caught_on_the_host() {
    let Some(g) = gpu() else { return };
    let (t, _) = small_trainer(g, Sequential::mnist_softmax(), 32);
    let mut p = t.read_params().unwrap();
    p[1][7] = f32::INFINITY;
    t.write_params(&p).unwrap();
    let read = t.read_params().unwrap();
    let e = check_params(t.model.as_ref(), &read, 3, 12).unwrap_err();
    println!("case a parameter going infinite: {e}");
    assert!(
        e.to_string()
            .contains("non-finite parameter (fc1.bias[7] = inf) at epoch 3, step 12"),
        "{e}"
    );
}

// ---------------------------------------------------------------- 6. interrupts

/// Start a training run, wait for `after` on its stdout, then send it `signal` (by its pid).
fn interrupt_run(args: &[&str], signal: &str, wait_after: Duration) -> Run {
    interrupt_run_after(args, "train on", signal, wait_after)
}

/// Start the CLI with `args`, wait for a stdout line starting with `ready`, then
/// `wait_after`, send SIG`signal` and collect the run.
fn interrupt_run_after(args: &[&str], ready: &str, signal: &str, wait_after: Duration) -> Run {
    // One stderr file per run: tests of this binary interrupt runs side by side.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!(
        "shadergrad-robust-{}-sig{signal}-{n}",
        std::process::id()
    ));
    let err = tmp.with_extension("stderr");
    let mut child = command(args, &[])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all += &line;
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with(ready) => break,
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) if Instant::now() > deadline => break,
            Err(_) => {}
        }
    }
    std::thread::sleep(wait_after);
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal}");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(err);
    Run {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn ctrl_c_finishes_the_step_saves_and_resumes_exactly() {
    if gpu().is_none() {
        return;
    }
    let tmp = TempDir::new("sigint");
    let data = tmp.join("mnist");
    write_mnist(&data, 3000, 100);
    let d = data.to_string_lossy().into_owned();
    // Softmax at batch 8: 375 short steps an epoch, so the signal lands inside one.
    let common = [
        "train",
        "--model",
        "softmax",
        "--batch-size",
        "8",
        "--validation-split",
        "0",
        "--data-dir",
        &d,
    ];
    let ck = tmp.arg("int.safetensors");
    let r = interrupt_run(
        &[&common[..], &["--epochs", "100", "--save", &ck]].concat(),
        "INT",
        Duration::from_millis(300),
    );
    println!(
        "case Ctrl-C with --save: exit {:?}\n  {}",
        r.code(),
        r.message()
    );
    assert!(!r.all().contains("panicked"), "{}", r.all());
    assert_eq!(r.code(), Some(130), "{}", r.all());
    assert!(
        r.stderr.contains("interrupted") && r.stderr.contains(&format!("saved {ck}")),
        "{}",
        r.all()
    );
    let saved = checkpoint::load(Path::new(&ck), None).expect("the checkpoint loads");
    let partial = saved.partial();
    println!(
        "  saved after epoch {} with {:?}",
        saved.epoch,
        partial.as_ref().map(|p| (p.epoch, p.step))
    );
    let target = saved.epoch + 1;
    // Resume to the end of the interrupted epoch; it equals an uninterrupted run to the bit.
    let t = target.to_string();
    let r = expect_success(
        "resume the interrupted run",
        &["train", "--resume", &ck, "--epochs", &t, "--data-dir", &d],
        &[],
    );
    assert!(r.stdout.contains("resuming"), "{}", r.all());
    let full = tmp.arg("full.safetensors");
    expect_success(
        "the same run uninterrupted",
        &[&common[..], &["--epochs", &t, "--save", &full]].concat(),
        &[],
    );
    let (a, b) = (
        checkpoint::load(Path::new(&ck), None).unwrap(),
        checkpoint::load(Path::new(&full), None).unwrap(),
    );
    assert_eq!(
        bits(&a.params),
        bits(&b.params),
        "interrupted + resumed == uninterrupted"
    );
    assert_eq!(
        bits(&a.state.as_ref().unwrap().v),
        bits(&b.state.as_ref().unwrap().v)
    );
    assert_eq!((a.epoch, a.steps), (b.epoch, b.steps));
    // The interrupted epoch's training metrics too: its totals were saved and went on.
    assert!(partial.is_some_and(|p| p.totals.is_some()), "totals saved");
    let last = |c: &checkpoint::Checkpoint| {
        let e = c.history.last().expect("an epoch logged");
        (e.epoch, e.loss.to_bits(), e.accuracy.to_bits())
    };
    assert_eq!(last(&a), last(&b), "the resumed epoch's loss and accuracy");

    // Without --save: stops cleanly, says nothing was saved. SIGTERM: the same, exit 143.
    let r = interrupt_run(
        &[&common[..], &["--epochs", "100"]].concat(),
        "INT",
        Duration::from_millis(300),
    );
    println!(
        "case Ctrl-C without --save: exit {:?}\n  {}",
        r.code(),
        r.message()
    );
    assert_eq!(r.code(), Some(130), "{}", r.all());
    assert!(
        r.stderr.contains("nothing saved (no --save)"),
        "{}",
        r.all()
    );
    let ck = tmp.arg("term.safetensors");
    let r = interrupt_run(
        &[&common[..], &["--epochs", "100", "--save", &ck]].concat(),
        "TERM",
        Duration::from_millis(300),
    );
    println!(
        "case SIGTERM with --save: exit {:?}\n  {}",
        r.code(),
        r.message()
    );
    assert_eq!(r.code(), Some(143), "{}", r.all());
    assert!(checkpoint::load(Path::new(&ck), None).is_ok());
}

// ---------------------------------------------------------------- 7. bad command lines

#[test]
fn bad_command_lines_are_usage_errors() {
    let tmp = TempDir::new("usage");
    let dir = tmp.join("data");
    good_data(&dir);
    let d = dir.to_string_lossy().into_owned();
    let ck = tmp.join("softmax.safetensors");
    checkpoint::save(&ck, &synthetic("softmax")).unwrap();
    let c = ck.to_string_lossy().into_owned();
    let missing_dir = tmp.arg("no/such/dir/model.safetensors");
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("unknown flag", vec!["train", "--no-such-flag"], vec!["--no-such-flag"]),
        ("unknown command", vec!["frobnicate"], vec!["frobnicate"]),
        ("no command", vec![], vec!["Usage"]),
        ("zero epochs", vec!["train", "--epochs", "0"], vec!["--epochs", "must be at least 1"]),
        ("negative epochs", vec!["train", "--epochs", "-3"], vec!["-3"]),
        ("epochs not a number", vec!["train", "--epochs", "ten"], vec!["ten", "--epochs"]),
        ("zero batch size", vec!["train", "--batch-size", "0"], vec!["--batch-size", "must be at least 1"]),
        ("negative batch size", vec!["train", "--batch-size=-32"], vec!["-32"]),
        ("batch size past usize", vec!["train", "--batch-size", "99999999999999999999999"], vec!["--batch-size", "99999999999999999999999"]),
        ("validation split 1", vec!["train", "--validation-split", "1"], vec!["--validation-split", "outside [0, 1)"]),
        ("validation split 1.5", vec!["train", "--validation-split", "1.5"], vec!["--validation-split", "outside [0, 1)"]),
        ("validation split negative", vec!["train", "--validation-split=-0.1"], vec!["--validation-split", "outside [0, 1)"]),
        ("validation split NaN", vec!["train", "--validation-split", "nan"], vec!["--validation-split", "NaN is outside"]),
        ("zero learning rate", vec!["train", "--lr", "0"], vec!["--lr", "not a positive number"]),
        ("infinite learning rate", vec!["train", "--lr", "inf"], vec!["--lr", "not a positive number"]),
        ("momentum 1", vec!["train", "--optimizer", "sgd", "--momentum", "1"], vec!["--momentum", "outside [0, 1)"]),
        ("unknown model", vec!["train", "--model", "resnet"], vec!["resnet"]),
        ("nesterov without momentum", vec!["train", "--optimizer", "sgd", "--nesterov"], vec!["--nesterov", "--momentum above 0"]),
        ("nesterov with adam", vec!["train", "--nesterov", "--momentum", "0.9"], vec!["--nesterov", "--optimizer sgd"]),
        ("weight decay without adamw", vec!["train", "--weight-decay", "0.1"], vec!["--weight-decay", "adamw"]),
        ("negative weight decay", vec!["train", "--optimizer", "adamw", "--weight-decay=-1"], vec!["--weight-decay", "-1"]),
        ("zero clip norm", vec!["train", "--clip-norm", "0"], vec!["--clip-norm", "not a positive number"]),
        ("zero patience", vec!["train", "--early-stopping", "0"], vec!["--early-stopping", "at least 1"]),
        ("unknown schedule", vec!["train", "--lr-schedule", "linear"], vec!["linear"]),
        ("step decay by 0", vec!["train", "--lr-schedule", "step", "--lr-gamma", "0", "--data-dir", &d], vec!["--lr-gamma", "outside (0, 1]"]),
        ("step every 0 epochs", vec!["train", "--lr-schedule", "step", "--lr-step-epochs", "0", "--data-dir", &d], vec!["--lr-step-epochs", "at least 1"]),
        ("cosine floor above lr", vec!["train", "--lr-schedule", "cosine", "--lr-min", "1", "--data-dir", &d], vec!["--lr-min", "outside [0, --lr"]),
        ("early stopping without validation", vec!["train", "--early-stopping", "2", "--validation-split", "0", "--data-dir", &d], vec!["--early-stopping", "--validation-split"]),
        ("restore best without validation", vec!["train", "--restore-best", "--validation-split", "0", "--data-dir", &d], vec!["--restore-best", "--validation-split"]),
        ("--save into a missing directory", vec!["train", "--save", &missing_dir, "--data-dir", &d], vec!["--save", "does not exist"]),
        ("--save naming a directory", vec!["train", "--save", &d, "--data-dir", &d], vec!["--save", "is a directory"]),
        ("--resume of a missing file", vec!["train", "--resume", "/nonexistent/model.safetensors"], vec!["/nonexistent/model.safetensors", "No such file"]),
        ("--resume asking for fewer epochs", vec!["train", "--resume", &c, "--epochs", "1"], vec!["--epochs", "already trained 1 epochs"]),
        ("evaluate without --checkpoint", vec!["evaluate"], vec!["--checkpoint"]),
        ("evaluate at batch 0", vec!["evaluate", "--checkpoint", &c, "--batch-size", "0"], vec!["--batch-size"]),
        ("predict without images", vec!["predict", "--checkpoint", &c], vec!["IMAGE"]),
        ("predict a missing image", vec!["predict", "--checkpoint", &c, "/nonexistent/seven.png"], vec!["/nonexistent/seven.png", "cannot read", "none of the 1 images"]),
    ];
    for (case, args, needles) in cases {
        let r = expect_failure(case, &args, &[], &needles);
        assert!(
            !r.stdout.contains("adapter:"),
            "{case}: refused only after opening the GPU"
        );
    }
}

// ---------------------------------------------------------------- 8. fuzzing and corpus

/// `bytes` mutated: truncated, bits flipped, bytes overwritten with random or edge values,
/// a range duplicated or removed.
fn mutate(rng: &mut Rng, bytes: &[u8], header: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        return vec![rng.below(256) as u8];
    }
    // Aim most mutations at the header, where the structure is.
    let at = |rng: &mut Rng, len: usize| {
        if rng.below(4) > 0 {
            rng.below(header.min(len).max(1))
        } else {
            rng.below(len)
        }
    };
    for _ in 0..1 + rng.below(3) {
        let len = b.len().max(1);
        match rng.below(6) {
            0 => b.truncate(at(rng, len)),
            1 => {
                let i = at(rng, len).min(b.len().saturating_sub(1));
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
            2 => {
                let i = at(rng, len).min(b.len().saturating_sub(1));
                let v = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
                if let Some(x) = b.get_mut(i) {
                    *x = v;
                }
            }
            3 => {
                // A random big-endian / little-endian word.
                let i = at(rng, len);
                let w = [0u32, 1, u32::MAX, 0x8000_0000, rng.below(1 << 20) as u32][rng.below(5)];
                for (k, x) in w.to_be_bytes().iter().enumerate() {
                    if let Some(y) = b.get_mut(i + k) {
                        *y = *x;
                    }
                }
            }
            4 => {
                let i = rng.below(len);
                let n = rng.below(64).min(b.len() - i.min(b.len()));
                let chunk = b[i.min(b.len())..i.min(b.len()) + n].to_vec();
                b.splice(i.min(b.len())..i.min(b.len()), chunk);
            }
            _ => {
                let i = rng.below(len).min(b.len());
                let n = rng.below(64).min(b.len() - i);
                b.drain(i..i + n);
            }
        }
    }
    b
}

#[test]
fn fuzz_idx_reader() {
    let mut rng = Rng::new(0x1d8);
    let path = Path::new("fuzz-idx");
    let seeds: Vec<Vec<u8>> = vec![
        idx_labels(&[1, 2, 3, 9, 0]),
        idx_images(3, 4, 5, &(0..60).collect::<Vec<u8>>()),
        [vec![0, 0, 8, 4], be(&[2, 1, 2, 3]), vec![5; 12]].concat(),
    ];
    let mut outcomes = [0usize; 2];
    for seed in &seeds {
        for gz in [false, true] {
            let base = if gz { gzip(seed) } else { seed.clone() };
            for _ in 0..1500 {
                let input = mutate(&mut rng, &base, if gz { 24 } else { 20 });
                let r = no_panic("idx", &input, || parse_idx(path, &input, 1 << 16));
                match &r {
                    Ok(a) => {
                        let n: usize = a.dims.iter().product();
                        assert_eq!(a.data.len(), n, "dims {:?}", a.dims);
                    }
                    Err(e) => assert!(e.to_string().starts_with("fuzz-idx: "), "{e}"),
                }
                outcomes[r.is_ok() as usize] += 1;
            }
        }
    }
    // Properties: every valid file reads back exactly; every proper prefix is an error.
    for _ in 0..300 {
        let nd = 1 + rng.below(4);
        let dims: Vec<u32> = (0..nd).map(|_| rng.below(5) as u32).collect();
        let n: usize = dims.iter().map(|&d| d as usize).product();
        let body: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        let file = [vec![0, 0, 8, nd as u8], be(&dims), body.clone()].concat();
        let a = parse_idx(path, &file, 1 << 16).unwrap();
        assert_eq!(
            (a.dims.iter().map(|&d| d as u32).collect::<Vec<_>>(), a.data),
            (dims, body)
        );
        let cut = rng.below(file.len());
        assert!(no_panic("idx prefix", &file[..cut], || parse_idx(
            path,
            &file[..cut],
            1 << 16
        ))
        .is_err());
    }
    println!(
        "fuzz idx: {} errors, {} accepted (harmless mutations)",
        outcomes[0], outcomes[1]
    );
}

#[test]
fn fuzz_checkpoint_reader() {
    let mut rng = Rng::new(0xc4e);
    let path = Path::new("fuzz.safetensors");
    // Weights only (small), and with the optimizer state and metadata.
    let mut weights = synthetic("softmax");
    weights.state = None;
    let seeds = [
        weights.to_bytes().unwrap(),
        synthetic("softmax").to_bytes().unwrap(),
    ];
    let mut outcomes = [0usize; 2];
    for seed in &seeds {
        let header = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
        for _ in 0..400 {
            let input = mutate(&mut rng, seed, header);
            let r = no_panic("checkpoint", &input, || {
                checkpoint::load_bytes(path, &input, None)
            });
            if let Err(e) = &r {
                assert!(e.to_string().contains("fuzz.safetensors"), "{e}");
            }
            outcomes[r.is_ok() as usize] += 1;
        }
        // JSON-aware mutations: values of the wrong type or range in each field.
        let (h, d) = split_file(seed);
        let names: Vec<String> = h.as_object().unwrap().keys().cloned().collect();
        let evil = [
            json!(null),
            json!(-1),
            json!(1e300),
            json!("x"),
            json!([]),
            json!([0]),
            json!([u64::MAX, 0]),
            json!({}),
        ];
        for _ in 0..300 {
            let mut h2 = h.clone();
            let name = &names[rng.below(names.len())];
            let fields = [
                "dtype",
                "shape",
                "data_offsets",
                "epoch",
                "model",
                "optimizer",
                "history",
                "metrics",
                "steps",
            ];
            let field = fields[rng.below(fields.len())];
            h2[name][field] = evil[rng.below(evil.len())].clone();
            let input = join_file(&h2, &d);
            let r = no_panic("checkpoint header", &input, || {
                checkpoint::load_bytes(path, &input, None)
            });
            outcomes[r.is_ok() as usize] += 1;
        }
    }
    println!(
        "fuzz checkpoint: {} errors, {} accepted",
        outcomes[0], outcomes[1]
    );
}

/// A small grey PNG of a bar, the seed of the PNG fuzzing.
fn tiny_png(w: u32, h: u32, colour: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(colour);
        e.set_depth(depth);
        if colour == png::ColorType::Indexed {
            e.set_palette(vec![255, 255, 255, 0, 0, 0]);
        }
        let mut wr = e.write_header().unwrap();
        let channels = match colour {
            png::ColorType::Grayscale | png::ColorType::Indexed => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
        };
        let bits = match depth {
            png::BitDepth::One => 1,
            png::BitDepth::Two => 2,
            png::BitDepth::Four => 4,
            png::BitDepth::Eight => 8,
            png::BitDepth::Sixteen => 16,
        };
        let row = (w as usize * channels * bits).div_ceil(8);
        let data: Vec<u8> = (0..h as usize * row)
            .map(|i| if (i % row) * 3 / row == 1 { 0x00 } else { 0xff })
            .collect();
        wr.write_image_data(&data).unwrap();
    }
    out
}

#[test]
fn fuzz_png_path() {
    let mut rng = Rng::new(0x9e6);
    let path = Path::new("fuzz.png");
    let seeds = [
        tiny_png(12, 10, png::ColorType::Grayscale, png::BitDepth::Eight),
        tiny_png(9, 9, png::ColorType::Rgb, png::BitDepth::Sixteen),
        tiny_png(16, 8, png::ColorType::Indexed, png::BitDepth::One),
    ];
    let mut outcomes = [0usize; 2];
    for seed in &seeds {
        assert!(predict::decode_png(path, seed).is_ok());
        for _ in 0..700 {
            let input = mutate(&mut rng, seed, 33);
            let r = no_panic("png", &input, || {
                predict::decode_png(path, &input).and_then(|img| predict::to_mnist(path, &img))
            });
            match &r {
                Ok(d) => assert_eq!(d.len(), 28 * 28),
                Err(e) => assert!(matches!(e, Error::Image { .. }), "{e:?}"),
            }
            outcomes[r.is_ok() as usize] += 1;
            // The image-folder reader on the same bytes: an image or an error naming it.
            let f = no_panic("png folder", &input, || {
                shadergrad::data::folder::decode_png(path, &input)
            });
            match &f {
                Ok(im) => assert_eq!(im.pixels.len(), im.width * im.height * im.channels),
                Err(e) => assert!(e.to_string().starts_with("fuzz.png: "), "{e:?}"),
            }
        }
    }
    // Any grey image, however odd its size or content, makes a 28x28 digit or a clean error.
    for _ in 0..200 {
        let (w, h) = (1 + rng.below(40), 1 + rng.below(40));
        let kind = rng.below(3);
        let pixels: Vec<f32> = (0..w * h)
            .map(|_| match kind {
                0 => rng.below(256) as f32,
                1 => [0.0, 255.0][rng.below(2)],
                _ => 128.0,
            })
            .collect();
        let img = predict::GreyImage {
            width: w,
            height: h,
            pixels,
        };
        let r = no_panic("to_mnist", &[], || predict::to_mnist(path, &img));
        if let Ok(d) = r {
            assert_eq!(d.len(), 28 * 28);
        }
    }
    println!("fuzz png: {} errors, {} accepted", outcomes[0], outcomes[1]);
}

/// The committed corpus: `tests/corpus/{idx,checkpoint,png}/`, each file named `ok-*` (must
/// read) or `err-*` (must be refused with an error naming it). Plain `cargo test` replays it.
#[test]
fn replay_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for kind in ["idx", "checkpoint", "png"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(kind))
            .unwrap_or_else(|e| panic!("{}: {e}", root.join(kind).display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "{kind}: the corpus has {} files",
            files.len()
        );
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&f).unwrap();
            let r: Result<(), Error> =
                no_panic(&format!("corpus {kind}/{name}"), &bytes, || match kind {
                    "idx" => shadergrad::data::read_idx_with_cap(&f, 1 << 20).map(|_| ()),
                    "checkpoint" => checkpoint::load(&f, None).map(|_| ()),
                    _ => predict::load_digit(&f).map(|_| ()),
                });
            let shown = r
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "ok".into());
            println!("corpus {kind}/{name}: {shown}");
            if name.starts_with("ok-") {
                assert!(r.is_ok(), "{kind}/{name}: {shown}");
            } else {
                assert!(
                    name.starts_with("err-"),
                    "{kind}/{name}: name it ok-* or err-*"
                );
                assert!(
                    shown.contains(&name),
                    "{kind}/{name}: the error names the file: {shown}"
                );
            }
            seen += 1;
        }
    }
    println!("replayed {seen} corpus files");
}

/// Regenerates `tests/corpus/` (run with `--ignored` after changing what it writes; the
/// files are committed so that the replay needs no generator).
#[test]
#[ignore]
fn write_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let put = |kind: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    // IDX
    let labels = idx_labels(&[7, 2, 1, 0, 4, 1, 4, 9]);
    let images = idx_images(
        2,
        3,
        3,
        &[
            0, 50, 100, 150, 200, 250, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
        ],
    );
    put("idx", "ok-labels", &labels);
    put("idx", "ok-images-3x3", &images);
    put("idx", "ok-labels.gz", &gzip(&labels));
    put("idx", "ok-two-gzip-members.gz", &{
        let mut a = gzip(&labels[..6]);
        a.extend(gzip(&labels[6..]));
        a
    });
    put("idx", "ok-zero-images", &idx_images(0, 28, 28, &[]));
    put("idx", "err-empty", &[]);
    put("idx", "err-magic-only", &[0, 0, 8]);
    put("idx", "err-bad-magic", b"\x89PNG\r\n\x1a\n0000");
    put(
        "idx",
        "err-f32-elements",
        &[vec![0, 0, 0x0d, 1], be(&[2]), vec![0; 8]].concat(),
    );
    put("idx", "err-zero-dims", &[0, 0, 8, 0]);
    put(
        "idx",
        "err-five-dims",
        &[vec![0, 0, 8, 5], be(&[1, 1, 1, 1, 1]), vec![0]].concat(),
    );
    put(
        "idx",
        "err-truncated-dims",
        &[vec![0, 0, 8, 3], be(&[2, 3])].concat(),
    );
    put(
        "idx",
        "err-dims-overflow",
        &[vec![0, 0, 8, 3], be(&[u32::MAX, u32::MAX, u32::MAX])].concat(),
    );
    put(
        "idx",
        "err-dims-past-cap",
        &[vec![0, 0, 8, 1], be(&[u32::MAX])].concat(),
    );
    put("idx", "err-truncated-data", &images[..images.len() - 1]);
    put(
        "idx",
        "err-trailing-byte",
        &[labels.clone(), vec![0]].concat(),
    );
    put("idx", "err-truncated.gz", &gzip(&labels)[..20]);
    put("idx", "err-bad-crc.gz", &{
        let mut g = gzip(&labels);
        let n = g.len();
        g[n - 8] ^= 1;
        g
    });
    put(
        "idx",
        "err-gzip-garbage-after.gz",
        &[gzip(&labels), b"garbage!".to_vec()].concat(),
    );
    put("idx", "err-empty-gzip.gz", &gzip(&[]));
    // Checkpoints: a tiny weights-only softmax file is 31 KiB, so the broken ones are mostly
    // header-only.
    let mut weights = synthetic("softmax");
    weights.state = None;
    weights.metrics = json!({"epoch": 1});
    let good = weights.to_bytes().unwrap();
    put("checkpoint", "ok-softmax-weights.safetensors", &good);
    let (h, _) = split_file(&good);
    let header_only = |f: &dyn Fn(&mut Value)| {
        let mut h = h.clone();
        f(&mut h);
        join_file(&h, &[])
    };
    put("checkpoint", "err-empty.safetensors", &[]);
    put("checkpoint", "err-short.safetensors", &[1, 2, 3]);
    put(
        "checkpoint",
        "err-header-length-huge.safetensors",
        &[0xff; 16],
    );
    put(
        "checkpoint",
        "err-header-not-json.safetensors",
        &[6u64.to_le_bytes().to_vec(), b"{nope}".to_vec()].concat(),
    );
    put(
        "checkpoint",
        "err-header-a-list.safetensors",
        &[2u64.to_le_bytes().to_vec(), b"[]".to_vec()].concat(),
    );
    put(
        "checkpoint",
        "err-no-data.safetensors",
        &header_only(&|_| {}),
    );
    put(
        "checkpoint",
        "err-f16.safetensors",
        &header_only(&|h| h["fc1.weight"]["dtype"] = json!("F16")),
    );
    put(
        "checkpoint",
        "err-negative-shape.safetensors",
        &header_only(&|h| h["fc1.bias"]["shape"] = json!([-10])),
    );
    put(
        "checkpoint",
        "err-offsets-huge.safetensors",
        &header_only(&|h| h["fc1.bias"]["data_offsets"] = json!([0, u64::MAX])),
    );
    put(
        "checkpoint",
        "err-shape-overflow.safetensors",
        &header_only(&|h| h["fc1.bias"]["shape"] = json!([u64::MAX, u64::MAX])),
    );
    put(
        "checkpoint",
        "err-metadata-not-strings.safetensors",
        &header_only(&|h| h["__metadata__"] = json!({"epoch": 2})),
    );
    put(
        "checkpoint",
        "err-unknown-model.safetensors",
        &header_only(&|h| h["__metadata__"] = json!({"model": "resnet"})),
    );
    // PNG
    put(
        "png",
        "ok-grey-12x10.png",
        &tiny_png(12, 10, png::ColorType::Grayscale, png::BitDepth::Eight),
    );
    put(
        "png",
        "ok-palette-1bit.png",
        &tiny_png(16, 8, png::ColorType::Indexed, png::BitDepth::One),
    );
    put(
        "png",
        "ok-rgb-16bit.png",
        &tiny_png(9, 9, png::ColorType::Rgb, png::BitDepth::Sixteen),
    );
    let grey = tiny_png(12, 10, png::ColorType::Grayscale, png::BitDepth::Eight);
    put("png", "err-empty.png", &[]);
    put("png", "err-jpeg.png", &[0xff, 0xd8, 0xff, 0xe0, 0, 16]);
    put("png", "err-signature-only.png", b"\x89PNG\r\n\x1a\n");
    put("png", "err-truncated.png", &grey[..grey.len() - 20]);
    put("png", "err-bad-ihdr-crc.png", &{
        let mut g = grey.clone();
        g[29] ^= 0xff;
        g
    });
    put("png", "err-huge-dimensions.png", &{
        // IHDR of 60000 x 60000 RGBA with a correct CRC: refused before any allocation.
        let mut g = grey[..33].to_vec();
        g[16..24].copy_from_slice(&[0, 0, 0xea, 0x60, 0, 0, 0xea, 0x60]);
        g[25] = 6;
        let crc = crc32(&g[12..29]);
        g[29..33].copy_from_slice(&crc.to_be_bytes());
        g.extend_from_slice(&grey[33..]);
        g
    });
    put("png", "err-blank.png", &{
        let mut out = Vec::new();
        {
            let mut e = png::Encoder::new(&mut out, 4, 4);
            e.set_color(png::ColorType::Grayscale);
            let mut w = e.write_header().unwrap();
            w.write_image_data(&[255; 16]).unwrap();
        }
        out
    });
}

/// CRC-32 as PNG chunks use it (for the corpus writer).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Ctrl-C in a language-model run: the step in progress finishes, the run is saved at that
/// step (not at the last evaluation), exit 130; resuming to step N gives the parameters of
/// an uninterrupted N-step run, to the bit.
#[test]
fn ctrl_c_saves_a_language_model_run_at_its_step() {
    if gpu().is_none() {
        return;
    }
    let tmp = TempDir::new("sigint-lm");
    let common = [
        "train",
        "--model",
        "gpt",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--layers",
        "2",
        "--context",
        "16",
        "--batch-size",
        "4",
        "--lr-schedule",
        "constant",
        "--warmup-steps",
        "0",
    ];
    let ck = tmp.arg("lm.safetensors");
    let r = interrupt_run_after(
        &[
            &common[..],
            &["--steps", "100000", "--eval-every", "100000", "--save", &ck],
        ]
        .concat(),
        "unigram baseline",
        "INT",
        Duration::from_millis(500),
    );
    assert!(!r.all().contains("panicked"), "{}", r.all());
    assert_eq!(r.code(), Some(130), "{}", r.all());
    assert!(
        r.stderr.contains("interrupted at step") && r.stderr.contains(&format!("saved {ck}")),
        "{}",
        r.all()
    );
    let saved = shadergrad::lm::checkpoint::load(Path::new(&ck)).expect("the checkpoint loads");
    assert!(saved.steps > 0 && saved.steps < 100000, "{}", saved.steps);
    // Interrupted before its first report: the interval's totals travel in `partial`.
    let partial = saved
        .partial
        .clone()
        .expect("the interval's metrics are saved");
    assert_eq!(
        (partial.since, partial.metrics[2]),
        (0, (saved.steps * 4 * 16) as f32)
    );
    // A partial interval that does not begin before the checkpoint's step is refused.
    let bad_ck = tmp.arg("bad-partial.safetensors");
    let mut bad = saved.clone();
    bad.partial.as_mut().unwrap().since = saved.steps;
    shadergrad::lm::checkpoint::save(Path::new(&bad_ck), &bad).unwrap();
    let err = shadergrad::lm::checkpoint::load(Path::new(&bad_ck)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bad-partial.safetensors") && msg.contains("__metadata__.partial"),
        "{msg}"
    );
    let n = (saved.steps + 7).to_string();
    expect_success(
        "resume the interrupted language model",
        &["train", "--resume", &ck, "--steps", &n],
        &[],
    );
    let full = tmp.arg("full.safetensors");
    expect_success(
        "the same language model uninterrupted",
        &[
            &common[..],
            &["--steps", &n, "--eval-every", "100000", "--save", &full],
        ]
        .concat(),
        &[],
    );
    let (a, b) = (
        shadergrad::lm::checkpoint::load(Path::new(&ck)).unwrap(),
        shadergrad::lm::checkpoint::load(Path::new(&full)).unwrap(),
    );
    assert_eq!(a.steps, b.steps);
    assert_eq!(
        bits(&a.params),
        bits(&b.params),
        "interrupted + resumed == uninterrupted"
    );
    // The report at the end covers all n steps in both: the same training loss, to the bit.
    let last = |c: &shadergrad::lm::checkpoint::LmCheckpoint, k: &str| {
        c.history
            .last()
            .and_then(|r| r[k].as_f64())
            .map(f64::to_bits)
    };
    for k in ["loss", "val_loss"] {
        assert_eq!(
            last(&a, k),
            last(&b, k),
            "{k}: {:?} vs {:?}",
            a.history,
            b.history
        );
    }
}
