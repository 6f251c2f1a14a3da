//! Batch normalisation over axis 1 (BatchNorm2d on `[B, C, H, W]`, BatchNorm1d on `[B, C]`),
//! optionally with the ReLU that follows it: shaders/batchnorm.wgsl, its wrappers and
//! references. B = batch, C = channels, S = positions per channel and image (H x W, or 1);
//! n = B x S values per channel.
//!
//! Training: per-channel sums over chunks of images, their fixed-order combination into the
//! batch's mean and (biased) variance, the per-channel affine (scale, shift), then one
//! elementwise pass: 4 dispatches. Evaluation: the affine from given (running) statistics
//! and the pass: 2. Backward: the sums of dy and dy * xhat per chunk, dgamma, dbeta and dx's
//! per-channel coefficients, then one elementwise pass: 3.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Invocations the partial sums aim at (chunks x channels), for the 2 cores of a CPU
/// adapter and more on a GPU.
const PARTIAL_INVOCATIONS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormSpec {
    pub batch: usize,
    pub channels: usize,
    /// Positions per channel and image (H x W; 1 for BatchNorm1d).
    pub spatial: usize,
    /// The planes H x W of a 4-D x (spatial x 1 otherwise).
    pub h: usize,
    pub w: usize,
    /// A max pool of pool x pool windows every pool after the ReLU (0: none); see pool.rs.
    pub pool: usize,
    /// PyTorch's default 1e-5.
    pub eps: f32,
    /// A ReLU after the normalisation (forward), its mask in the backward.
    pub relu: bool,
}

impl BatchNormSpec {
    /// The spec of x `[B, C, ...]` (C = axis 1, the rest flattened into S).
    pub fn of_shape(shape: &[usize], eps: f32, relu: bool) -> Result<BatchNormSpec> {
        if shape.len() < 2 {
            return Err(Error::shape(
                "batch_norm",
                format!("x {shape:?}; hint: x is [B, C] or [B, C, H, W]"),
            ));
        }
        let spatial = shape[2..].iter().product();
        let (h, w) = match shape.len() {
            4 => (shape[2], shape[3]),
            _ => (spatial, 1),
        };
        Ok(BatchNormSpec {
            batch: shape[0],
            channels: shape[1],
            spatial,
            h,
            w,
            pool: 0,
            eps,
            relu,
        })
    }

    /// The pooled planes (H x W without a pool).
    pub fn pooled_hw(&self) -> (usize, usize) {
        match self.pool {
            0 => (self.h, self.w),
            k => (self.h / k, self.w / k),
        }
    }

    /// The shape of y: x's, pooled.
    pub fn y_len(&self) -> usize {
        let (ph, pw) = self.pooled_hw();
        self.batch * self.channels * ph * pw
    }

    /// Values per channel.
    pub fn count(&self) -> usize {
        self.batch * self.spatial
    }

    /// Images per partial sum: enough chunks for `PARTIAL_INVOCATIONS` invocations, at
    /// most [`LOOP_BUDGET`] values per invocation.
    pub fn chunk(&self) -> usize {
        let chunks = PARTIAL_INVOCATIONS.div_ceil(self.channels.max(1));
        let by_budget = (LOOP_BUDGET / (self.spatial + 1)).max(1);
        self.batch.div_ceil(chunks).min(by_budget).max(1)
    }

    pub fn chunks(&self) -> usize {
        self.batch.div_ceil(self.chunk())
    }

    /// Elements of the partial-sum scratch `[chunks, C, 2]`.
    pub fn part_len(&self) -> usize {
        self.chunks() * self.channels * 2
    }

    /// Elements of the per-channel coefficient scratch (forward 2 a channel, backward 4).
    pub fn coef_len(&self) -> usize {
        self.channels * 4
    }

    fn validate(&self, op: &str) -> Result<()> {
        if self.batch == 0 || self.channels == 0 || self.spatial == 0 {
            return Err(Error::shape(op, format!("empty input {self:?}")));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::shape(
                op,
                format!("eps {} must be finite and >= 0", self.eps),
            ));
        }
        if self.pool > 0
            && (!self.relu || self.pool > self.h.min(self.w) || self.spatial >= 1 << 24)
        {
            return Err(Error::shape(
                op,
                format!("a pool of {0}x{0} needs the ReLU and fits [B, C, H, W] of H, W >= {0} (argmax positions below 2^24): {self:?}", self.pool),
            ));
        }
        // The elementwise passes divide in f32: an image's values below 2^22.
        let image = self.channels * self.spatial;
        let chunk_values = self.chunk() * self.spatial;
        if chunk_values > LOOP_BUDGET || self.chunks() > LOOP_BUDGET || image >= ELEMENTWISE_VALUES
        {
            return Err(Error::Limit {
                op: op.into(),
                what: "values a channel (loop iterations per invocation)".into(),
                requested: self.count() as u64,
                limit: LOOP_BUDGET as u64,
                hint: "use smaller images or batches".into(),
            });
        }
        Ok(())
    }
}

