//! `C = op(A) · op(B) (+ bias) (ReLU)`: shaders/matmul.wgsl, its wrapper and its reference.
//! M, N, K: rows of C, columns of C, the contracted dimension.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;

mod tiled;
mod windows;
use crate::kernels::Family;
use crate::{Error, Result};
#[allow(unused_imports)]
pub(crate) use tiled::{tiled, Mode, TiledParams, BIAS_ROW, TRANSPOSE_A, TRANSPOSE_B};
pub use tiled::{TileConfig, MAX_SPLITS, TILED_MIN_WORKGROUP_BYTES};
pub use windows::*;

/// Where the elements of a batched operand live in its buffer: element `[z, r, c]` of A (stored
/// `[batch, a_shape]`), B (b_shape) or C (`[batch, M, N]`) is at
/// `offset + (z / split) * outer + (z % split) * inner + r * row + c * col`.
/// A two-level batch z = b * split + h reads a head's slice of a permuted tensor in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Strided {
    pub offset: usize,
    pub split: usize,
    pub outer: usize,
    pub inner: usize,
    pub row: usize,
    pub col: usize,
}

impl Strided {
    /// Products `batch_stride` apart, each rows x cols row-major.
    pub fn contiguous(batch_stride: usize, cols: usize) -> Self {
        Strided {
            offset: 0,
            split: 1,
            outer: batch_stride,
            inner: 0,
            row: cols,
            col: 1,
        }
    }

    /// The index of element `[z, r, c]`.
    pub fn at(&self, z: usize, r: usize, c: usize) -> usize {
        let s = self.split.max(1);
        self.offset + (z / s) * self.outer + (z % s) * self.inner + r * self.row + c * self.col
    }

    /// The highest index a `[batch, rows, cols]` operand reads.
    pub fn last(&self, batch: usize, rows: usize, cols: usize) -> usize {
        let s = self.split.max(1);
        let (zo, zi) = ((batch - 1) / s, (batch - 1).min(s - 1));
        self.offset
            + zo * self.outer
            + zi * self.inner
            + (rows - 1) * self.row
            + (cols - 1) * self.col
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Independent products: A, B and C are `[batch, ...]` contiguous (1 = a plain matmul).
    pub batch: usize,
    /// With batch > 1, one B for every product (B is then `[K, N]` or `[N, K]`, not batched).
    pub shared_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored `[K, M]` rather than `[M, K]`.
    pub transpose_a: bool,
    /// B is stored `[N, K]` rather than `[K, N]`.
    pub transpose_b: bool,
    pub bias: bool,
    pub relu: bool,
    /// Operands read (and C written) through strides rather than contiguous: see
    /// [`Strided`]. The register-tile, subgroup and tiled kernels take them (not the
    /// window kernel).
    pub a_view: Option<Strided>,
    pub b_view: Option<Strided>,
    pub c_view: Option<Strided>,
}

impl MatmulSpec {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulSpec {
            batch: 1,
            shared_b: false,
            m,
            n,
            k,
            transpose_a: false,
            transpose_b: false,
            bias: false,
            relu: false,
            a_view: None,
            b_view: None,
            c_view: None,
        }
    }

    /// Whether an operand is a strided view (see [`Strided`]).
    pub fn viewed(&self) -> bool {
        self.a_view.is_some() || self.b_view.is_some() || self.c_view.is_some()
    }

    /// A's layout: its view, or `[batch, a_shape]` contiguous.
    pub fn a_strides(&self) -> Strided {
        let [_, a1] = self.a_shape();
        self.a_view
            .unwrap_or(Strided::contiguous(self.m * self.k, a1))
    }

    /// B's layout: its view, or `[batch, b_shape]` contiguous (stride 0 when shared).
    pub fn b_strides(&self) -> Strided {
        let [_, b1] = self.b_shape();
        let stride = if self.shared_b { 0 } else { self.n * self.k };
        self.b_view.unwrap_or(Strided::contiguous(stride, b1))
    }

    /// C's layout: its view, or `[batch, M, N]` contiguous.
    pub fn c_strides(&self) -> Strided {
        self.c_view
            .unwrap_or(Strided::contiguous(self.m * self.n, self.n))
    }

    /// opA`[z, i, kk]` and opB`[z, kk, j]` as (row, col) strides of the kernels: (a_m, a_k),
    /// (b_k, b_n).
    fn op_strides(&self) -> ([usize; 2], [usize; 2]) {
        let (a, b) = (self.a_strides(), self.b_strides());
        let a_mk = if self.transpose_a {
            [a.col, a.row]
        } else {
            [a.row, a.col]
        };
        let b_kn = if self.transpose_b {
            [b.col, b.row]
        } else {
            [b.row, b.col]
        };
        (a_mk, b_kn)
    }

