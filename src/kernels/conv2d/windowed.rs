//! The conv2d kernels that read uniform windows (shaders/conv2d_subgroup.wgsl with
//! WINDOW), for CPU adapters where a uniform load costs a tenth of a storage load: the
//! forward, and a conv + ReLU + max pool fused forward and dweight that never form the conv
//! output or its gradient. Their references compose the conv and pool references.

use super::{conv2d_backward_bias_ref, conv2d_backward_weight_ref, conv2d_forward_ref};
use super::{params, Conv2dSpec, Params, FORWARD_SUBGROUP};
use crate::gpu::{Access, Gpu};
use crate::kernels::pool::PoolSpec;
use crate::kernels::{dispatch, expect_shape, Dispatch, KernelCall, Shader, LOOP_BUDGET};
use crate::tensor::{Tensor, WINDOW_BYTES};
use crate::{Error, Result};

/// [`conv2d_forward`](super::conv2d_forward) as the subgroup kernel with WINDOW, reading x, w and bias through
/// uniform windows: one dispatch per run of images that fits one window. None where the
/// adapter has no subgroups or one image, w or bias does not fit a window.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_windowed(
    gpu: &Gpu,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Option<Vec<Dispatch>>> {
    expect_shape("conv2d_forward", "y", y, &s.y_shape())?;
    windowed(gpu, s, x, weight, bias, relu, y, None)
}

/// y = max_pool2d(relu(conv2d(x, w) + bias)) in one pass that never writes the conv output:
/// y and argmax `[B,CO,PH,PW]` as [`crate::kernels::pool::max_pool2d_forward`] would leave them on the
/// conv output (argmax indexes its OH x OW plane). Window kernel only: None where
/// [`conv2d_forward_windowed`] would be.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_relu_pool_windowed(
    gpu: &Gpu,
    s: &Conv2dSpec,
    pool: &PoolSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    y: &Tensor,
    argmax: &Tensor,
) -> Result<Option<Vec<Dispatch>>> {
    let op = "conv2d_relu_pool";
    let [b, co, oh, ow] = s.y_shape();
    if pool.x_shape() != [b, co, oh, ow] || pool.pool == 0 || pool.stride == 0 {
        return Err(Error::shape(
            op,
            format!("{pool:?} does not pool the conv output {:?}", s.y_shape()),
        ));
    }
    expect_shape(op, "y", y, &pool.y_shape())?;
    expect_shape(op, "argmax", argmax, &pool.y_shape())?;
    windowed(gpu, s, x, weight, Some(bias), true, y, Some((pool, argmax)))
}

