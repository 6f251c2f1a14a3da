//! Checkpoints: the safetensors layout (names, shapes, dtype, header) checked byte by byte
//! and against the reference `safetensors` reader, validation of every field on bad files,
//! atomic writes (an error, a killed process, concurrent readers), the training curves, and
//! on the GPU: save -> load -> same predictions, and resume == uninterrupted to the bit.

mod common;

use common::mnist;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shadergrad::checkpoint::{self, Checkpoint, OptimizerState};
use shadergrad::executor::Trainer;
use shadergrad::fit::{split_sources, train_epoch, EpochLog, FitConfig};
use shadergrad::kernels::optim::Optimizer;
use shadergrad::kernels::random::Augment;
use shadergrad::model::Sequential;
use shadergrad::rng::Rng;
use shadergrad::schedule::{Decay, Schedule};
use shadergrad::{plot, predict, Error};

/// A fresh directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadergrad-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn epoch_log(epoch: usize) -> EpochLog {
    EpochLog {
        epoch,
        loss: 0.5 / epoch as f64,
        accuracy: 0.9 + 0.01 * epoch as f64,
        val_loss: Some(0.4 / epoch as f64),
        val_accuracy: Some(0.91 + 0.01 * epoch as f64),
        seconds: 1.5,
        images_per_second: 1000.0,
    }
}

