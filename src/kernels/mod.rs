//! The WGSL kernel library. Each family is one plain WGSL file in `shaders/`, loaded with
//! `include_str!`; its Rust wrapper (which validates shapes and builds a [`Dispatch`]) and
//! its CPU reference (f64 accumulation) sit together in the module of the same name.

use std::sync::Arc;

use crate::gpu::{Access, Gpu, Pipeline};
use crate::tensor::Tensor;
use crate::{Error, Result};

pub use family::Family;

pub mod activation;
pub mod batchnorm;
pub mod conv2d;
pub mod copy;
pub mod elementwise;
pub mod embedding;
pub mod family;
pub mod gather;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod reduce_axis;
pub mod roof;
pub mod sample;
pub mod softmax;
pub mod transpose;

/// Most loop iterations one invocation may run, all loops together. llvmpipe (lavapipe)
/// silently ends an invocation's loops after 65,535 iterations in all, so kernels split
/// longer work (more invocations, partial sums) and wrappers refuse what they cannot split.
pub const LOOP_BUDGET: usize = 32_768;

/// One WGSL file of the kernel library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Gather,
    Transpose,
    Matmul,
    MatmulTiled,
    MatmulSubgroup,
    Conv2d,
    Conv2dSubgroup,
    Pool,
    Activation,
    Loss,
    Reduce,
    Optim,
    Softmax,
    LayerNorm,
    Embedding,
    Roof,
    Elementwise,
    Copy,
    ReduceAxis,
    Random,
    Sample,
    BatchNorm,
}

impl Shader {
    pub const ALL: [Shader; 22] = [
        Shader::Gather,
        Shader::Transpose,
        Shader::Matmul,
        Shader::MatmulTiled,
        Shader::MatmulSubgroup,
        Shader::Conv2d,
        Shader::Conv2dSubgroup,
        Shader::Pool,
        Shader::Activation,
        Shader::Loss,
        Shader::Reduce,
        Shader::Optim,
        Shader::Softmax,
        Shader::LayerNorm,
        Shader::Embedding,
        Shader::Roof,
        Shader::Elementwise,
        Shader::Copy,
        Shader::ReduceAxis,
        Shader::Random,
        Shader::Sample,
        Shader::BatchNorm,
    ];

    pub fn file(self) -> &'static str {
        match self {
            Shader::Gather => "shaders/gather.wgsl",
            Shader::Transpose => "shaders/transpose.wgsl",
            Shader::Matmul => "shaders/matmul.wgsl",
            Shader::MatmulTiled => "shaders/matmul_tiled.wgsl",
            Shader::MatmulSubgroup => "shaders/matmul_subgroup.wgsl",
            Shader::Conv2d => "shaders/conv2d.wgsl",
            Shader::Conv2dSubgroup => "shaders/conv2d_subgroup.wgsl",
            Shader::Pool => "shaders/pool.wgsl",
            Shader::Activation => "shaders/activation.wgsl",
            Shader::Loss => "shaders/loss.wgsl",
            Shader::Reduce => "shaders/reduce.wgsl",
            Shader::Optim => "shaders/optim.wgsl",
            Shader::Softmax => "shaders/softmax.wgsl",
            Shader::LayerNorm => "shaders/layernorm.wgsl",
            Shader::Embedding => "shaders/embedding.wgsl",
            Shader::Roof => "shaders/roof.wgsl",
            Shader::Elementwise => "shaders/elementwise.wgsl",
            Shader::Copy => "shaders/copy.wgsl",
            Shader::ReduceAxis => "shaders/reduce_axis.wgsl",
            Shader::Random => "shaders/random.wgsl",
            Shader::Sample => "shaders/sample.wgsl",
            Shader::BatchNorm => "shaders/batchnorm.wgsl",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Shader::Gather => include_str!("../../shaders/gather.wgsl"),
            Shader::Transpose => include_str!("../../shaders/transpose.wgsl"),
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::MatmulTiled => include_str!("../../shaders/matmul_tiled.wgsl"),
            Shader::MatmulSubgroup => include_str!("../../shaders/matmul_subgroup.wgsl"),
            Shader::Conv2d => include_str!("../../shaders/conv2d.wgsl"),
            Shader::Conv2dSubgroup => include_str!("../../shaders/conv2d_subgroup.wgsl"),
            Shader::Pool => include_str!("../../shaders/pool.wgsl"),
            Shader::Activation => include_str!("../../shaders/activation.wgsl"),
            Shader::Loss => include_str!("../../shaders/loss.wgsl"),
            Shader::Reduce => include_str!("../../shaders/reduce.wgsl"),
            Shader::Optim => include_str!("../../shaders/optim.wgsl"),
            Shader::Softmax => include_str!("../../shaders/softmax.wgsl"),
            Shader::LayerNorm => include_str!("../../shaders/layernorm.wgsl"),
            Shader::Embedding => include_str!("../../shaders/embedding.wgsl"),
            Shader::Roof => include_str!("../../shaders/roof.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Shader::Copy => include_str!("../../shaders/copy.wgsl"),
            Shader::ReduceAxis => include_str!("../../shaders/reduce_axis.wgsl"),
            Shader::Random => include_str!("../../shaders/random.wgsl"),
            Shader::Sample => include_str!("../../shaders/sample.wgsl"),
            Shader::BatchNorm => include_str!("../../shaders/batchnorm.wgsl"),
        }
    }