#[allow(clippy::too_many_arguments)]
fn windowed(
    gpu: &Gpu,
    s: &Conv2dSpec,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
    pool: Option<(&PoolSpec, &Tensor)>,
) -> Result<Option<Vec<Dispatch>>> {
    s.validate()?;
    // The window kernels are stride-1 kernels.
    if s.stride != 1 {
        return Ok(None);
    }
    let op = "conv2d_forward";
    expect_shape(op, "x", x, &s.x_shape())?;
    expect_shape(op, "weight", weight, &s.w_shape())?;
    if let Some(b) = bias {
        expect_shape(op, "bias", b, &[s.c_out])?;
    }
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    let cap = (WINDOW_BYTES - align) as usize / 4;
    let image = s.c_in * s.h * s.w;
    let per_window = cap / image;
    let w_win = weight.window(0, weight.numel(), align);
    let b_win = match bias {
        Some(b) => b.window(0, s.c_out, align),
        None => Some((gpu.dummy_window().clone(), 0)),
    };
    let (Some((w_win, w_base)), Some((b_win, bias_base))) = (w_win, b_win) else {
        return Ok(None);
    };
    if !gpu.subgroups() || per_window == 0 {
        return Ok(None);
    }
    let (oh, ow) = s.out_hw();
    let (ph, pw) = pool.map_or((oh, ow), |(ps, _)| ps.out_hw());
    let (entry, argmax) = match pool {
        Some((_, arg)) => ("conv2d_relu_pool_subgroup", arg),
        None => (FORWARD_SUBGROUP, gpu.dummy()),
    };
    let mut out = Vec::new();
    for batch0 in (0..s.batch).step_by(per_window) {
        let images = per_window.min(s.batch - batch0);
        let Some((x_win, x_base)) = x.window(batch0 * image, images * image, align) else {
            return Ok(None);
        };
        let p = Params {
            batch: images as u32,
            batch0: batch0 as u32,
            x_base,
            w_base,
            bias_base,
            pool: pool.map_or(0, |(ps, _)| ps.pool as u32),
            stride: pool.map_or(0, |(ps, _)| ps.stride as u32),
            pool_h: ph as u32,
            pool_w: pw as u32,
            ..params(s, bias.is_some() as u32 | (relu as u32) << 1)
        };
        let groups = (images * ph * pw).div_ceil(64);
        if groups > gpu.limits.max_compute_workgroups_per_dimension as usize {
            return Ok(None);
        }
        let mut bindings = vec![
            (gpu.dummy(), Access::Read),
            (gpu.dummy(), Access::Read),
            (gpu.dummy(), Access::Read),
            (y, Access::ReadWrite),
            (&x_win, Access::Window),
            (&w_win, Access::Window),
            (&b_win, Access::Window),
        ];
        if pool.is_some() {
            bindings.push((argmax, Access::ReadWrite));
        }
        out.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::Conv2dSubgroup,
                entry,
                params: bytemuck::bytes_of(&p),
                bindings: &bindings,
                workgroups: [groups as u32, s.c_out.div_ceil(8) as u32, 1],
                constants: &[("WINDOW", 1.0)],
            },
        )?);
    }
    Ok(Some(out))
}

/// How [`conv2d_relu_pool_backward_weight_windowed`] splits the batch: images per dispatch
/// (the x window and the pool-sized windows must each hold them) and position slices per
/// dispatch (so that a dispatch has enough invocations). None when one image does not fit.
pub fn relu_pool_weight_plan(gpu: &Gpu, s: &Conv2dSpec, pool: &PoolSpec) -> Option<(usize, usize)> {
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    let cap = (WINDOW_BYTES - align) as usize / 4;
    let [_, co, ph, pw] = pool.y_shape();
    let images = (cap / (s.c_in * s.h * s.w)).min(cap / (co * ph * pw));
    if images == 0 || !gpu.subgroups() || s.stride != 1 {
        return None;
    }
    // ~512 invocations a dispatch; never more slices than positions.
    let per_slice = co * s.c_in * (s.kh * s.kw).div_ceil(9);
    let positions = images.min(s.batch) * ph * pw;
    let slices = 512usize.div_ceil(per_slice).clamp(1, positions);
    // LOOP_BUDGET: positions per slice.
    let slices = slices.max(positions.div_ceil(LOOP_BUDGET));
    Some((images, slices))
}

/// Partial-sum rows [`conv2d_relu_pool_backward_weight_windowed`] writes.
pub fn relu_pool_weight_rows(gpu: &Gpu, s: &Conv2dSpec, pool: &PoolSpec) -> Option<usize> {
    relu_pool_weight_plan(gpu, s, pool).map(|(images, slices)| s.batch.div_ceil(images) * slices)
}

