//! Kernel microbenchmarks: `cargo bench --bench kernels`. Each row times dispatches recorded
//! into one compute pass, submitted and waited on (wall time around a waited submit), and
//! reports GFLOP/s or GB/s. Results also go to target/bench/kernels.json.
//! `cargo bench --bench kernels -- quick` skips the largest matmuls.

use std::time::Instant;

use shadergrad::executor::Trainer;
use shadergrad::fit::split_sources;
use shadergrad::gpu::Gpu;
use shadergrad::kernels::activation::{activation_backward, Activation};
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::gather::gather_batch;
use shadergrad::kernels::loss::*;
use shadergrad::kernels::matmul::*;
use shadergrad::kernels::optim::{optimizer_step, Optimizer};
use shadergrad::kernels::pool::*;
use shadergrad::kernels::transpose::transpose;
use shadergrad::kernels::Dispatch;
use shadergrad::model::Sequential;
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;
use shadergrad::Result;

struct Row {
    kernel: String,
    shape: String,
    ms: f64,
    gflops: Option<f64>,
    gbps: Option<f64>,
}

struct Bench<'g> {
    gpu: &'g Gpu,
    rows: Vec<Row>,
    rng: Rng,
}

impl Bench<'_> {
    fn tensor(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_f32(
            self.gpu,
            "bench",
            shape,
            &self.rng.uniform_vec(n, -1.0, 1.0),
        )
    }

    /// Milliseconds per run of `ds`: one warm-up, then `reps` runs in one compute pass and
    /// one submit, timed by GPU timestamp queries at the pass's start and end where the
    /// adapter has them, else by the wall clock around the submit and its wait.
    fn time(&self, ds: &[&Dispatch], reps: usize) -> Result<f64> {
        let gpu = self.gpu;
        let timestamps = gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY);
        let queries = timestamps.then(|| {
            let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolved)
        });
        let run = |n: usize| -> Result<f64> {
            let started = Instant::now();
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            {
                let timestamp_writes =
                    queries
                        .as_ref()
                        .map(|(set, _)| wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("bench"),
                    timestamp_writes,
                });
                for _ in 0..n {
                    for d in ds {
                        d.record(&mut pass);
                    }
                }
            }
            if let Some((set, resolved)) = &queries {
                encoder.resolve_query_set(set, 0..2, resolved, 0);
            }
            let index = gpu.queue.submit([encoder.finish()]);
            gpu.wait("bench", Some(index))?;
            let wall = started.elapsed().as_secs_f64() * 1e3;
            let ms = match &queries {
                Some((_, resolved)) => {
                    let bytes = gpu.read_bytes(resolved, 0, 16)?;
                    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
                    let ns = ticks[1].saturating_sub(ticks[0]) as f64
                        * gpu.queue.get_timestamp_period() as f64;
                    // A driver that writes no timestamps leaves zeros: use the wall clock.
                    if ns > 0.0 {
                        ns / 1e6
                    } else {
                        wall
                    }
                }
                None => wall,
            };
            Ok(ms / n as f64)
        };
        run(1)?;
        run(reps)
    }

    fn record(
        &mut self,
        kernel: &str,
        shape: String,
        ms: f64,
        flops: Option<f64>,
        bytes: Option<f64>,
    ) {
        let gflops = flops.map(|f| f / ms / 1e6);
        let gbps = bytes.map(|b| b / ms / 1e6);
        let rate = match (gflops, gbps) {
            (Some(g), _) => format!("{g:8.2} GFLOP/s"),
            (None, Some(b)) => format!("{b:8.2} GB/s"),
            _ => String::new(),
        };
        println!("{kernel:<34} {shape:<34} {ms:10.3} ms {rate}");
        self.rows.push(Row {
            kernel: kernel.into(),
            shape,
            ms,
            gflops,
            gbps,
        });
    }

    /// Time `d` (`reps` runs) and record it under its kernel name.
    fn measure(
        &mut self,
        d: &Dispatch,
        reps: usize,
        shape: &str,
        flops: Option<f64>,
        bytes: Option<f64>,
    ) -> Result<()> {
        let ms = self.time(&[d], reps)?;
        self.record(d.name, shape.to_string(), ms, flops, bytes);
        Ok(())
    }

    fn matmul(&mut self, label: &str, spec: MatmulSpec, reps: usize) -> Result<()> {
        let (a, b) = (self.tensor(&spec.a_shape())?, self.tensor(&spec.b_shape())?);
        let c = Tensor::zeros(self.gpu, "c", &[spec.m, spec.n])?;
        let ds = matmul(self.gpu, &spec, &a, &b, None, &c)?;
        let ms = self.time(&ds.iter().collect::<Vec<_>>(), reps)?;
        let shape = format!(
            "{}x{}x{} ta={} tb={}",
            spec.m, spec.n, spec.k, spec.transpose_a as u8, spec.transpose_b as u8
        );
        let name = match ds.len() {
            1 => ds[0].name.to_string(),
            n => format!("{} x{n}", ds[0].name),
        };
        self.record(
            &format!("{name} ({label})"),
            shape,
            ms,
            Some(spec.flops()),
            None,
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "quick");
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    let timer = if gpu
        .device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        "GPU timestamp queries around each kernel's pass"
    } else {
        "wall clock around a submit that is waited on"
    };
    println!("kernel rows timed by {timer}; the training step by the wall clock over 20 steps\n");
    let mut b = Bench {
        gpu: &gpu,
        rows: Vec::new(),
        rng: Rng::new(7),
    };

    // ---- matmul ----
    let squares: &[usize] = if quick {
        &[256, 512, 1024]
    } else {
        &[256, 512, 1024, 2048]
    };
    for &n in squares {
        b.matmul(
            "square",
            MatmulSpec::new(n, n, n),
            if n >= 1024 { 1 } else { 3 },
        )?;
    }
    // Seed CNN Dense(5408 -> 128) at batch 128: forward, dweight, dinput.
    b.matmul(
        "dense fwd",
        MatmulSpec {
            transpose_b: true,
            ..MatmulSpec::new(128, 128, 5408)
        },
        3,
    )?;
    b.matmul(
        "dense dweight",
        MatmulSpec {
            transpose_a: true,
            ..MatmulSpec::new(128, 5408, 128)
        },
        3,
    )?;
    b.matmul("dense dinput", MatmulSpec::new(128, 5408, 128), 3)?;
    // The same three as a training step runs them on CPU adapters: on x^T [5408, 128] and
    // W^T [5408, 128], which cut into uniform windows, after two transposes.
    b.matmul(
        "dense fwd, x^T W^T",
        MatmulSpec {
            transpose_a: true,
            ..MatmulSpec::new(128, 128, 5408)
        },
        3,
    )?;
    b.matmul(
        "dense dweight, x^T",
        MatmulSpec {
            transpose_a: true,
            transpose_b: true,
            ..MatmulSpec::new(128, 5408, 128)
        },
        3,
    )?;
    b.matmul(
        "dense dinput, W^T",
        MatmulSpec {
            transpose_b: true,
            ..MatmulSpec::new(128, 5408, 128)
        },
        3,
    )?;
    let x = b.tensor(&[128, 5408])?;
    let xt = Tensor::zeros(&gpu, "x^T", &[5408, 128])?;
    let d = transpose(&gpu, &x, &xt)?;
    b.measure(&d, 3, "128x5408", None, Some(2.0 * 4.0 * x.numel() as f64))?;

    // ---- conv2d at the seed shapes ----
    let s = Conv2dSpec {
        batch: 128,
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 32,
        kh: 3,
        kw: 3,
        padding: Padding::Valid,
        stride: 1,
    };
    let (x, w, bias, dy) = (
        b.tensor(&s.x_shape())?,
        b.tensor(&s.w_shape())?,
        b.tensor(&[32])?,
        b.tensor(&s.y_shape())?,
    );
    let y = Tensor::zeros(&gpu, "y", &s.y_shape())?;
    let shape = "128x1x28x28 -> 32x26x26, 3x3".to_string();
    let d = conv2d_forward(&gpu, &s, &x, &w, Some(&bias), true, &y)?;
    b.measure(&d, 3, &shape, Some(s.flops()), None)?;
    if let Some(ds) = conv2d_forward_windowed(&gpu, &s, &x, &w, Some(&bias), true, &y)? {
        let ms = b.time(&ds.iter().collect::<Vec<_>>(), 3)?;
        let name = format!("conv2d_forward_subgroup WINDOW x{}", ds.len());
        b.record(&name, shape.clone(), ms, Some(s.flops()), None);
    }
    let part = Tensor::zeros(&gpu, "part", &[s.weight_chunks(), s.part_row()])?;
    let d = conv2d_backward_weight(&gpu, &s, &dy, &x, &part)?;
    b.measure(&d, 3, &shape, Some(s.flops()), None)?;
    let dx = Tensor::zeros(&gpu, "dx", &s.x_shape())?;
    let d = conv2d_backward_input(&gpu, &s, &dy, &w, &dx)?;
    b.measure(&d, 3, &shape, Some(s.flops()), None)?;

    // ---- max pool, relu backward ----
    let p = PoolSpec {
        batch: 128,
        channels: 32,
        h: 26,
        w: 26,
        pool: 2,
        stride: 2,
    };
    let arg = Tensor::zeros(&gpu, "argmax", &p.y_shape())?;
    let (py, pdy) = (
        Tensor::zeros(&gpu, "py", &p.y_shape())?,
        b.tensor(&p.y_shape())?,
    );
    let (n_in, n_out) = (128.0 * 32.0 * 676.0, 128.0 * 32.0 * 169.0);
    let d = max_pool2d_forward(&gpu, &p, &y, &arg, &py)?;
    b.measure(
        &d,
        3,
        "128x32x26x26, 2x2",
        None,
        Some(4.0 * (n_in + 2.0 * n_out)),
    )?;
    // The seed CNN's forward on CPU adapters: conv + ReLU + pool in one kernel.
    if let Some(ds) = conv2d_relu_pool_windowed(&gpu, &s, &p, &x, &w, &bias, &py, &arg)? {
        let ms = b.time(&ds.iter().collect::<Vec<_>>(), 3)?;
        let name = format!("conv2d_relu_pool_subgroup x{}", ds.len());
        b.record(
            &name,
            format!("{shape}, pool 2x2"),
            ms,
            Some(s.flops()),
            None,
        );
        // ... and its dweight/dbias from the pool's gradient (a quarter of the positions).
        let rows = relu_pool_weight_rows(&gpu, &s, &p).unwrap_or(1);
        let part = Tensor::zeros(&gpu, "part", &[rows, s.part_row()])?;
        let g = b.tensor(&p.y_shape())?;
        if let Some(ds) =
            conv2d_relu_pool_backward_weight_windowed(&gpu, &s, &p, &x, &g, &py, &arg, &part)?
        {
            let ms = b.time(&ds.iter().collect::<Vec<_>>(), 3)?;
            let name = format!("conv2d_relu_pool_backward_weight x{}", ds.len());
            b.record(
                &name,
                format!("{shape}, pool 2x2"),
                ms,
                Some(s.flops() / 4.0),
                None,
            );
        }
    }
    let pdx = Tensor::zeros(&gpu, "pdx", &p.x_shape())?;
    let d = max_pool2d_backward(&gpu, &p, &pdy, &arg, &pdx)?;
    b.measure(
        &d,
        3,
        "128x32x26x26, 2x2",
        None,
        Some(4.0 * (n_in + 2.0 * n_out)),
    )?;
    let gz = Tensor::zeros(&gpu, "gz", &s.y_shape())?;
    let d = activation_backward(&gpu, Activation::Relu, &dy, &y, &gz)?;
    b.measure(&d, 3, "128x32x26x26", None, Some(12.0 * n_in))?;

    // ---- softmax cross-entropy ----
    let (z, label) = (
        b.tensor(&[128, 10])?,
        Tensor::from_u32(&gpu, "label", &[128], &[3; 128])?,
    );
    let (prob, loss, dz) = (
        Tensor::zeros(&gpu, "prob", &[128, 10])?,
        Tensor::zeros(&gpu, "loss", &[128])?,
        Tensor::zeros(&gpu, "dz", &[128, 10])?,
    );
    let lt = LossTensors {
        z: &z,
        label: Some(&label),
        target: None,
        prob: &prob,
    };
    let d = loss_forward(&gpu, Loss::SoftmaxCrossEntropy, &lt, &loss)?;
    b.measure(&d, 10, "128x10", None, Some(4.0 * (128.0 * 21.0 + 128.0)))?;
    let d = loss_backward(&gpu, Loss::SoftmaxCrossEntropy, &lt, &dz)?;
    b.measure(&d, 10, "128x10", None, Some(4.0 * (128.0 * 20.0 + 128.0)))?;

    // ---- Adam over the seed CNN's parameters ----
    let n = 693_962;
    let (g, prm, m, v) = (
        b.tensor(&[n])?,
        b.tensor(&[n])?,
        Tensor::zeros(&gpu, "m", &[n])?,
        Tensor::zeros(&gpu, "v", &[n])?,
    );
    let d = optimizer_step(&gpu, &Optimizer::adam(1e-3), &g, &prm, &m, &v)?;
    b.measure(
        &d,
        3,
        &format!("{n} params"),
        None,
        Some(4.0 * 7.0 * n as f64),
    )?;

    // ---- gather + one training step on real MNIST ----
    let mnist = shadergrad::data::load_mnist(&shadergrad::data::default_data_dir())?;
    let mut trainer = Trainer::new(&gpu, Sequential::mnist_cnn(), Optimizer::adam(1e-3), 1)?;
    let set = trainer.add_dataset(&mnist.train.images, &mnist.train.labels)?;
    let split = split_sources(&mut trainer, set, mnist.train.len(), 0.2)?;
    let x = Tensor::zeros(&gpu, "x", &[128, 784])?;
    let lbl = Tensor::zeros(&gpu, "lbl", &[128])?;
    let ds = shadergrad::executor::GpuDataset::upload(
        &gpu,
        &mnist.train.images,
        &mnist.train.labels,
        784,
    )?;
    let order = Tensor::from_u32(&gpu, "order", &[128], &(0..128).collect::<Vec<u32>>())?;
    let d = gather_batch(&gpu, &ds.pixels, &ds.labels, &order, 0, &x, &lbl)?;
    b.measure(
        &d,
        10,
        "128x784 u8 -> f32",
        None,
        Some(128.0 * (784.0 + 4.0 * 784.0)),
    )?;
    let steps = 20;
    trainer.step(split.train, 0, 128, true)?;
    trainer.read_metrics()?;
    let started = Instant::now();
    for i in 0..steps {
        trainer.step(split.train, (i % 375) * 128, 128, true)?;
    }
    trainer.read_metrics()?; // waits for the GPU
    let ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let flops = 3.0 * (MatmulSpec::new(128, 128, 5408).flops() + s.flops());
    b.record(
        "train_step (seed CNN)",
        format!("batch 128, {:.0} images/s", 128.0 * 1e3 / ms),
        ms,
        Some(flops),
        None,
    );

    write_json(&gpu, &b.rows);
    Ok(())
}

fn write_json(gpu: &Gpu, rows: &[Row]) {
    let adapter = gpu.describe();
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "kernel": r.kernel, "shape": r.shape, "ms": r.ms, "gflops": r.gflops, "gbps": r.gbps, "adapter": adapter }))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let path = dir.join("kernels.json");
    let text = serde_json::to_string_pretty(&list).unwrap_or_default();
    match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, text)) {
        Ok(()) => println!("\nwrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