    pub fn a_shape(&self) -> [usize; 2] {
        if self.transpose_a {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        }
    }

    pub fn b_shape(&self) -> [usize; 2] {
        if self.transpose_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        }
    }

    /// Elements of B (all of the batch's, or the one shared).
    pub fn b_len(&self) -> usize {
        let b = if self.shared_b { 1 } else { self.batch };
        b * self.n * self.k
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Register-tile shape of matmul.wgsl (pipeline-overridable constants WG, TM, TN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub wg: u32,
    pub tm: u32,
    pub tn: u32,
}

impl Tiles {
    pub const MAX_TM: u32 = 8;
    pub const MAX_TN: u32 = 4;
}

/// Which matmul kernel runs, and its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// matmul.wgsl: a TM x TN register tile per invocation, portable.
    RegisterTile(Tiles),
    /// matmul_subgroup.wgsl: a 32 x 2 block per invocation, the 32 rows' A values shared
    /// by subgroup broadcasts; WG invocations.
    Subgroup { wg: u32 },
    /// The same block reading A and B through 64 KiB uniform-buffer windows, one dispatch
    /// per block of C and chunk of K (see [`windows`]); Subgroup where the operands' layouts
    /// do not cut into windows.
    Window { wg: u32 },
    /// matmul_tiled.wgsl: BM x BN blocks staged through workgroup memory, a TM x TN register
    /// tile per invocation, split-K with a deterministic reduce pass; batched. The GPU
    /// family's kernel.
    Tiled(TileConfig),
}

impl MatmulKernel {
    /// The kernel measured fastest on this kind of adapter (see benches/kernels.rs): on
    /// lavapipe the subgroup kernel runs the seed CNN's Dense shapes at ~4 GFLOP/s against
    /// ~0.6-0.9 for the register tiles, because every buffer load there is expensive.
    /// On CPU adapters uniform-buffer loads are ~10x cheaper than storage loads, so the
    /// window kernel runs the Dense shapes at ~11 GFLOP/s; GPUs keep storage buffers.
    pub fn for_gpu(gpu: &Gpu) -> MatmulKernel {
        if gpu.family() == Family::Gpu {
            MatmulKernel::Tiled(TileConfig::new(64, 64, 16, 4, 4))
        } else if gpu.windows() {
            MatmulKernel::Window { wg: 64 }
        } else if gpu.subgroups() {
            MatmulKernel::Subgroup { wg: 64 }
        } else {
            MatmulKernel::RegisterTile(Tiles {
                wg: 64,
                tm: 4,
                tn: 4,
            })
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_base: u32,
    a_m: u32,
    a_k: u32,
    a_batch: u32,
    a_split: u32,
    a_inner: u32,
    b_base: u32,
    b_k: u32,
    b_n: u32,
    b_batch: u32,
    b_split: u32,
    b_inner: u32,
    c_base: u32,
    c_m: u32,
    c_batch: u32,
    c_split: u32,
    c_inner: u32,
    _pad: [u32; 3],
}

/// Params of matmul_subgroup.wgsl: one block of C, operands addressed by strides (and the
/// conv entry points' geometry, used by conv2d's window kernels).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct BlockParams {
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) flags: u32,
    pub(crate) a_base: u32,
    pub(crate) a_m: u32,
    pub(crate) a_k: u32,
    pub(crate) b_base: u32,
    pub(crate) b_k: u32,
    pub(crate) b_n: u32,
    pub(crate) c_base: u32,
    pub(crate) c_m: u32,
    pub(crate) bias_base: u32,
    pub(crate) a_batch: u32,
    pub(crate) b_batch: u32,
    pub(crate) c_batch: u32,
    // The conv entry points' geometry (see matmul_subgroup.wgsl; zero for the matmuls).
    pub(crate) c_in: u32,
    pub(crate) h: u32,
    pub(crate) w: u32,
    pub(crate) kh: u32,
    pub(crate) kw: u32,
    pub(crate) pad_h: u32,
    pub(crate) pad_w: u32,
    pub(crate) out_h: u32,
    pub(crate) out_w: u32,
    pub(crate) stride: u32,
    pub(crate) a_ci: u32,
    pub(crate) k_rows: u32,
    pub(crate) bias_at: u32,
    // matmul_subgroup's two-level batch (0 = one level; see [`Strided`]).
    pub(crate) a_split: u32,
    pub(crate) a_inner: u32,
    pub(crate) b_split: u32,
    pub(crate) b_inner: u32,
    pub(crate) c_split: u32,
    pub(crate) c_inner: u32,
}

