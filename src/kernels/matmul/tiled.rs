//! The tiled GEMM of shaders/matmul_tiled.wgsl (workgroup-memory block tiles, register
//! tiles, split-K with a deterministic reduce pass), shared by the batched matmul and the
//! implicit-GEMM convolutions.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Access, Gpu};
use crate::kernels::{dispatch, grid_1d, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Workgroup memory the smallest tiled configuration needs (64 x 64 blocks, BK 16, padded):
/// below this an adapter cannot run the gpu family.
pub const TILED_MIN_WORKGROUP_BYTES: u32 = 2 * 16 * 65 * 4;

/// Most K splits a product may be cut into (the reduce pass loops over them).
pub const MAX_SPLITS: u32 = 64;

/// Block and register tile of the tiled GEMM, and its split-K factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Rows and columns of C per workgroup (<= 128), K per staged step (<= 32).
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    /// Rows and columns of C per invocation (1..=8, dividing bm and bn).
    pub tm: u32,
    pub tn: u32,
    /// K splits (1 = none): each writes partial sums, a second pass adds them in order.
    pub splits: u32,
}

impl TileConfig {
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Self {
        TileConfig {
            bm,
            bn,
            bk,
            tm,
            tn,
            splits: 1,
        }
    }

    pub fn workgroup_size(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }

    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm + 1 + self.bn + 1)
    }

    /// Loop iterations one invocation runs per staged K step, counting every loop as if the
    /// driver did not unroll it (llvmpipe's budget, see [`LOOP_BUDGET`]).
    fn iterations_per_step(&self) -> u32 {
        let wg = self.workgroup_size();
        self.bk * (self.tm + self.tn + self.tm * self.tn + self.tm)
            + (self.bm * self.bk).div_ceil(wg)
            + (self.bn * self.bk).div_ceil(wg)
            + 1
    }

    /// Most K one invocation may sum on `gpu`: unbounded on GPUs, [`LOOP_BUDGET`] worth of
    /// loop iterations on CPU adapters (llvmpipe ends longer loops).
    pub fn max_k_chunk(&self, gpu: &Gpu) -> usize {
        if gpu.is_cpu() {
            (LOOP_BUDGET as u32 / self.iterations_per_step()).max(1) as usize * self.bk as usize
        } else {
            usize::MAX
        }
    }

    /// Err naming the problem unless this configuration is well formed and fits `gpu`.
    pub fn check(&self, gpu: &Gpu, op: &str) -> Result<()> {
        let t = self;
        let ok = (1..=8).contains(&t.tm)
            && (1..=8).contains(&t.tn)
            && (1..=128).contains(&t.bm)
            && (1..=128).contains(&t.bn)
            && (1..=32).contains(&t.bk)
            && t.bm.is_multiple_of(t.tm)
            && t.bn.is_multiple_of(t.tn)
            && (1..=MAX_SPLITS).contains(&t.splits);
        if !ok {
            return Err(Error::usage(
                op,
                format!("{t:?}: need TM, TN in 1..=8 dividing BM, BN <= 128, BK <= 32, splits 1..={MAX_SPLITS}"),
            ));
        }
        let l = &gpu.limits;
        let wg = t.workgroup_size();
        if wg > l.max_compute_invocations_per_workgroup || wg > l.max_compute_workgroup_size_x {
            return Err(Error::Limit {
                op: op.into(),
                what: format!("invocations per workgroup of {t:?}"),
                requested: wg as u64,
                limit: l.max_compute_invocations_per_workgroup as u64,
                hint: "use smaller blocks or larger register tiles".into(),
            });
        }
        if t.workgroup_bytes() > l.max_compute_workgroup_storage_size {
            return Err(Error::Limit {
                op: op.into(),
                what: format!("workgroup memory of {t:?}"),
                requested: t.workgroup_bytes() as u64,
                limit: l.max_compute_workgroup_storage_size as u64,
                hint: "use smaller blocks or a smaller BK".into(),
            });
        }
        Ok(())
    }
}

/// Params of matmul_tiled.wgsl (see its header): shapes, split-K, MODE 0's operand strides
/// with their two-level batch (see [`super::Strided`]; a split of 0 is one level) and the
/// conv modes' geometry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct TiledParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub batch: u32,
    pub splits: u32,
    pub k_chunk: u32,
    /// Elements between two splits' partial sums (0: not split; set by [`tiled`], or the
    /// conv dweight's part rows).
    pub c_part: u32,
    pub a_batch: u32,
    pub b_batch: u32,
    pub c_batch: u32,
    pub a_base: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub stride: u32,
    pub b_base: u32,
    pub a_m: u32,
    pub a_k: u32,
    pub a_split: u32,
    pub a_inner: u32,
    pub b_k: u32,
    pub b_n: u32,
    pub b_split: u32,
    pub b_inner: u32,
    pub c_base: u32,
    pub c_m: u32,
    pub c_split: u32,
    pub c_inner: u32,
}

/// Load order flags: A staged m-fast (its m stride the smaller), B staged k-fast.
pub(crate) const TRANSPOSE_A: u32 = 1;
pub(crate) const TRANSPOSE_B: u32 = 2;
pub(crate) const BIAS_ROW: u32 = 16;
/// Epilogue flags (bias per column, ReLU, bias per row): applied by the reduce pass when
/// the product is split.
const EPILOGUE: u32 = 4 | 8 | BIAS_ROW;