/// The forward's operands: x, y `[B, C, ...]`, gamma, beta, mean, var `[C]`.
pub struct BatchNormTensors<'a> {
    pub x: &'a Tensor,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub y: &'a Tensor,
    /// Training: written (the batch's statistics); evaluation: read (the running ones).
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
    /// With a pool: each pooled value's position in its H x W plane, as f32 (y's shape).
    pub argmax: Option<&'a Tensor>,
}

/// The backward's gradients: dy (in), dx `[B, C, ...]`, dgamma, dbeta `[C]` (out).
pub struct BatchNormGrads<'a> {
    pub dy: &'a Tensor,
    pub dx: &'a Tensor,
    pub dgamma: &'a Tensor,
    pub dbeta: &'a Tensor,
}

/// Scratch of the wrappers: part [`BatchNormSpec::part_len`], coef
/// [`BatchNormSpec::coef_len`] elements.
pub struct BatchNormScratch<'a> {
    pub part: &'a Tensor,
    pub coef: &'a Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    spatial: u32,
    chunk: u32,
    chunks: u32,
    flags: u32,
    eps: f32,
    first: u32,
    h: u32,
    w: u32,
    pool: u32,
    out_h: u32,
    out_w: u32,
    _pad: [u32; 3],
}

fn params(s: &BatchNormSpec) -> Params {
    Params {
        batch: s.batch as u32,
        channels: s.channels as u32,
        spatial: s.spatial as u32,
        chunk: s.chunk() as u32,
        chunks: s.chunks() as u32,
        flags: s.relu as u32
            | if s.channels > UNIFORM_CHANNELS {
                COEF_STORAGE
            } else {
                0
            },
        eps: s.eps,
        first: 0,
        h: s.h as u32,
        w: s.w as u32,
        pool: s.pool as u32,
        out_h: s.pooled_hw().0 as u32,
        out_w: s.pooled_hw().1 as u32,
        _pad: [0; 3],
    }
}

const WG: usize = 256;
/// Channels whose coefficients the elementwise passes read from a uniform buffer (16 KiB,
/// WebGPU's default limit); more read them from storage (flag COEF_STORAGE).
const UNIFORM_CHANNELS: usize = 1024;
const COEF_STORAGE: u32 = 2;

fn expect_len(op: &str, name: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.numel() != n {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected {n} elements", t.shape),
        ));
    }
    Ok(())
}

fn check(
    op: &str,
    s: &BatchNormSpec,
    t: &BatchNormTensors<'_>,
    scratch: &BatchNormScratch<'_>,
) -> Result<()> {
    s.validate(op)?;
    let full = s.batch * s.channels * s.spatial;
    for (name, v, n) in [
        ("x", t.x, full),
        ("y", t.y, s.y_len()),
        ("gamma", t.gamma, s.channels),
        ("beta", t.beta, s.channels),
        ("mean", t.mean, s.channels),
        ("var", t.var, s.channels),
        ("part", scratch.part, s.part_len()),
        ("coef", scratch.coef, s.coef_len()),
    ] {
        expect_len(op, name, v, n)?;
    }
    match (s.pool, t.argmax) {
        (0, None) => {}
        (k, Some(a)) if k > 0 => expect_len(op, "argmax", a, s.y_len())?,
        _ => {
            return Err(Error::shape(
                op,
                "an argmax tensor is given exactly when the spec has a pool",
            ))
        }
    }
    let align = 256;
    if !scratch.coef.offset.is_multiple_of(align) {
        return Err(Error::shape(
            op,
            format!("coef starts at byte {}, not a multiple of {align} (it is bound as a uniform buffer)", scratch.coef.offset),
        ));
    }
    if t.x.shape.get(1) != Some(&s.channels) {
        return Err(Error::shape(
            op,
            format!(
                "x has shape {:?}, expected {} channels on axis 1",
                t.x.shape, s.channels
            ),
        ));
    }
    Ok(())
}