    /// Needs the adapter's subgroup operations (see [`Gpu::subgroups`]).
    pub fn uses_subgroups(self) -> bool {
        matches!(self, Shader::MatmulSubgroup | Shader::Conv2dSubgroup)
    }

    /// Every entry point of the file, for the portability tests.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            Shader::Gather => &["gather_batch", "gather_rows_f32"],
            Shader::Transpose => &["transpose"],
            Shader::Matmul => &["matmul"],
            Shader::MatmulTiled => &["matmul_tiled", "matmul_split_reduce"],
            Shader::MatmulSubgroup => &[
                "matmul_subgroup",
                "matmul_window",
                "conv2d_window",
                "conv2d_window_weight",
            ],
            Shader::Conv2d => &[
                "conv2d_forward",
                "conv2d_backward_input",
                "conv2d_backward_weight",
            ],
            Shader::Conv2dSubgroup => &[
                "conv2d_forward_subgroup",
                "conv2d_relu_pool_subgroup",
                "conv2d_backward_weight_subgroup",
                "conv2d_relu_pool_backward_weight",
            ],
            Shader::Pool => &[
                "max_pool2d_forward",
                "max_pool2d_backward",
                "max_pool2d_backward_cells",
                "avg_pool2d_forward",
                "avg_pool2d_backward",
            ],
            Shader::Activation => &[
                "relu_forward",
                "relu_backward",
                "sigmoid_forward",
                "sigmoid_backward",
            ],
            Shader::Loss => &[
                "softmax_xent_forward",
                "softmax_xent_backward",
                "sigmoid_bce_forward",
                "sigmoid_bce_backward",
                "mse_forward",
                "mse_backward",
            ],
            Shader::Reduce => &[
                "sum_outer_inner",
                "accumulate_metrics",
                "metrics_partial",
                "metrics_combine",
            ],
            Shader::Optim => &["adam", "sgd", "grad_sumsq_partial", "grad_sumsq_final"],
            Shader::Softmax => &[
                "softmax_rows_forward",
                "softmax_rows_backward",
                "token_xent_forward",
                "token_xent_backward",
            ],
            Shader::LayerNorm => &[
                "layer_norm_forward",
                "layer_norm_backward_input",
                "layer_norm_backward_params",
                "layer_norm_sum_blocks",
            ],
            Shader::Embedding => &["embedding_forward", "embedding_sort", "embedding_backward"],
            Shader::Roof => &["peak_fma", "copy_bandwidth"],
            Shader::Elementwise => &[
                "unary",
                "unary_backward",
                "binary",
                "binary_scalar",
                "where_select",
                "scale_shift",
                "fill",
            ],
            Shader::Copy => &["copy_strided"],
            Shader::ReduceAxis => &["reduce_axis"],
            Shader::Random => &[
                "random_uniform",
                "dropout_mask",
                "text_windows",
                "augment_images",
            ],
            Shader::Sample => &["sample_next"],
            Shader::BatchNorm => &[
                "batch_norm_partial",
                "batch_norm_stats",
                "batch_norm_affine",
                "batch_norm_forward",
                "batch_norm_backward_partial",
                "batch_norm_backward_params",
                "batch_norm_backward_input",
                "batch_norm_pool_forward",
                "batch_norm_pool_backward_partial",
                "batch_norm_pool_backward_input",
            ],
        }
    }
}

/// One recorded kernel launch: pipeline, bind group and grid, built once and replayed every
/// step. Its uniform buffer belongs to it; the executor may rewrite it between submits.
pub struct Dispatch {
    pub name: &'static str,
    pipeline: Arc<Pipeline>,
    bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    pub params: wgpu::Buffer,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Everything needed to build a [`Dispatch`].
pub struct KernelCall<'a> {
    pub shader: Shader,
    pub entry: &'static str,
    /// Bytes of the uniform `Params` struct at binding 0.
    pub params: &'a [u8],
    /// Storage bindings 1.. in order.
    pub bindings: &'a [(&'a Tensor, Access)],
    pub workgroups: [u32; 3],
    pub constants: &'a [(&'a str, f64)],
}

