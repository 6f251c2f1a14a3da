//! Runs compiled plans: the GPU-resident datasets, the shuffled orders, the parameter store
//! and the metrics buffer. A training step is one command encoder, one compute pass and
//! one submit; nothing is read back inside it. Metrics are read when the caller asks.

use std::collections::HashMap;

use crate::data::pack_u8_to_u32;
use crate::gpu::Gpu;
use crate::graph::{build_plan, BatchSource, Plan};
use crate::kernels::gather::START_OFFSET;
use crate::kernels::optim::{step_params, Optimizer};
use crate::kernels::random::Augment;
use crate::kernels::reduce::METRICS_LEN;
use crate::nn::Model;
use crate::params::ParamStore;
use crate::platform::block_on;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// A labelled image set resident on the GPU: u8 pixels packed four per u32 (each image
/// padded to whole words) and u8 labels packed likewise.
pub struct GpuDataset {
    pub pixels: Tensor,
    pub labels: Tensor,
    pub n: usize,
    pub pixels_per_image: usize,
}

impl GpuDataset {
    pub fn upload(
        gpu: &Gpu,
        images: &[u8],
        labels: &[u8],
        pixels_per_image: usize,
    ) -> Result<GpuDataset> {
        let n = labels.len();
        if pixels_per_image == 0 || images.len() != n * pixels_per_image {
            return Err(Error::shape(
                "dataset upload",
                format!(
                    "{} pixel bytes for {n} labels of {pixels_per_image}-pixel images",
                    images.len()
                ),
            ));
        }
        let packed: Vec<u32> = if pixels_per_image.is_multiple_of(4) {
            pack_u8_to_u32(images)
        } else {
            images
                .chunks(pixels_per_image)
                .flat_map(pack_u8_to_u32)
                .collect()
        };
        let packed_labels = pack_u8_to_u32(labels);
        Ok(GpuDataset {
            pixels: Tensor::from_u32(gpu, "dataset pixels", &[packed.len()], &packed)?,
            labels: Tensor::from_u32(
                gpu,
                "dataset labels",
                &[packed_labels.len()],
                &packed_labels,
            )?,
            n,
            pixels_per_image,
        })
    }
}

/// A regression set resident on the GPU: f32 feature rows `[N, D]` and f32 target rows
/// `[N, T]`.
pub struct GpuDatasetF32 {
    pub features: Tensor,
    pub targets: Tensor,
    pub n: usize,
}

impl GpuDatasetF32 {
    /// Upload `features` `[N, D]` and `targets` `[N, T]`, both row-major; N = features.len() / D.
    pub fn upload(
        gpu: &Gpu,
        features: &[f32],
        targets: &[f32],
        features_per_row: usize,
        targets_per_row: usize,
    ) -> Result<GpuDatasetF32> {
        let (d, t) = (features_per_row, targets_per_row);
        if d == 0 || t == 0 || features.is_empty() || !features.len().is_multiple_of(d) {
            return Err(Error::shape(
                "dataset upload",
                format!(
                    "{} feature values are no whole number of {d}-value rows",
                    features.len()
                ),
            ));
        }
        let n = features.len() / d;
        if targets.len() != n * t {
            return Err(Error::shape(
                "dataset upload",
                format!(
                    "{} target values for {n} rows of {t} targets (the model's outputs)",
                    targets.len()
                ),
            ));
        }
        Ok(GpuDatasetF32 {
            features: Tensor::from_f32(gpu, "dataset features", &[n, d], features)?,
            targets: Tensor::from_f32(gpu, "dataset targets", &[n, t], targets)?,
            n,
        })
    }
}

/// An encoded text resident on the GPU: u32 token ids, for language models.
pub struct GpuText {
    pub tokens: Tensor,
    pub n: usize,
}

/// The key of the text-window stream (dropout streams are keyed by their salts).
const TEXT_STREAM: u64 = 0x7E47_0000_0000_0001;

/// One resident dataset of any kind.
enum Dataset {
    Images(GpuDataset),
    Rows(GpuDatasetF32),
    Text(GpuText),
}

impl Dataset {
    fn len(&self) -> usize {
        match self {
            Dataset::Images(d) => d.n,
            Dataset::Rows(d) => d.n,
            Dataset::Text(d) => d.n,
        }
    }

