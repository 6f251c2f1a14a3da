//! shadergrad in a web page: the seed CNN trained on the browser's WebGPU adapter by the
//! engine's own WGSL kernels, compiled to wasm32. The page (index.html, app.js) calls these
//! exports one at a time (each awaits the previous): `start`, `loadMnist`, `train`,
//! `evaluate`, `predict`, `exportCheckpoint`, `importCheckpoint`, `kernelTests`,
//! `timeSteps`, `testImage`. Every GPU wait is awaited, never blocked on.

#![cfg(target_arch = "wasm32")]

mod checks;

use std::cell::RefCell;
use std::path::Path;

use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use shadergrad::checkpoint::{self, Checkpoint};
use shadergrad::data::idx::{parse_idx, DEFAULT_CAP_BYTES};
use shadergrad::executor::{Metrics, Trainer};
use shadergrad::fit::{epoch_order, EpochLog, FitConfig};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::optim::Optimizer;
use shadergrad::model::Sequential;
use shadergrad::platform::Instant;
use shadergrad::{Error, Result};

/// Images per training step by default, as the CLI's.
const BATCH: usize = 128;
/// Images per evaluation step.
const EVAL_BATCH: usize = 250;
const SEED: u64 = 42;

thread_local! {
    /// The page's one trainer, taken out for the length of each call.
    static APP: RefCell<Option<App>> = const { RefCell::new(None) };
}

/// The resident data: the first `n_train` training and `n_test` test images of MNIST,
/// and a one-image set that `predict` overwrites with the drawn digit.
struct Data {
    train: usize,
    test: usize,
    n_train: usize,
    n_test: usize,
    canvas: usize,
    canvas_source: usize,
    /// The test images and labels kept on the host, for `testImage`.
    test_images: Vec<u8>,
    test_labels: Vec<u8>,
}

struct App {
    trainer: Trainer<'static>,
    /// Images per training step.
    batch: usize,
    data: Option<Data>,
    /// Epochs finished, and steps done in the current one.
    epoch: usize,
    pos: usize,
    /// The current epoch's running loss and accuracy totals and samples.
    totals: (f64, f64, usize),
    started: Option<Instant>,
    history: Vec<EpochLog>,
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn take() -> std::result::Result<App, JsValue> {
    APP.with(|a| a.borrow_mut().take()).ok_or_else(|| {
        js_err("shadergrad: not initialised, or a call is still running; await start() and each call before the next")
    })
}

fn put(app: App) {
    APP.with(|a| *a.borrow_mut() = Some(app));
}

/// Run `call` on the app, putting it back afterwards whatever the outcome.
macro_rules! with_app {
    (|$app:ident| $body:expr) => {{
        #[allow(unused_mut)]
        let mut $app = take()?;
        let out: Result<_> = async { $body }.await;
        put($app);
        out.map_err(js_err)
    }};
}

/// Open the browser's WebGPU adapter and build the seed CNN (Adam 1e-3, seed 42). Returns
/// the adapter as JSON: name, kernel family, subgroups, limits that matter.
/// `kernels` forces a kernel family (gpu, window, subgroup, portable), as
/// `SHADERGRAD_KERNELS` does natively; empty for the adapter's default. `batch`: images per
/// training step (0 for 128).
#[wasm_bindgen(js_name = start)]
pub async fn start(kernels: String, batch: usize) -> std::result::Result<String, JsValue> {
    console_error_panic_hook();
    if APP.with(|a| a.borrow().is_some()) {
        return Err(js_err("shadergrad: start() was already called"));
    }
    let mut gpu = Gpu::request().await.map_err(js_err)?;
    if !kernels.is_empty() {
        let family = kernels.parse().map_err(js_err)?;
        gpu.force_family(family).map_err(js_err)?;
    }
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    let model = Sequential::mnist_cnn();
    let trainer = Trainer::new(gpu, model, Optimizer::adam(1e-3), SEED).map_err(js_err)?;
    put(App {
        trainer,
        batch: if batch == 0 { BATCH } else { batch },
        data: None,
        epoch: 0,
        pos: 0,
        totals: (0.0, 0.0, 0),
        started: None,
        history: Vec::new(),
    });
    let l = &gpu.limits;
    Ok(json!({
        "adapter": gpu.describe(),
        "family": gpu.family().to_string(),
        "subgroups": gpu.subgroups(),
        "subgroup_sizes": [gpu.info.subgroup_min_size, gpu.info.subgroup_max_size],
        "features": format!("{:?}", gpu.features),
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "parameters": 693_962,
        "batch": if batch == 0 { BATCH } else { batch },
    })
    .to_string())
}

fn console_error_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("shadergrad panicked: {info}").into());
    }));
}