pub fn dispatch(gpu: &Gpu, call: &KernelCall<'_>) -> Result<Dispatch> {
    let access: Vec<Access> = call.bindings.iter().map(|(_, a)| *a).collect();
    let windows = access.iter().filter(|a| **a == Access::Window).count();
    let l = &gpu.limits;
    // (what, requested, limit): storage bindings, and uniform ones (params + windows).
    for (what, requested, limit) in [
        (
            "storage buffers per shader stage",
            access.len() - windows,
            l.max_storage_buffers_per_shader_stage,
        ),
        (
            "uniform buffers per shader stage",
            windows + 1,
            l.max_uniform_buffers_per_shader_stage,
        ),
    ] {
        if requested > limit as usize {
            return Err(Error::Limit {
                op: call.entry.to_string(),
                what: what.into(),
                requested: requested as u64,
                limit: limit as u64,
                hint: format!(
                    "{} cannot run this kernel (OpenGL ES 3.1 guarantees only 4 storage buffers); choose another adapter with WGPU_BACKEND or WGPU_ADAPTER_NAME",
                    gpu.describe()
                ),
            });
        }
    }
    let pipeline = gpu.pipeline(call.shader, call.entry, &access, call.constants)?;
    let max_wg = gpu.limits.max_compute_workgroups_per_dimension;
    for (axis, &n) in call.workgroups.iter().enumerate() {
        if n > max_wg {
            return Err(Error::Limit {
                op: call.entry.to_string(),
                what: format!("workgroups along axis {axis}"),
                requested: n as u64,
                limit: max_wg as u64,
                hint: "use a smaller batch size".into(),
            });
        }
    }
    let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(call.entry),
        size: (call.params.len() as u64).max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&params, 0, call.params);
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: params.as_entire_binding(),
    }];
    for (i, (t, _)) in call.bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(t.binding()),
        });
    }
    let (file, entry) = (call.shader.file(), call.entry);
    let error = move |e| Error::Shader {
        file: file.into(),
        entry: entry.into(),
        msg: format!("bind group: {e}"),
    };
    let bind_group = gpu.scoped(error, || {
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(call.entry),
            layout: &pipeline.layout,
            entries: &entries,
        })
    })?;
    Ok(Dispatch {
        name: call.entry,
        pipeline,
        bind_group,
        workgroups: call.workgroups,
        params,
    })
}

/// Invocations per workgroup of the 1-D kernels (all but matmul).
pub const WG_1D: usize = 256;

/// Grid for `n` invocations of [`WG_1D`]-wide workgroups, folded onto y when x would pass
/// the per-dimension limit. Kernels recover i = gid.x + gid.y * num_workgroups.x * 256.
pub fn grid_1d(gpu: &Gpu, op: &str, n: usize) -> Result<[u32; 3]> {
    let l = &gpu.limits;
    let max_wg = l
        .max_compute_invocations_per_workgroup
        .min(l.max_compute_workgroup_size_x);
    if WG_1D > max_wg as usize {
        return Err(Error::Limit {
            op: op.to_string(),
            what: "invocations per workgroup".into(),
            requested: WG_1D as u64,
            limit: max_wg as u64,
            hint: format!(
                "{} cannot run the {WG_1D}-wide kernels (OpenGL ES 3.1 guarantees only 128); choose another adapter with WGPU_BACKEND or WGPU_ADAPTER_NAME",
                gpu.describe()
            ),
        });
    }
    let groups = n.div_ceil(WG_1D).max(1) as u64;
    let max = gpu.limits.max_compute_workgroups_per_dimension as u64;
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max || n as u64 > u32::MAX as u64 {
        return Err(Error::Limit {
            op: op.to_string(),
            what: "invocations".into(),
            requested: n as u64,
            limit: (max * max * WG_1D as u64).min(u32::MAX as u64),
            hint: "use a smaller batch size".into(),
        });
    }
    Ok([x as u32, y as u32, 1])
}

/// [`run`] for dispatches held by value (a matmul may be several).
pub fn run_all(gpu: &Gpu, dispatches: &[Dispatch]) -> Result<()> {
    run(gpu, &dispatches.iter().collect::<Vec<_>>())
}

/// Record `dispatches` into one compute pass, submit, and wait (tests and one-off work).
pub fn run(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in dispatches {
            d.record(&mut pass);
        }
    }
    let index = gpu.queue.submit([encoder.finish()]);
    gpu.wait("run", Some(index))
}

/// Check that `t` has `shape`, naming the op and the operand on failure.
pub fn expect_shape(op: &str, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape != shape {
        return Err(Error::shape(
            op,
            format!("{name} has shape {:?}, expected {:?}", t.shape, shape),
        ));
    }
    Ok(())
}

/// f32 -> f64 for the CPU references.
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