    fn batches<'a>(&'a self, src: &'a Source, augment: Augment) -> BatchSource<'a> {
        let order = &src.order;
        match self {
            Dataset::Text(d) => {
                let (offset, len) = src.span.unwrap_or((0, d.n));
                BatchSource::Text {
                    tokens: &d.tokens,
                    offset,
                    len,
                    seed: TEXT_STREAM,
                }
            }
            Dataset::Images(d) => BatchSource::Images {
                pixels: &d.pixels,
                labels: &d.labels,
                order,
                augment,
            },
            Dataset::Rows(d) => BatchSource::Rows {
                features: &d.features,
                targets: &d.targets,
                order,
            },
        }
    }
}

/// Mean loss and accuracy over the samples seen since the metrics were reset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
    pub count: usize,
    /// A loss was NaN or infinite.
    pub non_finite: bool,
}

/// A dataset plus an index order into it (the epoch's shuffle, or a fixed range).
struct Source {
    dataset: usize,
    order: Tensor,
    /// Text sources: the split's (offset, length) in the token buffer.
    span: Option<(usize, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    source: usize,
    batch: usize,
    train: bool,
}

pub struct Trainer<'g> {
    pub gpu: &'g Gpu,
    pub model: Box<dyn Model>,
    pub optimizer: Optimizer,
    pub store: ParamStore,
    /// Optimizer updates applied so far (Adam's t).
    pub steps: u64,
    /// The run's seed: parameter initialisation and the dropout and augmentation streams.
    pub seed: u64,
    /// Shifts and flips of training batches of image datasets ([`Trainer::set_augment`]).
    augment: Augment,
    metrics: Tensor,
    datasets: Vec<Dataset>,
    sources: Vec<Source>,
    plans: HashMap<PlanKey, Plan>,
}

impl<'g> Trainer<'g> {
    /// Allocate parameters (Keras initialisation from `seed`) and optimizer state.
    pub fn new(
        gpu: &'g Gpu,
        model: impl Model + 'static,
        optimizer: Optimizer,
        seed: u64,
    ) -> Result<Self> {
        let specs = crate::nn::params(&model)?;
        let init = crate::nn::init_params(&specs, seed);
        let store = ParamStore::new(gpu, specs)?;
        store.write(gpu, &store.params, &init)?;
        let model: Box<dyn Model> = Box::new(model);
        Ok(Trainer {
            gpu,
            model,
            optimizer,
            store,
            steps: 0,
            seed,
            augment: Augment::default(),
            metrics: Tensor::zeros(gpu, "metrics", &[METRICS_LEN])?,
            datasets: Vec::new(),
            sources: Vec::new(),
            plans: HashMap::new(),
        })
    }

    /// Upload a dataset once; returns its id for [`Trainer::add_source`].
    pub fn add_dataset(&mut self, images: &[u8], labels: &[u8]) -> Result<usize> {
        let [c, h, w] = self.model.input();
        self.datasets.push(Dataset::Images(GpuDataset::upload(
            self.gpu,
            images,
            labels,
            c * h * w,
        )?));
        Ok(self.datasets.len() - 1)
    }

    /// Upload a regression dataset once: `features` `[N, D]` with D the model's input size
    /// (C * H * W) and `targets` `[N, T]` with T its outputs, both f32 row-major. The model
    /// must end with a linear output (mean squared error). Returns its id.
    pub fn add_dataset_f32(&mut self, features: &[f32], targets: &[f32]) -> Result<usize> {
        let [c, h, w] = self.model.input();
        let outputs = self.model.outputs()?;
        self.datasets.push(Dataset::Rows(GpuDatasetF32::upload(
            self.gpu,
            features,
            targets,
            c * h * w,
            outputs,
        )?));
        Ok(self.datasets.len() - 1)
    }

    /// Overwrite the pixels of image dataset `dataset` with as many images of the same size
    /// (the web page's drawn digit).
    pub fn write_images(&self, dataset: usize, images: &[u8]) -> Result<()> {
        let Some(Dataset::Images(d)) = self.datasets.get(dataset) else {
            return Err(Error::usage(
                "write_images",
                format!("dataset {dataset} is not an image set"),
            ));
        };
        if images.len() != d.n * d.pixels_per_image || !d.pixels_per_image.is_multiple_of(4) {
            return Err(Error::shape(
                "write_images",
                format!(
                    "{} pixel bytes for {} images of {} pixels",
                    images.len(),
                    d.n,
                    d.pixels_per_image
                ),
            ));
        }
        let packed = pack_u8_to_u32(images);
        d.pixels.write_u32(self.gpu, &packed)
    }