/// The first `n` images (28x28) and labels of an MNIST split from its two gzip IDX files.
fn split(
    names: (&str, &str),
    images: &[u8],
    labels: &[u8],
    n: usize,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (ipath, lpath) = (Path::new(names.0), Path::new(names.1));
    let imgs = parse_idx(ipath, images, DEFAULT_CAP_BYTES)?;
    let lbls = parse_idx(lpath, labels, DEFAULT_CAP_BYTES)?;
    if imgs.dims.len() != 3 || imgs.dims[1..] != [28, 28] {
        return Err(Error::data(
            ipath,
            "dims",
            format!("{:?}; expected [N, 28, 28]", imgs.dims),
        ));
    }
    if lbls.dims != imgs.dims[..1] {
        return Err(Error::data(
            lpath,
            "dims",
            format!("{:?}; expected [{}]", lbls.dims, imgs.dims[0]),
        ));
    }
    if n == 0 || n > imgs.dims[0] {
        return Err(Error::usage(
            names.0,
            format!("{n} images asked of {}", imgs.dims[0]),
        ));
    }
    Ok((imgs.data[..n * 784].to_vec(), lbls.data[..n].to_vec()))
}

/// Upload the first `n_train` training images (a whole number of batches of 128 is used)
/// and the first `n_test` test images from the four gzip IDX files' bytes.
#[wasm_bindgen(js_name = loadMnist)]
pub async fn load_mnist(
    train_images: Vec<u8>,
    train_labels: Vec<u8>,
    test_images: Vec<u8>,
    test_labels: Vec<u8>,
    n_train: usize,
    n_test: usize,
) -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz");
        let (ti, tl) = split(names, &train_images, &train_labels, n_train)?;
        let names = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz");
        let (vi, vl) = split(names, &test_images, &test_labels, n_test)?;
        let n_train = n_train / app.batch * app.batch;
        let t = &mut app.trainer;
        let train_set = t.add_dataset(&ti[..n_train * 784], &tl[..n_train])?;
        let test_set = t.add_dataset(&vi, &vl)?;
        let canvas = t.add_dataset(&[0; 784], &[0])?;
        let data = Data {
            train: t.add_source(train_set, &epoch_order(SEED, 0, n_train))?,
            test: t.add_source(test_set, &(0..n_test as u32).collect::<Vec<_>>())?,
            n_train,
            n_test,
            canvas,
            canvas_source: t.add_source(canvas, &[0])?,
            test_images: vi,
            test_labels: vl,
        };
        app.data = Some(data);
        Ok(
            json!({"n_train": n_train, "n_test": n_test, "steps_per_epoch": n_train / app.batch})
                .to_string(),
        )
    })
}

impl App {
    fn data(&self) -> Result<&Data> {
        self.data
            .as_ref()
            .ok_or_else(|| Error::usage("shadergrad", "no data: await loadMnist(...) first"))
    }

    /// One training step on the next batch, its loss and accuracy read back.
    async fn step(&mut self) -> Result<Metrics> {
        let (source, steps) = {
            let d = self.data()?;
            (d.train, d.n_train / self.batch)
        };
        self.started.get_or_insert_with(Instant::now);
        self.trainer.reset_metrics();
        self.trainer
            .step(source, self.pos * self.batch, self.batch, true)?;
        let m = self.trainer.read_metrics_async().await?;
        if m.non_finite {
            return Err(Error::gpu(
                "train",
                format!("non-finite loss at step {}", self.trainer.steps),
            ));
        }
        let c = m.count as f64;
        self.totals = (
            self.totals.0 + m.loss * c,
            self.totals.1 + m.accuracy * c,
            self.totals.2 + m.count,
        );
        self.pos += 1;
        if self.pos == steps {
            self.end_epoch().await?;
        }
        Ok(m)
    }

    /// The epoch's line (test metrics in the validation fields), and the next shuffle.
    async fn end_epoch(&mut self) -> Result<()> {
        let test = self.evaluate().await?;
        let seconds = self
            .started
            .take()
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        let (loss, acc, n) = std::mem::take(&mut self.totals);
        let n_f = (n as f64).max(1.0);
        self.epoch += 1;
        self.history.push(EpochLog {
            epoch: self.epoch,
            loss: loss / n_f,
            accuracy: acc / n_f,
            val_loss: Some(test.loss),
            val_accuracy: Some(test.accuracy),
            seconds,
            images_per_second: n as f64 / seconds.max(1e-9),
        });
        self.pos = 0;
        let d = self.data()?;
        let (source, n_train) = (d.train, d.n_train);
        self.trainer
            .set_order(source, &epoch_order(SEED, self.epoch, n_train))
    }