/// What the tiles compute (the shader's MODE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Matmul = 0,
    ConvForward = 1,
    ConvBackwardInput = 2,
    /// Splits are batch chunks; the output is already the partial rows the caller reduces.
    ConvBackwardWeight = 3,
}

/// The dispatches of one tiled product: `p` holds the shapes (M, N, K, batch, conv
/// geometry) and flags; `k_chunk` and the splits come from `t` (at least as many splits as
/// the adapter's loop budget needs, unless `mode` fixes them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn tiled(
    gpu: &Gpu,
    op: &str,
    t: TileConfig,
    mode: Mode,
    mut p: TiledParams,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<Vec<Dispatch>> {
    t.check(gpu, op)?;
    let (m, n) = (p.m as usize, p.n as usize);
    plan_splits(gpu, op, t, mode, &mut p)?;
    let splits = p.splits as usize;
    let batch = p.batch as usize;
    let z = if mode == Mode::ConvBackwardWeight {
        splits
    } else {
        batch * splits
    };
    let workgroups = [
        n.div_ceil(t.bn as usize) as u32,
        m.div_ceil(t.bm as usize) as u32,
        z as u32,
    ];
    let max_wg = gpu.limits.max_compute_workgroups_per_dimension as usize;
    if z > max_wg {
        return Err(Error::Limit {
            op: op.into(),
            what: "batch x splits (workgroups along z)".into(),
            requested: z as u64,
            limit: max_wg as u64,
            hint: "use a smaller batch".into(),
        });
    }
    let constants = tile_constants(t, mode, &p);
    let bias_t = bias.unwrap_or(gpu.dummy());
    let split_out = splits > 1 && mode != Mode::ConvBackwardWeight;
    let partials;
    let out = if split_out {
        let total = batch * m * n;
        partials = Tensor::zeros(gpu, "split-K partial sums", &[splits * total])?;
        p.c_part = total as u32;
        &partials
    } else {
        c
    };
    let mut tiles_p = p;
    if split_out {
        tiles_p.flags &= !EPILOGUE;
    }
    let mut d = vec![dispatch(
        gpu,
        &KernelCall {
            shader: Shader::MatmulTiled,
            entry: "matmul_tiled",
            params: bytemuck::bytes_of(&tiles_p),
            bindings: &[
                (a, Access::Read),
                (b, Access::Read),
                (bias_t, Access::Read),
                (out, Access::ReadWrite),
            ],
            workgroups,
            constants: &constants,
        },
    )?];
    if split_out {
        d.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::MatmulTiled,
                entry: "matmul_split_reduce",
                params: bytemuck::bytes_of(&p),
                bindings: &[
                    (out, Access::Read),
                    (gpu.dummy(), Access::Read),
                    (bias_t, Access::Read),
                    (c, Access::ReadWrite),
                ],
                workgroups: grid_1d(gpu, "matmul_split_reduce", batch * m * n)?,
                constants: &[],
            },
        )?);
    }
    Ok(d)
}

/// Sets `p.splits` and `p.k_chunk`: K per split a multiple of BK within the adapter's loop
/// budget (at least `t.splits` splits), or, for the conv dweight, checks the caller's chunk.
fn plan_splits(gpu: &Gpu, op: &str, t: TileConfig, mode: Mode, p: &mut TiledParams) -> Result<()> {
    let k = p.k as usize;
    let budget = t.max_k_chunk(gpu);
    if mode == Mode::ConvBackwardWeight {
        if p.k_chunk as usize > budget {
            return Err(Error::Limit {
                op: op.into(),
                what: "K per batch chunk (loop iterations per invocation)".into(),
                requested: p.k_chunk as u64,
                limit: budget as u64,
                hint: "use the direct kernel for this layer".into(),
            });
        }
    } else {
        // K per split, a multiple of BK, within the loop budget.
        let bk = t.bk as usize;
        let min_splits = k.div_ceil(budget.max(bk));
        let splits = (t.splits as usize).max(min_splits).min(k.div_ceil(bk));
        let k_chunk = k.div_ceil(splits).next_multiple_of(bk);
        let splits = k.div_ceil(k_chunk);
        if splits > MAX_SPLITS as usize {
            return Err(Error::Limit {
                op: op.into(),
                what: "K splits".into(),
                requested: splits as u64,
                limit: MAX_SPLITS as u64,
                hint: "the contracted dimension is too long for this adapter's loop budget".into(),
            });
        }
        p.splits = splits as u32;
        p.k_chunk = k_chunk as u32;
    }
    Ok(())
}

/// The override constants of matmul_tiled.wgsl for `t` on the product `p` (FIT: no edge
/// guards needed).
fn tile_constants(t: TileConfig, mode: Mode, p: &TiledParams) -> [(&'static str, f64); 8] {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let fit = mode == Mode::Matmul
        && m % t.bm as usize == 0
        && n % t.bn as usize == 0
        && k % t.bk as usize == 0
        && p.k_chunk.is_multiple_of(t.bk);
    [
        ("BM", t.bm as f64),
        ("BN", t.bn as f64),
        ("BK", t.bk as f64),
        ("TM", t.tm as f64),
        ("TN", t.tn as f64),
        ("WG", t.workgroup_size() as f64),
        ("FIT", fit as u32 as f64),
        ("MODE", mode as u32 as f64),
    ]
}