const BIAS: u32 = 4;
const RELU: u32 = 8;
const ACCUMULATE: u32 = 32;

/// The product itself: not empty, `shared_b` only when batched, every operand indexable by
/// u32.
fn check_spec(spec: &MatmulSpec) -> Result<()> {
    let op = "matmul";
    if spec.m == 0 || spec.n == 0 || spec.k == 0 || spec.batch == 0 {
        return Err(Error::shape(op, format!("empty product {spec:?}")));
    }
    if spec.shared_b && spec.batch == 1 {
        return Err(Error::shape(
            op,
            format!("shared_b needs batch > 1 in {spec:?}"),
        ));
    }
    let big = (spec.batch * spec.m.max(spec.n) * spec.k).max(spec.batch * spec.m * spec.n);
    if big > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{spec:?} has more than 2^32 elements in an operand; split the batch"),
        ));
    }
    Ok(())
}

/// The product (`check_spec`) and its operands: each of its shape, or, viewed, holding
/// every element its view reaches; C's view with contiguous rows; bias iff `spec.bias`.
fn check(
    spec: &MatmulSpec,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<()> {
    check_spec(spec)?;
    let op = "matmul";
    let want = |name: &str, t: &Tensor, shape: &[usize]| -> Result<()> {
        if t.numel() != shape.iter().product::<usize>() {
            return Err(Error::shape(
                op,
                format!(
                    "{name} has shape {:?}, expected {:?} for {spec:?}",
                    t.shape, shape
                ),
            ));
        }
        Ok(())
    };
    // A viewed operand only has to hold the elements its view reaches.
    let reach = |name: &str, t: &Tensor, v: Strided, rows: usize, cols: usize| -> Result<()> {
        let last = v.last(spec.batch, rows, cols);
        if last >= t.numel() || last > u32::MAX as usize {
            return Err(Error::shape(
                op,
                format!("{name} view {v:?} reaches element {last}, past {name}'s {} elements (shape {:?}) for {spec:?}", t.numel(), t.shape),
            ));
        }
        Ok(())
    };
    let bt = spec.batch;
    let [a0, a1] = spec.a_shape();
    let [b0, b1] = spec.b_shape();
    match spec.a_view {
        Some(v) => reach("A", a, v, a0, a1)?,
        None => want("A", a, &[bt, a0, a1])?,
    }
    match spec.b_view {
        Some(v) => reach("B", b, v, b0, b1)?,
        None => want("B", b, &[spec.b_len() / (b0 * b1), b0, b1])?,
    }
    match spec.c_view {
        Some(v) if v.col != 1 => {
            return Err(Error::shape(
                op,
                format!("C view {v:?} must have col 1 (rows of C are written contiguous)"),
            ))
        }
        Some(v) => reach("C", c, v, spec.m, spec.n)?,
        None => want("C", c, &[bt, spec.m, spec.n])?,
    }
    match (spec.bias, bias) {
        (true, Some(t)) => want("bias", t, &[spec.n]),
        (false, None) => Ok(()),
        _ => Err(Error::shape(op, "bias tensor given iff spec.bias")),
    }
}

/// Build the dispatches of `c = op(a) · op(b) (+ bias) (relu)` with the adapter's kernel
/// (one, or one per window block).
pub fn matmul(
    gpu: &Gpu,
    spec: &MatmulSpec,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    let kernel =
        matmul_candidates(gpu, spec)
            .into_iter()
            .next()
            .unwrap_or(MatmulKernel::RegisterTile(Tiles {
                wg: 64,
                tm: 4,
                tn: 4,
            }));
    matmul_with(gpu, spec, kernel, a, b, bias, c)
}

/// Every kernel (with its tiles and splits) that can run `spec` on `gpu` under
/// [`Gpu::family`], the default first: what the lowering times to keep the fastest.
/// A product with a strided view (see [`Strided`]) gets every kernel but the window one.
/// gpu: tiled configurations (split-K first where M x N is small and K large), then the
/// register tiles; window: window, subgroup, register tiles; subgroup: subgroup, register
/// tiles; portable: register tiles. The window kernel declines batches.
pub fn matmul_candidates(gpu: &Gpu, spec: &MatmulSpec) -> Vec<MatmulKernel> {
    let register = MatmulKernel::RegisterTile(Tiles {
        wg: 64,
        tm: 4,
        tn: 4,
    });
    let single = spec.batch == 1;
    let subgroup = MatmulKernel::Subgroup { wg: 64 };
    let mut out = vec![];
    match gpu.family() {
        Family::Gpu => {
            out.extend(tiled_candidates(gpu, spec));
            out.push(register);
            if gpu.subgroups() {
                out.push(subgroup);
            }
        }
        Family::Window => {
            if single {
                out.push(MatmulKernel::Window { wg: 64 });
            }
            out.extend([subgroup, register]);
            out.extend(tiled_candidates(gpu, spec).into_iter().take(1));
        }
        Family::Subgroup => {
            out.extend([subgroup, register]);
            out.extend(tiled_candidates(gpu, spec).into_iter().take(1));
        }
        Family::Portable => out.push(register),
    }
    // Strided views: every kernel but the window one (whose windows are contiguous).
    out.retain(|k| !spec.viewed() || !matches!(k, MatmulKernel::Window { .. }));
    out.retain(|k| match k {
        MatmulKernel::Tiled(t) => t.check(gpu, "matmul").is_ok(),
        MatmulKernel::RegisterTile(_) | MatmulKernel::Subgroup { .. } => spec.k <= LOOP_BUDGET,
        MatmulKernel::Window { .. } => true,
    });
    out
}

/// Tiled configurations for `spec`, the default first: 128 x 128 blocks of 8 x 8 for big
/// products, 64 x 64 of 4 x 4 otherwise, split-K on 32 x 32 blocks when fewer than 64
/// blocks of 64 x 64 would run and K >= 1024 (Dense1 of the seed CNN: 128 x 128 x 5408).
fn tiled_candidates(gpu: &Gpu, spec: &MatmulSpec) -> Vec<MatmulKernel> {
    let mid = TileConfig::new(64, 64, 16, 4, 4);
    let big = TileConfig::new(128, 128, 8, 8, 8);
    let small = TileConfig::new(32, 32, 16, 4, 4);
    let blocks = |t: &TileConfig| {
        spec.batch * spec.m.div_ceil(t.bm as usize) * spec.n.div_ceil(t.bn as usize)
    };
    // Splits that bring the 32 x 32 grid to ~256 workgroups, K per split at least 256.
    let splits = (256 / blocks(&small).max(1))
        .min(spec.k / 256)
        .clamp(1, MAX_SPLITS as usize) as u32;
    let split = TileConfig { splits, ..small };
    let mut out = if blocks(&mid) < 64 && spec.k >= 1024 && splits > 1 {
        vec![split, small, mid]
    } else if spec.m >= 512 && spec.n >= 512 {
        vec![big, mid]
    } else {
        vec![mid, small]
    };
    if gpu.limits.max_compute_workgroup_storage_size < TILED_MIN_WORKGROUP_BYTES {
        out.clear();
    }
    out.into_iter().map(MatmulKernel::Tiled).collect()
}

pub fn matmul_with(
    gpu: &Gpu,
    spec: &MatmulSpec,
    kernel: MatmulKernel,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    check(spec, a, b, bias, c)?;
    if spec.viewed() && matches!(kernel, MatmulKernel::Window { .. }) {
        return Err(Error::usage(
            "matmul kernel",
            format!("{kernel:?} takes contiguous operands only; use Tiled, Subgroup or RegisterTile for the strided views of {spec:?}"),
        ));
    }
    if let MatmulKernel::Tiled(t) = kernel {
        return matmul_tiled(gpu, spec, t, a, b, bias, c);
    }
    check_kernel(gpu, spec, kernel)?;
    let kernel = match kernel {
        MatmulKernel::Window { wg } => match windows_for(gpu, spec, a, b) {
            Some(blocks) => return matmul_windows(gpu, spec, wg, &blocks, a, b, bias, c),
            None => MatmulKernel::Subgroup { wg },
        },
        k => k,
    };
    if spec.k > LOOP_BUDGET {
        return Err(Error::Limit {
            op: "matmul".into(),
            what: "contracted dimension K (loop iterations per invocation)".into(),
            requested: spec.k as u64,
            limit: LOOP_BUDGET as u64,
            hint: "use a narrower layer".into(),
        });
    }
    let (shader, entry, params, workgroups, constants) = match kernel {
        MatmulKernel::RegisterTile(t) => register_tile_call(spec, t),
        MatmulKernel::Tiled(_) => unreachable!("handled above"),
        MatmulKernel::Subgroup { wg } | MatmulKernel::Window { wg } => subgroup_call(spec, wg),
    };
    // Any buffer stands in for an absent bias; the kernel does not read it.
    let bias = bias.unwrap_or(gpu.dummy());
    Ok(vec![dispatch(
        gpu,
        &KernelCall {
            shader,
            entry,
            params: &params,
            bindings: &[
                (a, Access::Read),
                (b, Access::Read),
                (bias, Access::Read),
                (c, Access::ReadWrite),
            ],
            workgroups,
            constants: &constants,
        },
    )?])
}

/// [`matmul_with`] on the tiled kernel (matmul_tiled.wgsl), operands addressed by strides.
fn matmul_tiled(
    gpu: &Gpu,
    spec: &MatmulSpec,
    t: TileConfig,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    let ([a_m, a_k], [b_k, b_n]) = spec.op_strides();
    let (av, bv, cv) = (spec.a_strides(), spec.b_strides(), spec.c_strides());
    // Stage each operand along its contiguous dimension (the transpose flag breaks a tie,
    // so contiguous operands load as they always did).
    let a_m_fast = a_m < a_k || (a_m == a_k && spec.transpose_a);
    let b_k_fast = b_k < b_n || (b_k == b_n && spec.transpose_b);
    let u = |v: usize| v as u32;
    let p = TiledParams {
        m: u(spec.m),
        n: u(spec.n),
        k: u(spec.k),
        flags: (a_m_fast as u32 * TRANSPOSE_A) | (b_k_fast as u32 * TRANSPOSE_B) | epilogue(spec),
        batch: u(spec.batch),
        a_base: u(av.offset),
        a_m: u(a_m),
        a_k: u(a_k),
        a_batch: u(av.outer),
        a_split: u(av.split),
        a_inner: u(av.inner),
        b_base: u(bv.offset),
        b_k: u(b_k),
        b_n: u(b_n),
        b_batch: u(bv.outer),
        b_split: u(bv.split),
        b_inner: u(bv.inner),
        c_base: u(cv.offset),
        c_m: u(cv.row),
        c_batch: u(cv.outer),
        c_split: u(cv.split),
        c_inner: u(cv.inner),
        ..Default::default()
    };
    tiled(gpu, "matmul", t, Mode::Matmul, p, a, b, bias, c)
}

/// The untiled kernels: single products only (RegisterTile aside), tile sizes in range,
/// subgroups of at least 8 for the subgroup and window kernels.
fn check_kernel(gpu: &Gpu, spec: &MatmulSpec, kernel: MatmulKernel) -> Result<()> {
    if spec.batch > 1 && matches!(kernel, MatmulKernel::Window { .. }) {
        return Err(Error::usage(
            "matmul kernel",
            format!(
                "{kernel:?} runs single products only; use Subgroup, Tiled or RegisterTile for batch {}",
                spec.batch
            ),
        ));
    }
    if spec.batch > gpu.limits.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Limit {
            op: "matmul".into(),
            what: "batch (workgroups along z)".into(),
            requested: spec.batch as u64,
            limit: gpu.limits.max_compute_workgroups_per_dimension as u64,
            hint: "split the batch".into(),
        });
    }
    match kernel {
        MatmulKernel::Tiled(_) => {}
        MatmulKernel::RegisterTile(t) => {
            if t.tm == 0 || t.tn == 0 || t.tm > Tiles::MAX_TM || t.tn > Tiles::MAX_TN {
                return Err(Error::usage(
                    "tiles",
                    format!("{t:?}: TM must be 1..=8, TN 1..=4"),
                ));
            }
        }
        MatmulKernel::Subgroup { wg } | MatmulKernel::Window { wg } => {
            if !gpu.subgroups() || wg % 8 != 0 {
                return Err(Error::usage(
                    "matmul kernel",
                    "the subgroup matmuls need subgroups of at least 8 and WG a multiple of 8",
                ));
            }
        }
    }
    Ok(())
}