    /// A stream of batches from `dataset` in `order`; returns its id.
    pub fn add_source(&mut self, dataset: usize, order: &[u32]) -> Result<usize> {
        let n = self.datasets.get(dataset).map(Dataset::len).unwrap_or(0);
        if let Some(&bad) = order.iter().find(|&&i| i as usize >= n) {
            return Err(Error::shape(
                "add_source",
                format!("index {bad} in a dataset of {n} samples"),
            ));
        }
        let order_t = Tensor::from_u32(self.gpu, "order", &[order.len()], order)?;
        self.sources.push(Source {
            dataset,
            order: order_t,
            span: None,
        });
        Ok(self.sources.len() - 1)
    }

    /// Upload an encoded text once (u32 token ids below the model's vocabulary); returns
    /// its id for [`Trainer::add_text_source`].
    pub fn add_text(&mut self, tokens: &[u32]) -> Result<usize> {
        let vocab = self.model.outputs()?;
        if let Some(bad) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(Error::shape(
                "add_text",
                format!("token {bad} is {} in a vocabulary of {vocab}", tokens[bad]),
            ));
        }
        let t = Tensor::from_u32(self.gpu, "text tokens", &[tokens.len().max(1)], tokens)?;
        self.datasets.push(Dataset::Text(GpuText {
            tokens: t,
            n: tokens.len(),
        }));
        Ok(self.datasets.len() - 1)
    }

    /// Batches of windows drawn on the GPU from tokens`[offset .. offset + len]` of text
    /// `dataset`: a training step draws B fresh windows from the seed and step number, an
    /// evaluation step (see [`Trainer::step`]) the windows of its `start`. Returns its id.
    pub fn add_text_source(&mut self, dataset: usize, offset: usize, len: usize) -> Result<usize> {
        let t = self.model.context().unwrap_or(0);
        let n = match self.datasets.get(dataset) {
            Some(Dataset::Text(d)) => d.n,
            _ => {
                return Err(Error::usage(
                    "add_text_source",
                    format!("dataset {dataset} is not a text"),
                ))
            }
        };
        if t == 0 || offset + len > n || len <= t {
            return Err(Error::shape(
                "add_text_source",
                format!("tokens {offset}..{} of {n} for windows of context {t} + 1; hint: a model with a context, and a split longer than it", offset + len),
            ));
        }
        let order = Tensor::zeros(self.gpu, "text source", &[1])?;
        self.sources.push(Source {
            dataset,
            order,
            span: Some((offset, len)),
        });
        Ok(self.sources.len() - 1)
    }

    /// Samples of a source: its order's length, or for a text source its window starts.
    pub fn source_len(&self, source: usize) -> usize {
        let t = self.model.context().unwrap_or(0);
        match self.sources[source].span {
            Some((_, len)) => len - t,
            None => self.sources[source].order.numel(),
        }
    }

    /// Replace a source's order (the epoch's shuffle): the one upload of an epoch.
    pub fn set_order(&mut self, source: usize, order: &[u32]) -> Result<()> {
        let src = &self.sources[source];
        let n = self.datasets[src.dataset].len();
        if order.len() != src.order.numel() || order.iter().any(|&i| i as usize >= n) {
            return Err(Error::shape(
                "set_order",
                format!(
                    "{} indices for a source of {}",
                    order.len(),
                    src.order.numel()
                ),
            ));
        }
        self.gpu.queue.write_buffer(
            &src.order.buffer,
            src.order.offset,
            bytemuck::cast_slice(order),
        );
        Ok(())
    }

    /// Augment the training batches of image datasets from now on (the plans compiled so
    /// far are dropped); evaluation batches are never augmented. Each training step draws
    /// its shifts and flips from the seed and the step number only, as dropout does, so
    /// reruns and resumed runs see the same batches.
    pub fn set_augment(&mut self, augment: Augment) -> Result<()> {
        if !augment.is_off() {
            augment.check(self.model.input())?;
        }
        self.augment = augment;
        self.plans.clear();
        Ok(())
    }

    pub fn augment(&self) -> Augment {
        self.augment
    }

    fn plan(&mut self, key: PlanKey) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let src = &self.sources[key.source];
            let source = self.datasets[src.dataset].batches(src, self.augment);
            let opt = key.train.then_some(&self.optimizer);
            let plan = build_plan(
                self.gpu,
                self.model.as_ref(),
                &self.store,
                key.batch,
                &source,
                opt,
                &self.metrics,
            )?;
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    /// Bytes resident on the GPU: (parameters, gradients and the optimizer's two moments;
    /// the uploaded datasets).
    pub fn resident_bytes(&self) -> (u64, u64) {
        let store = 4 * self.store.params.bytes();
        let data = self
            .datasets
            .iter()
            .map(|d| match d {
                Dataset::Images(d) => d.pixels.bytes() + d.labels.bytes(),
                Dataset::Rows(d) => d.features.bytes() + d.targets.bytes(),
                Dataset::Text(d) => d.tokens.bytes(),
            })
            .sum();
        (store, data)
    }

    /// Bytes of the transient values of the training plan for `batch` (as planned, and
    /// with a buffer each), building the plan if needed.
    pub fn activation_memory(&mut self, source: usize, batch: usize) -> Result<(u64, u64)> {
        let key = PlanKey {
            source,
            batch,
            train: true,
        };
        Ok(self.plan(key)?.activation_bytes)
    }

    /// Record and submit one step on samples order`[start .. start + batch]`. Training steps
    /// also update the parameters. Nothing is read back.
    pub fn step(&mut self, source: usize, start: usize, batch: usize, train: bool) -> Result<()> {
        if batch == 0 || start + batch > self.source_len(source) {
            return Err(Error::shape(
                "step",
                format!(
                    "batch {start}..{} of {}",
                    start + batch,
                    self.source_len(source)
                ),
            ));
        }
        let t = self.steps + 1;
        let n = self.store.trainable_len.max(1);
        let optimizer = self.optimizer;
        let gpu = self.gpu;
        let mix = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let counter = mix ^ t;
        let text = self.sources[source].span.is_some();
        let plan = self.plan(PlanKey {
            source,
            batch,
            train,
        })?;
        if text {
            // Training draws fresh windows each step; evaluation step `start` always the
            // same ones (a stream of its own: bit 63 set).
            let c = if train {
                counter
            } else {
                mix ^ (1 << 63) ^ start as u64
            };
            crate::kernels::random::write_counter(gpu, plan.gather(), c);
        } else {
            gpu.queue.write_buffer(
                &plan.gather().params,
                START_OFFSET,
                bytemuck::bytes_of(&(start as u32)),
            );
        }
        // Dropout masks and augmentation: a fresh counter each training step, from the seed
        // and the step number only, so reruns and resumed runs draw the same.
        for &i in &plan.random {
            crate::kernels::random::write_counter(gpu, &plan.dispatches[i], counter);
        }
        if let Some(opt) = plan.optimizer() {
            gpu.queue.write_buffer(
                &opt.params,
                0,
                bytemuck::bytes_of(&step_params(&optimizer, n, t)),
            );
        }
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            for d in &plan.dispatches {
                d.record(&mut pass);
            }
        }
        gpu.submit(encoder.finish());
        if train {
            self.steps = t;
        }
        // Reclaim finished submissions without blocking.
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        Ok(())
    }

    /// Debug mode: run one step's dispatches one submit at a time, `repeats` times each,
    /// waiting after each, and return (kernel, milliseconds per run). The step's effects
    /// (including parameter updates) happen `repeats` times.
    pub fn profile_step(
        &mut self,
        source: usize,
        batch: usize,
        train: bool,
        repeats: usize,
    ) -> Result<Vec<(&'static str, f64)>> {
        let gpu = self.gpu;
        let plan = self.plan(PlanKey {
            source,
            batch,
            train,
        })?;
        let mut out = Vec::new();
        for d in &plan.dispatches {
            let run = |n: usize| -> Result<f64> {
                let started = crate::platform::Instant::now();
                let mut encoder = gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
                {
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    for _ in 0..n {
                        d.record(&mut pass);
                    }
                }
                let index = gpu.queue.submit([encoder.finish()]);
                gpu.wait(d.name, Some(index))?;
                Ok(started.elapsed().as_secs_f64() * 1e3)
            };
            run(1)?; // warm-up: first use compiles nothing, but faults pages in
            out.push((d.name, run(repeats.max(1))? / repeats.max(1) as f64));
        }
        Ok(out)
    }

    /// The forward outputs (prob `[B, C]`, label `[B]`, loss `[B]`; for f32 row datasets also
    /// target `[B, T]`, and prob holds the predictions) of the last step run with this source
    /// and batch size.
    pub fn outputs(&self, source: usize, batch: usize, train: bool) -> Option<&Plan> {
        self.plans.get(&PlanKey {
            source,
            batch,
            train,
        })
    }

    pub fn reset_metrics(&self) {
        self.gpu
            .queue
            .write_buffer(&self.metrics.buffer, 0, &[0u8; METRICS_LEN * 4]);
    }

    /// The metrics buffer's raw running totals (loss sum, correct, count, non-finite flag),
    /// so that an interval interrupted by a checkpoint can go on later from the same f32
    /// sums ([`Trainer::set_metrics_raw`]).
    pub fn metrics_raw(&self) -> Result<[f32; METRICS_LEN]> {
        let m = self.metrics.to_f32(self.gpu)?;
        m.try_into()
            .map_err(|_| Error::gpu("metrics_raw", "metrics buffer of the wrong length"))
    }

    /// Put back totals read by [`Trainer::metrics_raw`].
    pub fn set_metrics_raw(&self, m: &[f32; METRICS_LEN]) {
        let bytes: &[u8] = bytemuck::cast_slice(m);
        self.gpu.queue.write_buffer(&self.metrics.buffer, 0, bytes);
    }

    /// Read the running totals (waits for the GPU).
    pub fn read_metrics(&self) -> Result<Metrics> {
        block_on("read_metrics", self.read_metrics_async())
    }

    pub async fn read_metrics_async(&self) -> Result<Metrics> {
        let m = self.metrics.to_f32_async(self.gpu).await?;
        let count = m[2] as usize;
        let denom = (count as f64).max(1.0);
        Ok(Metrics {
            loss: m[0] as f64 / denom,
            accuracy: m[1] as f64 / denom,
            count,
            non_finite: m[3] != 0.0,
        })
    }

    /// Forward passes over a whole source in batches of at most `batch`; its metrics.
    pub fn evaluate(&mut self, source: usize, batch: usize) -> Result<Metrics> {
        self.reset_metrics();
        let n = self.source_len(source);
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            self.step(source, start, b, false)?;
            start += b;
        }
        self.read_metrics()
    }

    pub fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.store.read(self.gpu, &self.store.params)
    }

    pub async fn read_params_async(&self) -> Result<Vec<Vec<f32>>> {
        self.store.read_async(self.gpu, &self.store.params).await
    }

    pub fn write_params(&self, values: &[Vec<f32>]) -> Result<()> {
        self.store.write(self.gpu, &self.store.params, values)
    }

    /// The optimizer state (Adam's m and v; SGD keeps its velocity in m), per parameter
    /// tensor, for a checkpoint.
    #[allow(clippy::type_complexity)]
    pub fn read_optimizer_state(&self) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        block_on("read_optimizer_state", self.read_optimizer_state_async())
    }

    #[allow(clippy::type_complexity)]
    pub async fn read_optimizer_state_async(&self) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
        Ok((
            self.store.read_async(self.gpu, &self.store.m).await?,
            self.store.read_async(self.gpu, &self.store.v).await?,
        ))
    }

    /// Restore the optimizer state and the number of updates applied (Adam's t), so that
    /// the next step continues a checkpointed run exactly.
    pub fn write_optimizer_state(
        &mut self,
        m: &[Vec<f32>],
        v: &[Vec<f32>],
        steps: u64,
    ) -> Result<()> {
        self.store.write(self.gpu, &self.store.m, m)?;
        self.store.write(self.gpu, &self.store.v, v)?;
        self.steps = steps;
        Ok(())
    }
}