/// dweight and dbias partial sums of a conv whose ReLU and max pool ran fused
/// ([`conv2d_relu_pool_windowed`]), from the pool's gradient g, output y and argmax
/// `[B,CO,PH,PW]` and the conv input x: part `[rows, CO*CI*KH*KW + CO]` as
/// [`conv2d_backward_weight`](super::conv2d_backward_weight) lays it out (rows from [`relu_pool_weight_rows`]). The conv
/// gradient is never formed, so there is no input gradient: for a first layer. None where
/// the windows do not fit.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_relu_pool_backward_weight_windowed(
    gpu: &Gpu,
    s: &Conv2dSpec,
    pool: &PoolSpec,
    x: &Tensor,
    g: &Tensor,
    y: &Tensor,
    argmax: &Tensor,
    part: &Tensor,
) -> Result<Option<Vec<Dispatch>>> {
    s.validate()?;
    let op = "conv2d_relu_pool_backward_weight";
    expect_shape(op, "x", x, &s.x_shape())?;
    for (name, t) in [("g", g), ("y", y), ("argmax", argmax)] {
        expect_shape(op, name, t, &pool.y_shape())?;
    }
    let Some((images, slices)) = relu_pool_weight_plan(gpu, s, pool) else {
        return Ok(None);
    };
    let rows = s.batch.div_ceil(images) * slices;
    expect_shape(op, "part", part, &[rows, s.part_row()])?;
    let align = gpu.limits.min_uniform_buffer_offset_alignment as u64;
    let [_, co, ph, pw] = pool.y_shape();
    let (image, pooled) = (s.c_in * s.h * s.w, co * ph * pw);
    let per_slice = co * s.c_in * (s.kh * s.kw).div_ceil(9);
    let mut out = Vec::new();
    for (d, batch0) in (0..s.batch).step_by(images).enumerate() {
        let n = images.min(s.batch - batch0);
        let win = |t: &Tensor, per: usize| t.window(batch0 * per, n * per, align);
        let (
            Some((x_win, x_base)),
            Some((g_win, g_base)),
            Some((y_win, y_base)),
            Some((a_win, at_base)),
        ) = (
            win(x, image),
            win(g, pooled),
            win(y, pooled),
            win(argmax, pooled),
        )
        else {
            return Ok(None);
        };
        let p = Params {
            batch: n as u32,
            batch0: batch0 as u32,
            x_base,
            pool: pool.pool as u32,
            stride: pool.stride as u32,
            pool_h: ph as u32,
            pool_w: pw as u32,
            g_base,
            y_base,
            at_base,
            slices: slices as u32,
            part_row0: (d * slices) as u32,
            ..params(s, 0)
        };
        let dummy = gpu.dummy_window();
        out.push(dispatch(
            gpu,
            &KernelCall {
                shader: Shader::Conv2dSubgroup,
                entry: "conv2d_relu_pool_backward_weight",
                params: bytemuck::bytes_of(&p),
                bindings: &[
                    (gpu.dummy(), Access::Read),
                    (gpu.dummy(), Access::Read),
                    (gpu.dummy(), Access::Read),
                    (part, Access::ReadWrite),
                    (&x_win, Access::Window),
                    (dummy, Access::Window),
                    (dummy, Access::Window),
                    // argmax storage of the forward: unused here, so read-only will do.
                    (gpu.dummy(), Access::Read),
                    (&g_win, Access::Window),
                    (&y_win, Access::Window),
                    (&a_win, Access::Window),
                ],
                workgroups: [(per_slice * slices).div_ceil(64) as u32, 1, 1],
                constants: &[("WINDOW", 1.0)],
            },
        )?);
    }
    Ok(Some(out))
}

/// CPU reference of [`conv2d_relu_pool_windowed`]: the conv reference with ReLU, then the
/// pool reference (pooled values and argmax in the conv output plane).
pub fn conv2d_relu_pool_ref(
    s: &Conv2dSpec,
    pool: &PoolSpec,
    x: &[f64],
    weight: &[f64],
    bias: &[f64],
) -> (Vec<f64>, Vec<u32>) {
    let z = conv2d_forward_ref(s, x, weight, Some(bias), true);
    crate::kernels::pool::max_pool2d_forward_ref(pool, &z)
}

/// CPU reference of [`conv2d_relu_pool_backward_weight_windowed`] (summed over the rows):
/// the pool's ReLU backward into the conv output plane, then the conv's dweight and dbias.
pub fn conv2d_relu_pool_backward_weight_ref(
    s: &Conv2dSpec,
    pool: &PoolSpec,
    x: &[f64],
    g: &[f64],
    y: &[f64],
    argmax: &[u32],
) -> (Vec<f64>, Vec<f64>) {
    let dz = crate::kernels::pool::max_pool2d_relu_backward_ref(pool, g, argmax, y);
    (
        conv2d_backward_weight_ref(s, &dz, x),
        conv2d_backward_bias_ref(s, &dz),
    )
}