    /// Loss and accuracy over the test images (forward passes only).
    async fn evaluate(&mut self) -> Result<Metrics> {
        let (source, n) = {
            let d = self.data()?;
            (d.test, d.n_test)
        };
        self.trainer.reset_metrics();
        let mut start = 0;
        while start < n {
            let b = EVAL_BATCH.min(n - start);
            self.trainer.step(source, start, b, false)?;
            start += b;
        }
        self.trainer.read_metrics_async().await
    }
}

fn epoch_json(e: &EpochLog) -> Value {
    json!({
        "epoch": e.epoch, "loss": e.loss, "accuracy": e.accuracy,
        "test_loss": e.val_loss, "test_accuracy": e.val_accuracy,
        "seconds": e.seconds, "images_per_second": e.images_per_second,
    })
}

/// Train `steps` steps (of 128 images unless `start` said otherwise); per step its loss and accuracy, and the epochs that
/// ended during the call (with the test set's loss and accuracy), as JSON.
#[wasm_bindgen]
pub async fn train(steps: usize) -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let (mut losses, mut accuracies) = (Vec::new(), Vec::new());
        let epochs_before = app.history.len();
        let t = Instant::now();
        for _ in 0..steps {
            let m = app.step().await?;
            losses.push(m.loss);
            accuracies.push(m.accuracy);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
        let epochs: Vec<Value> = app.history[epochs_before..]
            .iter()
            .map(epoch_json)
            .collect();
        Ok(json!({
            "losses": losses, "accuracies": accuracies, "epochs": epochs,
            "epoch": app.epoch, "step_in_epoch": app.pos, "steps": app.trainer.steps,
            "ms_per_step": ms,
        })
        .to_string())
    })
}

/// Milliseconds per training step over `steps` steps (at most to the epoch's end) with no
/// readback between them: submitted back to back, then one wait for the GPU.
#[wasm_bindgen(js_name = timeSteps)]
pub async fn time_steps(steps: usize) -> std::result::Result<f64, JsValue> {
    with_app!(|app| {
        let (source, per_epoch) = {
            let d = app.data()?;
            (d.train, d.n_train / app.batch)
        };
        // A warm-up step first: the first step of a plan builds it.
        if app.pos + 2 >= per_epoch {
            return Err(Error::usage(
                "timeSteps",
                "too close to the epoch's end; train a step first",
            ));
        }
        app.trainer
            .step(source, app.pos * app.batch, app.batch, true)?;
        app.pos += 1;
        let steps = steps.min(per_epoch - app.pos - 1).max(1);
        app.trainer.gpu.settle("timeSteps").await?;
        let t = Instant::now();
        for _ in 0..steps {
            app.trainer
                .step(source, app.pos * app.batch, app.batch, true)?;
            app.pos += 1;
        }
        app.trainer.gpu.settle("timeSteps").await?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / steps as f64)
    })
}

/// Test loss and accuracy, as JSON.
#[wasm_bindgen]
pub async fn evaluate() -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let m = app.evaluate().await?;
        Ok(json!({"loss": m.loss, "accuracy": m.accuracy, "count": m.count}).to_string())
    })
}

/// The ten class probabilities of a 28x28 digit: 784 grey values 0-255, row-major, light
/// on dark as MNIST's.
#[wasm_bindgen]
pub async fn predict(pixels: Vec<u8>) -> std::result::Result<Vec<f32>, JsValue> {
    with_app!(|app| {
        if pixels.len() != 784 {
            return Err(Error::shape(
                "predict",
                format!("{} pixels; expected 784 (28x28)", pixels.len()),
            ));
        }
        let (canvas, source) = {
            let d = app.data()?;
            (d.canvas, d.canvas_source)
        };
        let t = &mut app.trainer;
        t.write_images(canvas, &pixels)?;
        t.step(source, 0, 1, false)?;
        let plan = t
            .outputs(source, 1, false)
            .ok_or_else(|| Error::gpu("predict", "no plan after its step"))?;
        plan.prob.to_f32_async(t.gpu).await
    })
}

/// Test image `i`: its label and 784 pixels, as JSON.
#[wasm_bindgen(js_name = testImage)]
pub fn test_image(i: usize) -> std::result::Result<String, JsValue> {
    APP.with(|a| {
        let a = a.borrow();
        let d = a
            .as_ref()
            .and_then(|a| a.data.as_ref())
            .ok_or_else(|| js_err("no data: await loadMnist(...) first"))?;
        if i >= d.n_test {
            return Err(js_err(format!("test image {i} of {}", d.n_test)));
        }
        let px = &d.test_images[i * 784..(i + 1) * 784];
        Ok(json!({"label": d.test_labels[i], "pixels": px}).to_string())
    })
}