/// A single-dispatch kernel's shader, entry, params bytes, grid and override constants.
type DirectCall = (
    Shader,
    &'static str,
    Vec<u8>,
    [u32; 3],
    Vec<(&'static str, f64)>,
);

/// Flag bits of the fused epilogue (bias, ReLU).
fn epilogue(spec: &MatmulSpec) -> u32 {
    (if spec.bias { BIAS } else { 0 }) | if spec.relu { RELU } else { 0 }
}

/// matmul.wgsl: register tiles of TM x TN per invocation, operands addressed by strides.
fn register_tile_call(spec: &MatmulSpec, t: Tiles) -> DirectCall {
    let (m, n, k) = (spec.m as u32, spec.n as u32, spec.k as u32);
    let ([a_m, a_k], [b_k, b_n]) = spec.op_strides();
    let (a, b, c) = (spec.a_strides(), spec.b_strides(), spec.c_strides());
    let u = |v: usize| v as u32;
    let params = Params {
        m,
        n,
        k,
        flags: epilogue(spec),
        a_base: u(a.offset),
        a_m: u(a_m),
        a_k: u(a_k),
        a_batch: u(a.outer),
        a_split: u(a.split),
        a_inner: u(a.inner),
        b_base: u(b.offset),
        b_k: u(b_k),
        b_n: u(b_n),
        b_batch: u(b.outer),
        b_split: u(b.split),
        b_inner: u(b.inner),
        c_base: u(c.offset),
        c_m: u(c.row),
        c_batch: u(c.outer),
        c_split: u(c.split),
        c_inner: u(c.inner),
        _pad: [0; 3],
    };
    (
        Shader::Matmul,
        "matmul",
        bytemuck::bytes_of(&params).to_vec(),
        [
            spec.n.div_ceil((t.wg * t.tn) as usize) as u32,
            spec.m.div_ceil(t.tm as usize) as u32,
            spec.batch as u32,
        ],
        vec![
            ("WG", t.wg as f64),
            ("TM", t.tm as f64),
            ("TN", t.tn as f64),
        ],
    )
}

/// matmul_subgroup.wgsl on one block: the whole product, operands addressed by strides.
fn subgroup_call(spec: &MatmulSpec, wg: u32) -> DirectCall {
    let (m, n, k) = (spec.m as u32, spec.n as u32, spec.k as u32);
    let ([a_m, a_k], [b_k, b_n]) = spec.op_strides();
    let (a, b, c) = (spec.a_strides(), spec.b_strides(), spec.c_strides());
    let u = |v: usize| v as u32;
    let params = BlockParams {
        m,
        n,
        k,
        flags: epilogue(spec),
        a_base: u(a.offset),
        a_m: u(a_m),
        a_k: u(a_k),
        b_base: u(b.offset),
        b_k: u(b_k),
        b_n: u(b_n),
        c_base: u(c.offset),
        c_m: u(c.row),
        a_batch: u(a.outer),
        b_batch: u(b.outer),
        c_batch: u(c.outer),
        a_split: u(a.split),
        a_inner: u(a.inner),
        b_split: u(b.split),
        b_inner: u(b.inner),
        c_split: u(c.split),
        c_inner: u(c.inner),
        ..Default::default()
    };
    let [x, y, _] = subgroup_grid(spec.m, spec.n, wg);
    (
        Shader::MatmulSubgroup,
        "matmul_subgroup",
        bytemuck::bytes_of(&params).to_vec(),
        [x, y, spec.batch as u32],
        vec![("WG", wg as f64)],
    )
}

/// Workgroups of matmul_subgroup.wgsl for an M x N block: 32 rows by 2 * WG columns each.
fn subgroup_grid(m: usize, n: usize, wg: u32) -> [u32; 3] {
    [n.div_ceil(2 * wg as usize) as u32, m.div_ceil(32) as u32, 1]
}

/// CPU reference of [`matmul`], accumulating in f64: `[batch, M, N]` contiguous (whatever
/// `spec.c_view`; operands read through their views).
pub fn matmul_ref(spec: &MatmulSpec, a: &[f64], b: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let (sa, sb) = (spec.a_strides(), spec.b_strides());
    let mut c = vec![0.0; spec.batch * m * n];
    for bi in 0..spec.batch {
        let op_a = |i: usize, kk: usize| {
            if spec.transpose_a {
                a[sa.at(bi, kk, i)]
            } else {
                a[sa.at(bi, i, kk)]
            }
        };
        let op_b = |kk: usize, j: usize| {
            if spec.transpose_b {
                b[sb.at(bi, j, kk)]
            } else {
                b[sb.at(bi, kk, j)]
            }
        };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for kk in 0..k {
                    acc += op_a(i, kk) * op_b(kk, j);
                }
                if let Some(bias) = bias {
                    acc += bias[j];
                }
                if spec.relu {
                    acc = acc.max(0.0);
                }
                c[(bi * m + i) * n + j] = acc;
            }
        }
    }
    c
}