/// Values an image may hold for the elementwise passes (its channel comes from an f32
/// division).
const ELEMENTWISE_VALUES: usize = 1 << 22;

/// One dispatch of `entry` over `grid` invocations (x, y), image `first` on for the
/// elementwise entries.
fn call_at(
    gpu: &Gpu,
    entry: &'static str,
    s: &BatchNormSpec,
    [first, nx, ny]: [usize; 3],
    bindings: &[(&Tensor, Access)],
) -> Result<Dispatch> {
    let groups = [nx.div_ceil(WG), ny];
    let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if groups[0] > max {
        return Err(Error::Limit {
            op: entry.into(),
            what: "workgroups".into(),
            requested: groups[0] as u64,
            limit: max as u64,
            hint: "use a smaller batch or fewer channels".into(),
        });
    }
    let p = Params {
        first: first as u32,
        ..params(s)
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::BatchNorm,
            entry,
            params: bytemuck::bytes_of(&p),
            bindings,
            workgroups: [groups[0] as u32, groups[1] as u32, 1],
            constants: &[("WG", WG as f64)],
        },
    )
}

/// One dispatch of a per-channel or per-(chunk, channel) entry with `n` invocations.
fn call(
    gpu: &Gpu,
    entry: &'static str,
    s: &BatchNormSpec,
    n: usize,
    bindings: &[(&Tensor, Access)],
) -> Result<Dispatch> {
    call_at(gpu, entry, s, [0, n, 1], bindings)
}

/// An elementwise entry: `per_image` invocations an image (its values, or with a pool its
/// windows), workgroup rows the images, as many dispatches as the grid's rows need.
/// `bindings` are 1..=6 and optionally 7; coef is bound again as the uniform coefficients
/// (binding 9).
fn elementwise(
    gpu: &Gpu,
    entry: &'static str,
    s: &BatchNormSpec,
    (bindings, per_image): (&[(&Tensor, Access)], usize),
    coef: &Tensor,
) -> Result<Vec<Dispatch>> {
    // The first UNIFORM_CHANNELS coefficients (the buffer's window slack covers them).
    let coef_u = Tensor {
        buffer: coef.buffer.clone(),
        offset: coef.offset,
        shape: vec![UNIFORM_CHANNELS * 4],
    };
    // Unused 7 and 8: the output again (a read-only dummy would conflict with it).
    let out = bindings[5].0;
    let mut all = bindings.to_vec();
    while all.len() < 8 {
        all.push((out, Access::ReadWrite));
    }
    all.push((&coef_u, Access::Window));
    let bindings = &all;
    let images = (gpu.limits.max_compute_workgroups_per_dimension as usize).min(s.batch);
    (0..s.batch)
        .step_by(images)
        .map(|b0| {
            let n = images.min(s.batch - b0);
            call_at(gpu, entry, s, [b0, per_image, n], bindings)
        })
        .collect()
}

/// The affine (scale, shift) from mean and var into coef, then y = act(x * scale + shift).
fn affine_and_apply(
    gpu: &Gpu,
    s: &BatchNormSpec,
    t: &BatchNormTensors<'_>,
    coef: &Tensor,
) -> Result<Vec<Dispatch>> {
    let (r, w) = (Access::Read, Access::ReadWrite);
    let mut bindings = vec![
        (t.x, r),
        (gpu.dummy(), r),
        (gpu.dummy(), r),
        (gpu.dummy(), r),
        (coef, r),
        (t.y, w),
    ];
    let (ph, pw) = s.pooled_hw();
    let (entry, per_image) = match t.argmax {
        Some(a) => {
            bindings.push((a, w));
            ("batch_norm_pool_forward", s.channels * ph * pw)
        }
        None => ("batch_norm_forward", s.channels * s.spatial),
    };
    Ok(vec![call(
        gpu,
        "batch_norm_affine",
        s,
        s.channels,
        &[
            (gpu.dummy(), r),
            (t.mean, r),
            (t.var, r),
            (t.gamma, r),
            (t.beta, r),
            (coef, w),
        ],
    )?]
    .into_iter()
    .chain(elementwise(
        gpu,
        entry,
        s,
        (&bindings[..], per_image),
        coef,
    )?)
    .collect())
}