/// The safetensors checkpoint of the model as trained so far (PyTorch names, optimizer
/// state, the epochs' history): what `shadergrad evaluate --checkpoint` reads.
#[wasm_bindgen(js_name = exportCheckpoint)]
pub async fn export_checkpoint() -> std::result::Result<Vec<u8>, JsValue> {
    with_app!(|app| {
        let cfg = FitConfig {
            batch_size: app.batch,
            seed: SEED,
            validation_split: 0.0,
            ..FitConfig::default()
        };
        let metrics = app.history.last().map_or(json!({}), EpochLog::to_json);
        let t = &app.trainer;
        let ckpt = Checkpoint::capture_async(t, "cnn", &cfg, app.epoch, &app.history, metrics);
        let ckpt = ckpt.await?;
        if let Some(at) = shadergrad::fit::first_non_finite(&ckpt.model, &ckpt.params)? {
            return Err(Error::gpu(
                "exportCheckpoint",
                format!("{at} is not finite"),
            ));
        }
        ckpt.to_bytes()
    })
}

/// Load a checkpoint of the seed CNN (from this page or `shadergrad train --save`):
/// parameters, optimizer state and history. Returns its epoch and step count as JSON.
#[wasm_bindgen(js_name = importCheckpoint)]
pub async fn import_checkpoint(bytes: Vec<u8>) -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let path = Path::new("imported.safetensors");
        let cnn = Sequential::mnist_cnn();
        let ckpt = checkpoint::load_bytes(path, &bytes, Some(&cnn))?;
        ckpt.restore(&mut app.trainer)?;
        app.epoch = ckpt.epoch;
        app.history = ckpt.history.clone();
        app.pos = 0;
        app.totals = (0.0, 0.0, 0);
        app.started = None;
        if let Some(d) = &app.data {
            app.trainer
                .set_order(d.train, &epoch_order(SEED, app.epoch, d.n_train))?;
        }
        Ok(json!({"epoch": ckpt.epoch, "steps": ckpt.steps}).to_string())
    })
}

/// The kernel checks (GPU result against the CPU reference on small and awkward shapes),
/// as JSON: one entry per check with its name, pass or fail and the worst error.
#[wasm_bindgen(js_name = kernelTests)]
pub async fn kernel_tests() -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let results = checks::all(app.trainer.gpu).await?;
        Ok(serde_json::to_string(&results).unwrap_or_default())
    })
}

/// A drawing (grey values 0-255 of a `width` x `height` canvas, row-major) as an MNIST
/// digit: 784 values, cropped, scaled and centred by mass as `shadergrad predict` does.
#[wasm_bindgen(js_name = mnistFromDrawing)]
pub fn mnist_from_drawing(
    width: usize,
    height: usize,
    grey: Vec<u8>,
) -> std::result::Result<Vec<u8>, JsValue> {
    let img = shadergrad::predict::GreyImage {
        width,
        height,
        pixels: grey.iter().map(|&v| v as f32).collect(),
    };
    shadergrad::predict::to_mnist(Path::new("drawing"), &img).map_err(js_err)
}

/// Milliseconds per run of each dispatch of the training step (each run `repeats` times in
/// one submit, then awaited), as JSON [[kernel, ms, workgroups]]: where a step's time goes
/// on this adapter. Diagnostic: the repeated updates change the parameters.
#[wasm_bindgen(js_name = profileStep)]
pub async fn profile_step(repeats: usize) -> std::result::Result<String, JsValue> {
    with_app!(|app| {
        let source = app.data()?.train;
        let (batch, gpu) = (app.batch, app.trainer.gpu);
        let plan = app
            .trainer
            .outputs(source, batch, true)
            .ok_or_else(|| Error::usage("profileStep", "train a step first"))?;
        let mut out = Vec::new();
        for d in &plan.dispatches {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                for _ in 0..repeats.max(1) {
                    d.record(&mut pass);
                }
            }
            gpu.settle("profileStep").await?;
            let t = Instant::now();
            gpu.queue.submit([encoder.finish()]);
            gpu.settle("profileStep").await?;
            let ms = t.elapsed().as_secs_f64() * 1e3 / repeats.max(1) as f64;
            out.push(json!([d.name, ms, d.workgroups]));
        }
        Ok(Value::Array(out).to_string())
    })
}