/// A checkpoint of `kind` without a GPU: initial parameters from `seed`, random m and v.
fn synthetic(kind: &str, seed: u64) -> Checkpoint {
    let model = checkpoint::preset(kind).unwrap();
    let params = model.init_params(seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    let mut random = || {
        params
            .iter()
            .map(|p| rng.uniform_vec(p.len(), -1.0, 1.0))
            .collect()
    };
    let state = OptimizerState {
        m: random(),
        v: random(),
    };
    Checkpoint {
        kind: kind.into(),
        model,
        params,
        optimizer: Optimizer::adam(1e-3),
        state: Some(state),
        steps: 375,
        epoch: 2,
        seed,
        batch_size: 128,
        validation_split: 0.2,
        history: vec![epoch_log(1), epoch_log(2)],
        metrics: epoch_log(2).to_json(),
        augment: Augment::default(),
        classes: Vec::new(),
    }
}

fn bits(values: &[Vec<f32>]) -> Vec<u32> {
    values.iter().flatten().map(|v| v.to_bits()).collect()
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---------------------------------------------------------------- layout

#[test]
fn layout_is_pytorch_named_f32_safetensors() {
    let ck = synthetic("cnn", 3);
    let bytes = ck.to_bytes().unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let expected: [(&str, &[usize]); 6] = [
        ("conv.weight", &[32, 1, 3, 3]),
        ("conv.bias", &[32]),
        ("fc1.weight", &[128, 5408]),
        ("fc1.bias", &[128]),
        ("fc2.weight", &[10, 128]),
        ("fc2.bias", &[10]),
    ];
    let obj = header.as_object().unwrap();
    assert_eq!(
        obj.len(),
        1 + 3 * expected.len(),
        "params, m, v and __metadata__: {:?}",
        obj.keys()
    );
    let mut end = 0;
    for (i, (name, shape)) in expected.iter().enumerate() {
        for (prefix, values) in [
            ("", &ck.params),
            ("optimizer.m.", &ck.state.as_ref().unwrap().m),
            ("optimizer.v.", &ck.state.as_ref().unwrap().v),
        ] {
            let e = &header[format!("{prefix}{name}")];
            assert_eq!(e["dtype"], "F32", "{prefix}{name}");
            assert_eq!(e["shape"], json!(shape), "{prefix}{name}");
            let (b, en) = (
                e["data_offsets"][0].as_u64().unwrap() as usize,
                e["data_offsets"][1].as_u64().unwrap() as usize,
            );
            assert_eq!(en - b, 4 * shape.iter().product::<usize>());
            assert_eq!(
                &data[b..en],
                le_bytes(&values[i]),
                "{prefix}{name} data, row-major little-endian"
            );
            end = end.max(en);
        }
    }
    assert_eq!(end, data.len(), "data section fully used");
    let meta = header["__metadata__"].as_object().unwrap();
    for key in [
        "format",
        "model",
        "layers",
        "epoch",
        "steps",
        "seed",
        "optimizer",
        "metrics",
        "history",
        "batch_size",
        "validation_split",
    ] {
        assert!(meta[key].is_string(), "metadata {key}");
    }
    assert_eq!(meta["format"], "shadergrad-1");
    assert_eq!(meta["model"], "cnn");
    assert_eq!(meta["layers"], "Input(1x28x28) -> Conv2D(32, 3x3, relu, valid) -> MaxPooling2D(2x2, stride 2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax)");
    assert_eq!(meta["steps"], "375");
    let opt: Value = serde_json::from_str(meta["optimizer"].as_str().unwrap()).unwrap();
    assert_eq!(
        opt,
        json!({"name": "adam", "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7,
               "weight_decay": 0.0, "clip_norm": null,
               "schedule": {"name": "constant", "warmup_steps": 0}})
    );
    // Checkpoints written before weight decay, Nesterov, clipping and schedules existed
    // load with those off.
    let old = json!({"name": "adam", "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7});
    assert_eq!(Optimizer::from_json(&old), Some(Optimizer::adam(1e-3)));
    let old_sgd = json!({"name": "sgd", "lr": 0.05, "momentum": 0.9});
    assert_eq!(
        Optimizer::from_json(&old_sgd),
        Some(Optimizer::sgd(0.05, 0.9))
    );
    // The new settings round-trip.
    let schedule = shadergrad::schedule::Schedule {
        decay: shadergrad::schedule::Decay::Cosine {
            horizon: 750,
            min_lr: 1e-5,
        },
        warmup: 20,
    };
    for o in [
        Optimizer::adamw(1e-3, 0.01)
            .with_schedule(schedule)
            .with_clip_norm(Some(1.0)),
        Optimizer::nesterov(0.05, 0.9),
    ] {
        assert_eq!(Optimizer::from_json(&o.to_json()), Some(o));
    }

    // The reference implementation reads it as written.
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("the safetensors crate reads it");
    let fc1 = st.tensor("fc1.weight").unwrap();
    assert_eq!(fc1.dtype(), safetensors::Dtype::F32);
    assert_eq!(fc1.shape(), &[128, 5408]);
    assert_eq!(fc1.data(), le_bytes(&ck.params[2]));
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        m.metadata()
            .as_ref()
            .unwrap()
            .get("model")
            .map(String::as_str),
        Some("cnn")
    );
}

#[test]
fn save_load_round_trips_every_field() {
    let dir = temp_dir("roundtrip");
    for kind in checkpoint::MODEL_KINDS {
        let ck = synthetic(kind, 11);
        let path = dir.join(format!("{kind}.safetensors"));
        checkpoint::save(&path, &ck).unwrap();
        let back = checkpoint::load(&path, None).unwrap();
        assert_eq!(back.kind, kind);
        assert_eq!(back.model, ck.model);
        assert_eq!(bits(&back.params), bits(&ck.params));
        let (s, bs) = (ck.state.as_ref().unwrap(), back.state.as_ref().unwrap());
        assert_eq!((bits(&bs.m), bits(&bs.v)), (bits(&s.m), bits(&s.v)));
        assert_eq!(
            (back.steps, back.epoch, back.seed, back.batch_size),
            (375, 2, 11, 128)
        );
        assert_eq!(back.validation_split, 0.2);
        assert_eq!(back.optimizer, ck.optimizer);
        assert_eq!(back.history, ck.history);
        assert_eq!(back.metrics, ck.metrics);
        // With the model given, it must be the one saved.
        checkpoint::load(&path, Some(&ck.model)).unwrap();
    }
    let sgd = Checkpoint {
        optimizer: Optimizer::sgd(0.05, 0.9),
        ..synthetic("mlp", 1)
    };
    checkpoint::save(&dir.join("sgd"), &sgd).unwrap();
    assert_eq!(
        checkpoint::load(&dir.join("sgd"), None).unwrap().optimizer,
        Optimizer::sgd(0.05, 0.9)
    );
    // Augmentation and class names travel in the metadata; names must fit the outputs.
    let named = Checkpoint {
        augment: Augment {
            shift: 3,
            flip: true,
        },
        classes: (0..10).map(|c| format!("class {c}")).collect(),
        ..synthetic("mlp", 1)
    };
    checkpoint::save(&dir.join("named"), &named).unwrap();
    let back = checkpoint::load(&dir.join("named"), None).unwrap();
    assert_eq!(
        (back.augment, &back.classes),
        (named.augment, &named.classes)
    );
    let short = Checkpoint {
        classes: vec!["a".into(), "b".into()],
        ..synthetic("mlp", 1)
    };
    checkpoint::save(&dir.join("short"), &short).unwrap();
    let e = checkpoint::load(&dir.join("short"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("__metadata__.classes") && e.contains("10 outputs"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- validation

/// A softmax-model file written by hand: header entries (name, dtype, shape, offsets),
/// metadata, and the data section.
fn handmade(entries: &[(&str, &str, Vec<usize>, [usize; 2])], meta: Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::Map::new();
    for (name, dtype, shape, off) in entries {
        h.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": off}),
        );
    }
    if !meta.is_null() {
        h.insert("__metadata__".into(), meta);
    }
    let h = Value::Object(h).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

const W: usize = 7840 * 4; // fc1.weight [10, 784] in bytes

/// (name, dtype, shape, data offsets) per tensor.
type Entries = Vec<(&'static str, &'static str, Vec<usize>, [usize; 2])>;

fn good_entries() -> Entries {
    vec![
        ("fc1.weight", "F32", vec![10, 784], [0, W]),
        ("fc1.bias", "F32", vec![10], [W, W + 40]),
    ]
}

fn good_data() -> Vec<u8> {
    le_bytes(&vec![0.25; 7850])
}

#[test]
fn weights_only_file_without_metadata_loads_as_its_model() {
    let path = Path::new("exported.safetensors");
    let ck = checkpoint::load_bytes(
        path,
        &handmade(&good_entries(), Value::Null, &good_data()),
        None,
    )
    .unwrap();
    assert_eq!(ck.kind, "softmax");
    assert!(ck.state.is_none());
    assert_eq!(ck.params[1], vec![0.25; 10]);
}

/// (what is wrong, the file, the field its error must name): one case per check.
#[rustfmt::skip]
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = handmade(&good_entries(), Value::Null, &good_data());
    let with = |f: &dyn Fn(&mut Entries)| {
        let mut e = good_entries();
        f(&mut e);
        handmade(&e, json!({"model": "softmax"}), &good_data())
    };
    let meta = |m: Value| handmade(&good_entries(), m, &good_data());
    let poke = |at: usize, v: f32| {
        let mut d = good_data();
        d[at..at + 4].copy_from_slice(&v.to_le_bytes());
        handmade(&good_entries(), Value::Null, &d)
    };
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut extra = good_entries();
    extra.push(("fc2.weight", "F32", vec![1], [W + 40, W + 44]));
    let mut only_m = good_entries();
    only_m.push(("optimizer.m.fc1.weight", "F32", vec![10, 784], [W + 40, 2 * W + 40]));
    only_m.push(("optimizer.m.fc1.bias", "F32", vec![10], [2 * W + 40, 2 * W + 80]));
    vec![
        ("empty file", vec![], "header length"),
        ("header length past the end", huge, "header length"),
        ("truncated", good[..good.len() - 100].to_vec(), "fc1.bias.data_offsets"),
        ("header not JSON", [6u64.to_le_bytes().to_vec(), b"{nope}".to_vec()].concat(), "header"),
        ("header a list", [2u64.to_le_bytes().to_vec(), b"[]".to_vec()].concat(), "header"),
        ("dtype F16", with(&|e| e[0].1 = "F16"), "fc1.weight.dtype"),
        ("shape not the data size", with(&|e| e[0].2 = vec![10, 785]), "fc1.weight.data_offsets"),
        ("shape not the model's", with(&|e| e[0].2 = vec![784, 10]), "fc1.weight.shape"),
        ("scalar shape", with(&|e| e[1].2 = vec![]), "fc1.bias.data_offsets"),
        ("offsets past the end", with(&|e| e[1].3 = [W, W + 400]), "fc1.bias.data_offsets"),
        ("offsets reversed", with(&|e| e[1].3 = [W + 40, W]), "fc1.bias.data_offsets"),
        ("overlapping", with(&|e| e[1].3 = [W - 40, W]), "fc1.bias.data_offsets"),
        ("NaN weight", poke(400, f32::NAN), "fc1.weight"),
        ("infinite bias", poke(W, f32::INFINITY), "fc1.bias"),
        ("unknown tensor", handmade(&extra, json!({"model": "softmax"}), &[good_data(), vec![0; 4]].concat()), "fc2.weight"),
        ("trailing bytes", [good.clone(), vec![0; 4]].concat(), "data"),
        ("half the optimizer state", handmade(&only_m, Value::Null, &[good_data(), good_data()].concat()), "optimizer.v.fc1.weight"),
        ("format", meta(json!({"format": "other-9"})), "__metadata__.format"),
        ("model unknown", meta(json!({"model": "resnet"})), "__metadata__.model"),
        ("model mismatch", meta(json!({"model": "mlp"})), "fc1.weight.shape"),
        ("layers mismatch", meta(json!({"model": "softmax", "layers": "Input(1x28x28) -> Dense(11, softmax)"})), "__metadata__.layers"),
        ("epoch not a number", meta(json!({"epoch": "two"})), "__metadata__.epoch"),
        ("metadata not strings", meta(json!({"epoch": 2})), "__metadata__.epoch"),
        ("optimizer not JSON", meta(json!({"optimizer": "adam!"})), "__metadata__.optimizer"),
        ("optimizer incomplete", meta(json!({"optimizer": "{\"name\": \"adam\"}"})), "__metadata__.optimizer"),
        ("split", meta(json!({"validation_split": "1.5"})), "__metadata__.validation_split"),
        ("history", meta(json!({"history": "[{\"epoch\": 1}]"})), "__metadata__.history"),
    ]
}

#[test]
fn bad_files_are_refused_naming_file_and_field() {
    let path = Path::new("/models/bad.safetensors");
    for (what, bytes, field) in bad_files() {
        match checkpoint::load_bytes(path, &bytes, None) {
            Err(Error::Checkpoint {
                path: p,
                field: f,
                msg,
            }) => {
                assert_eq!(p, path, "{what}");
                assert_eq!(f, field, "{what}: {msg}");
                let shown = Error::Checkpoint {
                    path: p,
                    field: f,
                    msg,
                }
                .to_string();
                assert!(
                    shown.starts_with("checkpoint /models/bad.safetensors: "),
                    "{what}: {shown}"
                );
            }
            other => panic!(
                "{what}: expected a checkpoint error on {field}, got {:?}",
                other.map(|c| c.kind)
            ),
        }
    }
    // A gap between tensors.
    let mut gap = good_entries();
    gap[1].3 = [W + 4, W + 44];
    let e = checkpoint::load_bytes(
        path,
        &handmade(&gap, Value::Null, &[good_data(), vec![0; 4]].concat()),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("fc1.bias.data_offsets: leaves bytes"),
        "{e}"
    );
    // The model given must be the one saved.
    let ck = synthetic("mlp", 1).to_bytes().unwrap();
    let e = checkpoint::load_bytes(path, &ck, Some(&Sequential::mnist_cnn())).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { field, .. } if field == "__metadata__.layers"),
        "{e}"
    );
}

#[test]
fn every_truncation_and_header_corruption_is_an_error_not_a_panic() {
    let path = Path::new("fuzz.safetensors");
    let bytes = synthetic("softmax", 5).to_bytes().unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for len in (0..bytes.len()).step_by(97).chain(0..n + 9) {
        assert!(
            checkpoint::load_bytes(path, &bytes[..len], None).is_err(),
            "truncated to {len}"
        );
    }
    let mut rng = Rng::new(9);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        let i = rng.below(n + 8);
        b[i] = rng.below(256) as u8;
        let _ = checkpoint::load_bytes(path, &b, None); // Ok (a harmless byte) or Err, never a panic
    }
}

// ---------------------------------------------------------------- atomic writes

#[test]
fn failed_write_leaves_the_old_checkpoint() {
    let dir = temp_dir("failed-write");
    let path = dir.join("model.safetensors");
    let old = synthetic("mlp", 1);
    checkpoint::save(&path, &old).unwrap();
    let new = synthetic("mlp", 2).to_bytes().unwrap();
    let r = checkpoint::write_atomic_with(&path, |f| {
        use std::io::Write;
        f.write_all(&new[..new.len() / 2])?;
        Err(std::io::Error::other("disk full (simulated)"))
    });
    assert!(r.unwrap_err().to_string().contains("disk full"));
    assert_eq!(
        bits(&checkpoint::load(&path, None).unwrap().params),
        bits(&old.params)
    );
    assert!(
        !checkpoint::temp_path(&path).unwrap().exists(),
        "temporary file removed"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Run by `killed_write_leaves_the_old_checkpoint` in a child process: write half of a
/// checkpoint through `write_atomic_with`, signal, and wait to be killed.
#[test]
fn child_killed_mid_write() {
    let Ok(path) = std::env::var("SHADERGRAD_TEST_KILL_ME") else {
        return;
    };
    let path = PathBuf::from(path);
    let new = synthetic("mlp", 2).to_bytes().unwrap();
    let _ = checkpoint::write_atomic_with(&path, |f| {
        use std::io::Write;
        f.write_all(&new[..new.len() / 2])?;
        f.sync_all()?;
        std::fs::write(path.with_extension("ready"), b"")?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
}

#[test]
fn killed_write_leaves_the_old_checkpoint() {
    let dir = temp_dir("killed-write");
    let path = dir.join("model.safetensors");
    let old = synthetic("mlp", 1);
    checkpoint::save(&path, &old).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_killed_mid_write",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHADERGRAD_TEST_KILL_ME", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = path.with_extension("ready");
    let started = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed().as_secs() < 60,
            "child never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no unwinding, no cleanup
    child.wait().unwrap();
    let tmp = checkpoint::temp_path(&path).unwrap();
    assert!(
        tmp.exists(),
        "the killed write left its partial temporary file"
    );
    assert_eq!(
        bits(&checkpoint::load(&path, None).unwrap().params),
        bits(&old.params),
        "old checkpoint intact"
    );
    // The next save goes through the stale temporary file.
    let new = synthetic("mlp", 2);
    checkpoint::save(&path, &new).unwrap();
    assert_eq!(
        bits(&checkpoint::load(&path, None).unwrap().params),
        bits(&new.params)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn concurrent_reader_sees_whole_checkpoints_only() {
    let dir = temp_dir("concurrent");
    let path = dir.join("model.safetensors");
    let (a, b) = (synthetic("mlp", 1), synthetic("mlp", 2));
    checkpoint::save(&path, &a).unwrap();
    let (ba, bb) = (bits(&a.params), bits(&b.params));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..40 {
                checkpoint::save(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
            let got = bits(
                &checkpoint::load(&path, None)
                    .expect("a whole checkpoint")
                    .params,
            );
            assert!(got == ba || got == bb);
            reads += 1;
        }
    });
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- training curves

#[test]
fn curves_are_an_svg_of_loss_and_accuracy() {
    let dir = temp_dir("curves");
    let history: Vec<EpochLog> = (1..=5).map(epoch_log).collect();
    let path = dir.join("run.svg");
    plot::write_curves(&path, &history, "mlp on MNIST").unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
    for text in [
        "mlp on MNIST",
        "train loss",
        "val loss",
        "train accuracy",
        "val accuracy",
        "epoch",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    assert!(svg.matches("<polyline").count() >= 4, "four curves");
    // One epoch, no validation: still a picture.
    let one = EpochLog {
        val_loss: None,
        val_accuracy: None,
        ..epoch_log(1)
    };
    assert!(plot::curves_svg(&[one], "t").unwrap().contains("<circle"));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- on the GPU

const PIXELS: usize = 28 * 28;

fn cfg(seed: u64) -> FitConfig {
    FitConfig {
        epochs: 2,
        batch_size: 50,
        validation_split: 0.2,
        seed,
        verbose: false,
        ..FitConfig::default()
    }
}

/// `epochs` epochs from `start` (a checkpoint, or fresh initialisation) on the first 2,000
/// training images; returns the trainer's checkpoint and the epoch logs.
fn run(
    gpu: &'static shadergrad::gpu::Gpu,
    model: Sequential,
    opt: Optimizer,
    start: Option<&Checkpoint>,
    epochs: std::ops::RangeInclusive<usize>,
) -> (Checkpoint, Vec<EpochLog>) {
    let n = 2000;
    let train = &mnist().train;
    let cfg = cfg(7);
    // A different init seed when resuming: everything must come from the checkpoint.
    let mut t = Trainer::new(
        gpu,
        model,
        opt,
        if start.is_some() { 999 } else { cfg.seed },
    )
    .unwrap();
    if let Some(ck) = start {
        ck.restore(&mut t).unwrap();
    }
    let ds = t
        .add_dataset(&train.images[..n * PIXELS], &train.labels[..n])
        .unwrap();
    let split = split_sources(&mut t, ds, n, cfg.validation_split).unwrap();
    let mut logs = start.map(|c| c.history.clone()).unwrap_or_default();
    for e in epochs {
        logs.push(train_epoch(&mut t, &split, &cfg, e, &|| false).unwrap());
    }
    let last = logs.len();
    let ck = Checkpoint::capture(&t, "x", &cfg, last, &logs, Value::Null).unwrap();
    (ck, logs)
}

#[test]
fn resume_equals_uninterrupted_to_the_bit() {
    let Some(gpu) = common::gpu() else { return };
    let dir = temp_dir("resume");
    // 32 steps an epoch: a cosine over both epochs after a 10-step warmup, AdamW and
    // clipping; a step decay every half epoch with Nesterov momentum.
    let cosine = Schedule {
        decay: Decay::Cosine {
            horizon: 64,
            min_lr: 1e-5,
        },
        warmup: 10,
    };
    let step = Schedule {
        decay: Decay::Step {
            every: 16,
            gamma: 0.5,
        },
        warmup: 0,
    };
    for (kind, opt) in [
        ("mlp", Optimizer::adam(1e-3)),
        ("softmax", Optimizer::sgd(0.1, 0.9)),
        (
            "mlp",
            Optimizer::adamw(1e-3, 0.05)
                .with_schedule(cosine)
                .with_clip_norm(Some(1.0)),
        ),
        ("softmax", Optimizer::nesterov(0.1, 0.9).with_schedule(step)),
    ] {
        let model = checkpoint::preset(kind).unwrap();
        let (straight, logs) = run(gpu, model.clone(), opt, None, 1..=2);
        let (half, _) = run(gpu, model.clone(), opt, None, 1..=1);
        let path = dir.join(format!("{kind}.safetensors"));
        checkpoint::save(
            &path,
            &Checkpoint {
                kind: kind.into(),
                ..half
            },
        )
        .unwrap();
        let loaded = checkpoint::load(&path, None).unwrap();
        assert_eq!((loaded.epoch, loaded.steps), (1, 32));
        assert_eq!(
            loaded.optimizer, opt,
            "{kind}: the optimizer settings travel"
        );
        let (resumed, rlogs) = run(gpu, model, opt, Some(&loaded), 2..=2);
        assert_eq!(resumed.steps, straight.steps, "{kind}: steps");
        assert_eq!(
            bits(&resumed.params),
            bits(&straight.params),
            "{kind}: parameters"
        );
        let (s, r) = (straight.state.unwrap(), resumed.state.unwrap());
        assert_eq!(bits(&r.m), bits(&s.m), "{kind}: m");
        assert_eq!(bits(&r.v), bits(&s.v), "{kind}: v");
        let strip = |l: &EpochLog| (l.epoch, l.loss, l.accuracy, l.val_loss, l.val_accuracy);
        assert_eq!(
            rlogs.iter().map(strip).collect::<Vec<_>>(),
            logs.iter().map(strip).collect::<Vec<_>>(),
            "{kind}: epoch metrics"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn saved_and_loaded_model_predicts_the_same() {
    let Some(gpu) = common::gpu() else { return };
    let dir = temp_dir("predictions");
    let (ck, _) = run(
        gpu,
        Sequential::mnist_mlp(),
        Optimizer::adam(1e-3),
        None,
        1..=1,
    );
    let path = dir.join("mlp.safetensors");
    checkpoint::save(
        &path,
        &Checkpoint {
            kind: "mlp".into(),
            ..ck.clone()
        },
    )
    .unwrap();
    let loaded = checkpoint::load(&path, None).unwrap();
    let test = &mnist().test;
    let n = 1000;
    let probs = |c: &Checkpoint, seed| {
        let mut t = Trainer::new(gpu, c.model.clone(), c.optimizer, seed).unwrap();
        c.restore(&mut t).unwrap();
        let ds = t
            .add_dataset(&test.images[..n * PIXELS], &test.labels[..n])
            .unwrap();
        let src = t
            .add_source(ds, &(0..n as u32).collect::<Vec<_>>())
            .unwrap();
        let out = predict::infer(&mut t, src, 128).unwrap();
        assert_eq!(
            t.evaluate(src, 128).unwrap(),
            out.metrics,
            "infer's metrics are evaluate's"
        );
        out
    };
    let (a, b) = (probs(&ck, 1), probs(&loaded, 2));
    assert_eq!(
        bits(std::slice::from_ref(&a.probs)),
        bits(std::slice::from_ref(&b.probs)),
        "same probabilities to the bit"
    );
    assert_eq!(a.predictions(), b.predictions());
    assert_eq!(
        b.labels,
        test.labels[..n]
            .iter()
            .map(|&l| l as u32)
            .collect::<Vec<_>>()
    );
    let confusion = b.confusion();
    let correct: usize = (0..10).map(|i| confusion[i][i]).sum();
    assert_eq!(
        correct as f64 / n as f64,
        b.metrics.accuracy,
        "confusion diagonal is the accuracy"
    );
    assert!(b.metrics.accuracy > 0.7, "accuracy {}", b.metrics.accuracy);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------- the command line

/// Run the `shadergrad` binary; its stdout, failing the test on a non-zero exit.
fn shadergrad(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "shadergrad {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The first `n_train` and `n_test` images of the vendored MNIST as raw IDX files in `dir`.
fn write_mnist_subset(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let m = mnist();
    for (split, n, images, labels) in [
        (
            &m.train,
            n_train,
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ),
        (
            &m.test,
            n_test,
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ),
    ] {
        let be = |v: &[u32]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        let img = [
            be(&[0x803, n as u32, 28, 28]),
            split.images[..n * PIXELS].to_vec(),
        ]
        .concat();
        std::fs::write(dir.join(images), img).unwrap();
        std::fs::write(
            dir.join(labels),
            [be(&[0x801, n as u32]), split.labels[..n].to_vec()].concat(),
        )
        .unwrap();
    }
}

fn line_with<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
}

#[test]
fn cli_train_save_evaluate_and_resume() {
    let Some(_) = common::gpu() else { return };
    let dir = temp_dir("cli");
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    // Softmax on a 3,000-image MNIST (1,000 test images): seconds on lavapipe.
    let data = dir.join("mnist");
    write_mnist_subset(&data, 3000, 1000);
    let data = data.to_string_lossy().into_owned();
    let common = [
        "train",
        "--model",
        "softmax",
        "--batch-size",
        "100",
        "--data-dir",
        &data,
    ];
    let trained = shadergrad(
        &[
            &common[..],
            &["--epochs", "2", "--save", &p("full.safetensors")],
        ]
        .concat(),
    );
    let evaluated = shadergrad(&[
        "evaluate",
        "--checkpoint",
        &p("full.safetensors"),
        "--data-dir",
        &data,
    ]);
    let acc = |s: &str| {
        let line = line_with(s, "test_loss:");
        let after = line.split("test_accuracy: ").nth(1).unwrap_or("");
        after.split_whitespace().next().map(str::to_string)
    };
    assert_eq!(
        acc(&evaluated),
        acc(&trained),
        "evaluate prints the test accuracy training printed"
    );
    assert!(evaluated.contains("true\\pred"), "{evaluated}");
    let log = std::fs::read_to_string(dir.join("full.metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines().count(),
        3,
        "two epochs and the test line: {log}"
    );
    assert!(std::fs::read_to_string(dir.join("full.metrics.svg"))
        .unwrap()
        .starts_with("<svg"));

    shadergrad(
        &[
            &common[..],
            &["--epochs", "1", "--save", &p("half.safetensors")],
        ]
        .concat(),
    );
    let resumed = shadergrad(&[
        "train",
        "--resume",
        &p("half.safetensors"),
        "--epochs",
        "2",
        "--save",
        &p("resumed.safetensors"),
        "--data-dir",
        &data,
    ]);
    assert!(
        resumed.contains("resuming") && resumed.contains("Epoch 2/2"),
        "{resumed}"
    );
    assert_eq!(acc(&resumed), acc(&trained));
    let (a, b) = (
        checkpoint::load(&dir.join("full.safetensors"), None).unwrap(),
        checkpoint::load(&dir.join("resumed.safetensors"), None).unwrap(),
    );
    assert_eq!(
        bits(&a.params),
        bits(&b.params),
        "1 epoch + resume + 1 epoch == 2 epochs"
    );
    assert_eq!(bits(&a.state.unwrap().v), bits(&b.state.unwrap().v));
    assert_eq!((b.epoch, b.steps, b.history.len()), (2, a.steps, 2));
    assert_eq!(
        std::fs::read_to_string(dir.join("resumed.metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    // Contradicting the checkpoint, or asking for fewer epochs than it has, is refused.
    for (args, needle) in [
        (
            &["--epochs", "3", "--lr", "0.5"][..],
            "--optimizer, --lr, --momentum",
        ),
        (&["--epochs", "2"][..], "already trained 2 epochs"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadergrad"))
            .args(
                [
                    &[
                        "train",
                        "--resume",
                        &p("full.safetensors"),
                        "--data-dir",
                        &data,
                    ][..],
                    args,
                ]
                .concat(),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A model from a description file (BatchNorm with its running statistics, dropout, a
/// strided conv, average pooling): saved, it loads as the same model with no help, gives
/// the same metrics, and a resumed run equals an uninterrupted one to the bit (the
/// running statistics and the dropout masks included).
#[test]
fn model_file_checkpoints_round_trip_and_resume_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let model =
        shadergrad::model_file::load(Path::new("tests/corpus/models/ok-small.json")).unwrap();
    let opt = Optimizer::adam(1e-3);
    let (straight, _) = run(gpu, model.clone(), opt, None, 1..=2);
    let (first, _) = run(gpu, model.clone(), opt, None, 1..=1);
    let dir = temp_dir("model-file");
    let path = dir.join("small.safetensors");
    let first = Checkpoint {
        kind: "ok-small".into(),
        ..first
    };
    checkpoint::save(&path, &first).unwrap();
    let loaded = checkpoint::load(&path, None).unwrap();
    assert_eq!(
        loaded.model, model,
        "the model comes back from its model_json"
    );
    assert_eq!(bits(&loaded.params), bits(&first.params));
    let (resumed, _) = run(gpu, loaded.model.clone(), opt, Some(&loaded), 2..=2);
    assert_eq!(
        bits(&resumed.params),
        bits(&straight.params),
        "resume is bit-exact"
    );
    let names: Vec<String> = model
        .params()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let i = names
        .iter()
        .position(|n| n == "bn.num_batches_tracked")
        .unwrap();
    assert!(
        straight.params[i][0] > 10.0,
        "the running statistics were updated on the GPU"
    );
}

/// The command line trains a model file and the named models, saves, evaluates and resumes
/// them; a bad model file is refused before any GPU work, naming its field.
#[test]
fn cli_trains_model_files_and_named_models() {
    let Some(_) = common::gpu() else { return };
    let dir = temp_dir("cli-models");
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let data = dir.join("mnist");
    write_mnist_subset(&data, 600, 200);
    let data = data.to_string_lossy().into_owned();
    let base = ["train", "--batch-size", "50", "--data-dir", &data];
    let file = "tests/corpus/models/ok-small.json";
    let out = shadergrad(
        &[
            &base[..],
            &[
                "--model-file",
                file,
                "--epochs",
                "1",
                "--save",
                &p("f.safetensors"),
            ],
        ]
        .concat(),
    );
    assert!(
        out.contains("batchnormalization (BatchNormalization)"),
        "{out}"
    );
    assert!(out.contains("Non-trainable params: 9"), "{out}");
    let resumed = shadergrad(&[
        "train",
        "--resume",
        &p("f.safetensors"),
        "--epochs",
        "2",
        "--data-dir",
        &data,
    ]);
    assert!(resumed.contains("Epoch 2/2"), "{resumed}");
    let evaluated = shadergrad(&[
        "evaluate",
        "--checkpoint",
        &p("f.safetensors"),
        "--data-dir",
        &data,
    ]);
    assert!(evaluated.contains("test_accuracy"), "{evaluated}");
    for model in ["lenet5", "vgg-small"] {
        let out = shadergrad(&[&base[..], &["--model", model, "--epochs", "1"]].concat());
        assert!(out.contains("test_accuracy"), "{model}: {out}");
    }
    std::fs::write(
        dir.join("bad.json"),
        r#"{"input": [1, 28, 28], "layers": [{"type": "dense"}]}"#,
    )
    .unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_shadergrad"))
        .args([&base[..], &["--model-file", &p("bad.json")]].concat())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("bad.json: layers[0].units: missing"),
        "{err}"
    );
}

/// An interrupted epoch's record: its totals are optional (checkpoints written before they
/// were kept), but when present must be four f32 bit patterns.
#[test]
fn interrupted_epoch_totals_are_checked() {
    use shadergrad::fit::Partial;
    let mut v = serde_json::json!({"interrupted": true, "epoch": 2, "step": 5, "steps": 9,
        "loss": 0.5, "accuracy": 0.75, "count": 40, "seconds": 1.5});
    let p = Partial::from_json(&v).unwrap().unwrap();
    assert_eq!(p.totals, None);
    v["totals_bits"] = serde_json::json!([1065353216u32, 0, 1109393408u32, 0]);
    let p = Partial::from_json(&v).unwrap().unwrap();
    assert_eq!(
        p.totals.map(|t| t.map(f32::from_bits)),
        Some([1.0, 0.0, 40.0, 0.0])
    );
    assert_eq!(Partial::from_json(&p.to_json()).unwrap(), Some(p));
    for bad in [
        serde_json::json!([1, 2, 3]),
        serde_json::json!([-1, 0, 0, 0]),
        serde_json::json!("x"),
    ] {
        v["totals_bits"] = bad;
        let err = Partial::from_json(&v).unwrap_err();
        assert!(err.contains("totals_bits"), "{err}");
    }
}