/// Training forward: the batch's mean and biased var `[C]` into t.mean, t.var, and
/// y = act((x - mean) / sqrt(var + eps) * gamma + beta).
pub fn batch_norm_train(
    gpu: &Gpu,
    s: &BatchNormSpec,
    t: &BatchNormTensors<'_>,
    scratch: &BatchNormScratch<'_>,
) -> Result<Vec<Dispatch>> {
    let op = "batch_norm";
    check(op, s, t, scratch)?;
    let (r, w) = (Access::Read, Access::ReadWrite);
    let mut d = vec![
        call(
            gpu,
            "batch_norm_partial",
            s,
            s.chunks() * s.channels,
            &[
                (t.x, r),
                (gpu.dummy(), r),
                (gpu.dummy(), r),
                (gpu.dummy(), r),
                (gpu.dummy(), r),
                (scratch.part, w),
            ],
        )?,
        call(
            gpu,
            "batch_norm_stats",
            s,
            s.channels,
            &[
                (t.x, r),
                (scratch.part, r),
                (gpu.dummy(), r),
                (gpu.dummy(), r),
                (gpu.dummy(), r),
                (t.mean, w),
                (t.var, w),
            ],
        )?,
    ];
    d.extend(affine_and_apply(gpu, s, t, scratch.coef)?);
    Ok(d)
}

/// Evaluation forward: y = act((x - mean) / sqrt(var + eps) * gamma + beta) with the given
/// (running) statistics t.mean, t.var.
pub fn batch_norm_eval(
    gpu: &Gpu,
    s: &BatchNormSpec,
    t: &BatchNormTensors<'_>,
    scratch: &BatchNormScratch<'_>,
) -> Result<Vec<Dispatch>> {
    check("batch_norm (evaluation)", s, t, scratch)?;
    affine_and_apply(gpu, s, t, scratch.coef)
}

/// Backward of [`batch_norm_train`]: dx, dgamma, dbeta from dy, with t as the forward left
/// it (y is read only with relu).
pub fn batch_norm_backward(
    gpu: &Gpu,
    s: &BatchNormSpec,
    t: &BatchNormTensors<'_>,
    grads: &BatchNormGrads<'_>,
    scratch: &BatchNormScratch<'_>,
) -> Result<Vec<Dispatch>> {
    let op = "batch_norm_backward";
    check(op, s, t, scratch)?;
    let full = s.batch * s.channels * s.spatial;
    expect_len(op, "dy", grads.dy, s.y_len())?;
    expect_len(op, "dx", grads.dx, full)?;
    expect_len(op, "dgamma", grads.dgamma, s.channels)?;
    expect_len(op, "dbeta", grads.dbeta, s.channels)?;
    let (r, w) = (Access::Read, Access::ReadWrite);
    let y = if s.relu { t.y } else { gpu.dummy() };
    let mut partial = vec![
        (t.x, r),
        (grads.dy, r),
        (y, r),
        (t.mean, r),
        (t.var, r),
        (scratch.part, w),
    ];
    let mut input = vec![
        (t.x, r),
        (grads.dy, r),
        (y, r),
        (gpu.dummy(), r),
        (scratch.coef, r),
        (grads.dx, w),
    ];
    let windows = s.channels * s.h.div_ceil(s.pool.max(1)) * s.w.div_ceil(s.pool.max(1));
    let (entries, per_image) = match t.argmax {
        Some(a) => {
            partial.push((a, w));
            input.push((a, w));
            let e = [
                "batch_norm_pool_backward_partial",
                "batch_norm_pool_backward_input",
            ];
            (e, windows)
        }
        None => {
            let e = ["batch_norm_backward_partial", "batch_norm_backward_input"];
            (e, s.channels * s.spatial)
        }
    };
    Ok(vec![
        call(gpu, entries[0], s, s.chunks() * s.channels, &partial)?,
        call(
            gpu,
            "batch_norm_backward_params",
            s,
            s.channels,
            &[
                (gpu.dummy(), r),
                (scratch.part, r),
                (t.gamma, r),
                (t.mean, r),
                (t.var, r),
                (scratch.coef, w),
                (grads.dgamma, w),
                (grads.dbeta, w),
            ],
        )?,
    ]
    .into_iter()
    .chain(elementwise(
        gpu,
        entries[1],
        s,
        (&input[..], per_image),
        scratch.coef,
    )?)
    .collect())
}

// ---- CPU references (f64) ----------------------------------------------------------------

/// Index of (b, c, s) in x `[B, C, S]`.
fn at(s: &BatchNormSpec, b: usize, c: usize, i: usize) -> usize {
    (b * s.channels + c) * s.spatial + i
}

/// The batch's mean and biased variance per channel (two passes).
pub fn batch_norm_stats_ref(s: &BatchNormSpec, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = s.count() as f64;
    let mut mean = vec![0.0; s.channels];
    let mut var = vec![0.0; s.channels];
    for c in 0..s.channels {
        let vals = (0..s.batch).flat_map(|b| (0..s.spatial).map(move |i| (b, i)));
        mean[c] = vals.clone().map(|(b, i)| x[at(s, b, c, i)]).sum::<f64>() / n;
        var[c] = vals
            .map(|(b, i)| (x[at(s, b, c, i)] - mean[c]).powi(2))
            .sum::<f64>()
            / n;
    }
    (mean, var)
}

/// y = act((x - mean) / sqrt(var + eps) * gamma + beta) with the given statistics.
pub fn batch_norm_apply_ref(
    s: &BatchNormSpec,
    x: &[f64],
    [gamma, beta, mean, var]: [&[f64]; 4],
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (j, v) in y.iter_mut().enumerate() {
        let c = (j / s.spatial) % s.channels;
        let r = 1.0 / (var[c] + s.eps as f64).sqrt();
        let z = (x[j] - mean[c]) * r * gamma[c] + beta[c];
        *v = if s.relu { z.max(0.0) } else { z };
    }
    y
}

/// (dx, dgamma, dbeta) of the training forward with the batch's statistics, given dy.
pub fn batch_norm_backward_ref(
    s: &BatchNormSpec,
    x: &[f64],
    [gamma, beta]: [&[f64]; 2],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = batch_norm_stats_ref(s, x);
    let y = batch_norm_apply_ref(s, x, [gamma, beta, &mean, &var]);
    let n = s.count() as f64;
    let (mut dgamma, mut dbeta) = (vec![0.0; s.channels], vec![0.0; s.channels]);
    let g = |j: usize| if s.relu && y[j] <= 0.0 { 0.0 } else { dy[j] };
    let xhat = |j: usize, c: usize| (x[j] - mean[c]) / (var[c] + s.eps as f64).sqrt();
    for j in 0..x.len() {
        let c = (j / s.spatial) % s.channels;
        dbeta[c] += g(j);
        dgamma[c] += g(j) * xhat(j, c);
    }
    let dx = (0..x.len())
        .map(|j| {
            let c = (j / s.spatial) % s.channels;
            let r = 1.0 / (var[c] + s.eps as f64).sqrt();
            gamma[c] * r * (g(j) - dbeta[c] / n - xhat(j, c) * dgamma[c] / n)
        })
        .collect();
    (dx, dgamma, dbeta)
}

/// The max pool (pool x pool every pool) of the fused kernels.
fn pool_spec(s: &BatchNormSpec) -> crate::kernels::pool::PoolSpec {
    crate::kernels::pool::PoolSpec {
        batch: s.batch,
        channels: s.channels,
        h: s.h,
        w: s.w,
        pool: s.pool,
        stride: s.pool,
    }
}

/// Reference of the fused forward (s.pool > 0): the batch norm (with its ReLU) with the
/// given statistics, then the pool: (y pooled, argmax).
pub fn batch_norm_pool_ref(
    s: &BatchNormSpec,
    x: &[f64],
    stats: [&[f64]; 4],
) -> (Vec<f64>, Vec<u32>) {
    let y = batch_norm_apply_ref(s, x, stats);
    crate::kernels::pool::max_pool2d_forward_ref(&pool_spec(s), &y)
}

/// Reference of the fused backward: the pooled gradient dy routed to the argmax positions
/// where the pooled value is positive, then the batch norm's backward.
pub fn batch_norm_pool_backward_ref(
    s: &BatchNormSpec,
    x: &[f64],
    [gamma, beta]: [&[f64]; 2],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, var) = batch_norm_stats_ref(s, x);
    let (y, argmax) = batch_norm_pool_ref(s, x, [gamma, beta, &mean, &var]);
    let dense = crate::kernels::pool::max_pool2d_relu_backward_ref(&pool_spec(s), dy, &argmax, &y);
    batch_norm_backward_ref(s, x, [gamma, beta], &dense)
}
