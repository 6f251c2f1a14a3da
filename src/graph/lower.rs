//! Lowering: each node of a planned graph becomes the dispatches of the kernel that
//! computes it, reading and writing the tensors the memory plan gave its values. Which
//! kernel family runs (uniform windows, subgroups, portable) is decided here and in
//! tune.rs, never in model code.

use std::collections::HashMap;

use super::ir::*;
use super::plan::{Home, MemoryPlan};
use super::tune::Choices;
use crate::gpu::Gpu;
use crate::kernels::activation::{activation_backward, activation_forward, Activation};
use crate::kernels::conv2d::*;
use crate::kernels::copy::{copy_strided, CopySpec};
use crate::kernels::elementwise::binary;
use crate::kernels::loss::{loss_backward, loss_forward, LossTensors};
use crate::kernels::matmul::{matmul_with, MatmulSpec};
use crate::kernels::pool::*;
use crate::kernels::random::{dropout_mask, RandomSpec};
use crate::kernels::reduce::sum_outer_inner_range;
use crate::kernels::transpose::transpose;
use crate::kernels::Dispatch;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The tensors of a lowered graph: one per (node, value or aux output).
pub struct Tensors {
    t: Vec<Vec<Option<Tensor>>>,
}

impl Tensors {
    /// The tensor of `id`'s value (aliases resolved, in `id`'s own shape).
    pub fn get(&self, g: &Graph, id: Id) -> Result<Tensor> {
        let (s, k) = g.storage_of(id);
        let t = self.t[s.index()][k].as_ref().ok_or_else(|| {
            Error::shape(
                "lower",
                format!("%{} ({:?}) has no tensor", id.0, g.node(id).op),
            )
        })?;
        Ok(t.view(0, &g.node(id).shape))
    }
}

/// Allocate every planned value's tensor: slots, own buffers, caller-owned tensors
/// (`external`) and constants (filled once; only kernels without a scalar form read them).
pub fn allocate(
    gpu: &Gpu,
    g: &Graph,
    mem: &MemoryPlan,
    external: &HashMap<(Id, usize), Tensor>,
) -> Result<Tensors> {
    let slots = mem
        .slot_bytes
        .iter()
        .map(|&b| Tensor::zeros(gpu, "slot", &[(b / 4) as usize]))
        .collect::<Result<Vec<_>>>()?;
    let mut t: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(g.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let mut row = Vec::new();
        for (k, home) in mem.homes[i].iter().enumerate() {
            let shape = if k == 0 {
                &node.shape
            } else {
                &node.aux[k - 1].0
            };
            let label = format!("%{i} {}", node.op.name());
            row.push(match (home, &node.op) {
                (_, op) if k == 0 && op.is_alias() => None,
                (Home::Slot(s), _) => Some(slots[*s].view(0, shape)),
                (Home::Own, _) => Some(Tensor::zeros(gpu, &label, shape)?),
                (Home::External, Op::Const(c)) => Some(Tensor::from_f32(
                    gpu,
                    &label,
                    shape,
                    &vec![*c; numel(shape)],
                )?),
                // An assignment's value is its state's buffer.
                (Home::External, Op::Assign) => {
                    let (s, sk) = g.storage_of(node.inputs[0]);
                    t[s.index()].get(sk).cloned().flatten()
                }
                (Home::External, _) => external.get(&(Id(i as u32), k)).cloned(),
            });
        }
        t.push(row);
    }
    Ok(Tensors { t })
}

/// The dispatches of every live node, in order.
pub fn lower(gpu: &Gpu, g: &Graph, ts: &Tensors, choices: &Choices) -> Result<Vec<Dispatch>> {
    let mut d = Vec::new();
    for id in g.ids() {
        let node = g.node(id);
        if node.op.is_leaf() || node.op.is_alias() {
            continue;
        }
        lower_node(gpu, g, ts, choices, id, &mut d).map_err(|e| match e {
            Error::Shape { op, msg } => Error::Shape {
                op: format!("{op} (lowering %{} {})", id.0, node.op.name()),
                msg,
            },
            e => e,
        })?;
    }
    Ok(d)
}

/// Aux tensor `k` of node `id`.
pub(super) fn aux(g: &Graph, ts: &Tensors, id: Id, k: usize) -> Result<Tensor> {
    let (s, _) = g.storage_of(id);
    ts.t[s.index()][k + 1]
        .clone()
        .ok_or_else(|| Error::shape("lower", format!("%{} has no aux {k}", id.0)))
}

fn kernel_act(u: UnaryOp) -> Option<Activation> {
    match u {
        UnaryOp::Relu => Some(Activation::Relu),
        UnaryOp::Sigmoid => Some(Activation::Sigmoid),
        _ => None,
    }
}

fn lower_node(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    choices: &Choices,
    id: Id,
    d: &mut Vec<Dispatch>,
) -> Result<()> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let y = ts.get(g, id)?;
    match &node.op {
        Op::Copy => {
            let v = x(0)?;
            d.push(copy_strided(gpu, &CopySpec::contiguous(&v.shape), &v, &y)?);
        }
        Op::Assign => {
            let v = x(1)?;
            d.push(copy_strided(gpu, &CopySpec::contiguous(&v.shape), &v, &y)?);
        }
        Op::Dropout { p, salt } => {
            let mask = aux(g, ts, id, 0)?;
            let spec = RandomSpec {
                seed: *salt as u64,
                counter: 0,
            };
            d.push(dropout_mask(gpu, &spec, *p, &mask)?);
            d.push(binary(gpu, BinaryOp::Mul, &x(0)?, &mask, &y)?);
        }
        Op::ConvReluPool { conv, pool } => {
            super::lower_conv::lower_conv_relu_pool(gpu, g, ts, id, *conv, *pool, d)?
        }
        Op::ConvReluPoolBackwardWeight { conv, pool } => {
            super::lower_conv::lower_conv_relu_pool_backward(gpu, g, ts, id, *conv, *pool, d)?
        }
        Op::Loss(kind) => {
            let lt = loss_tensors(g, ts, node.inputs[0], node.inputs[1], aux(g, ts, id, 0)?)?;
            d.push(loss_forward(gpu, *kind, &lt.as_ref(), &y)?);
        }
        Op::LossBackward(kind) => {
            let prob = aux(g, ts, node.inputs[0], 0)?;
            let lt = loss_tensors(g, ts, node.inputs[1], node.inputs[2], prob)?;
            d.push(loss_backward(gpu, *kind, &lt.as_ref(), &y)?);
        }
        Op::Unary(u) if kernel_act(*u).is_some() => {
            d.push(activation_forward(
                gpu,
                kernel_act(*u).unwrap_or(Activation::Relu),
                &x(0)?,
                &y,
            )?);
        }
        Op::UnaryBackward(u) if kernel_act(*u).is_some() => {
            let k = kernel_act(*u).unwrap_or(Activation::Relu);
            d.push(activation_backward(gpu, k, &x(1)?, &x(0)?, &y)?);
        }
        Op::Permute(p) if p == &[1, 0] => d.push(transpose(gpu, &x(0)?, &y)?),
        _ if lower_product(gpu, g, ts, choices, id, d)? => {}
        _ if lower_pool(gpu, g, ts, id, d)? => {}
        _ if super::lower_seq::lower_seq(gpu, g, ts, id, d)? => {}
        _ if super::lower_bn::lower_bn(gpu, g, ts, id, d)? => {}
        _ => super::lower_ew::lower_elementwise(gpu, g, ts, id, d)?,
    }
    Ok(())
}

/// Matmuls (one product, or a group writing its parts of one value) and convolutions, with
/// the kernel `choices` holds for them; false for any other op.
fn lower_product(
    gpu: &Gpu,
    g: &Graph,
    ts: &Tensors,
    choices: &Choices,
    id: Id,
    d: &mut Vec<Dispatch>,
) -> Result<bool> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let y = ts.get(g, id)?;
    // Product `i` of the node: operands 2i and 2i + 1 (and the bias after them).
    let mut product = |i: usize, t: MatMulAttrs| -> Result<()> {
        let spec = product_spec(g, [node.inputs[2 * i], node.inputs[2 * i + 1]], t)?;
        let bias = if t.bias { Some(x(2 * i + 2)?) } else { None };
        let kernel = choices.matmul(gpu, id, &spec);
        let (a, b) = (x(2 * i)?, x(2 * i + 1)?);
        d.extend(matmul_with(gpu, &spec, kernel, &a, &b, bias.as_ref(), &y)?);
        Ok(())
    };
    match &node.op {
        Op::MatMul(t) => product(0, *t)?,
        Op::MatMulGroup(products) => {
            for (i, t) in products.iter().enumerate() {
                product(i, *t)?;
            }
        }
        Op::Conv2d(c) => {
            let s = conv_spec(g, node.inputs[0], node.inputs[1], *c)?;
            let b = if c.bias { Some(x(2)?) } else { None };
            let (xt, wt) = (x(0)?, x(1)?);
            let k = choices.conv(id);
            d.extend(conv_forward(
                gpu,
                k,
                &s,
                [&xt, &wt],
                b.as_ref(),
                c.relu,
                &y,
            )?);
        }
        Op::Conv2dBackwardInput(c) => {
            let s = conv_spec(g, id, node.inputs[1], *c)?;
            let k = choices.conv(id);
            d.extend(conv2d_backward_input_with(gpu, k, &s, &x(0)?, &x(1)?, &y)?);
        }
        Op::Conv2dBackwardWeight { conv, bias } => {
            let s = conv_spec(g, node.inputs[1], id, *conv)?;
            let k = choices.conv(id);
            let rows = conv2d_backward_weight_rows(gpu, k, &s);
            let part = Tensor::zeros(gpu, "conv dweight partials", &[rows, s.part_row()])?;
            d.extend(conv2d_backward_weight_with(
                gpu,
                k,
                &s,
                &x(0)?,
                &x(1)?,
                &part,
            )?);
            let db = if *bias {
                Some(aux(g, ts, id, 0)?)
            } else {
                None
            };
            d.extend(sum_partials(gpu, &part, &y, db.as_ref())?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Max and average pooling and their gradients (the max pool's argmax is its aux output);
/// false for any other op.
fn lower_pool(gpu: &Gpu, g: &Graph, ts: &Tensors, id: Id, d: &mut Vec<Dispatch>) -> Result<bool> {
    let node = g.node(id);
    let x = |i: usize| ts.get(g, node.inputs[i]);
    let y = ts.get(g, id)?;
    match &node.op {
        Op::MaxPool2d(p) => {
            let ps = pool_spec(g.shape(node.inputs[0]), *p);
            let arg = aux(g, ts, id, 0)?;
            d.push(max_pool2d_forward(gpu, &ps, &x(0)?, &arg, &y)?);
        }
        Op::MaxPool2dBackward { pool, relu } => {
            let ps = pool_spec(&node.shape, *pool);
            let (p, dy) = (x(0)?, x(1)?);
            let arg = aux(g, ts, node.inputs[0], 0)?;
            d.push(match relu {
                true => max_pool2d_relu_backward(gpu, &ps, &dy, &arg, &p, &y)?,
                false => max_pool2d_backward(gpu, &ps, &dy, &arg, &y)?,
            });
        }
        Op::AvgPool2d(p) => {
            let ps = pool_spec(g.shape(node.inputs[0]), *p);
            d.push(avg_pool2d_forward(gpu, &ps, &x(0)?, &y)?);
        }
        Op::AvgPool2dBackward(p) => {
            let ps = pool_spec(&node.shape, *p);
            d.push(avg_pool2d_backward(gpu, &ps, &x(0)?, &y)?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// A conv forward with kernel `k` as the lowering runs it: on uniform-window adapters a
/// kernel other than Window runs as the windowed subgroup forward where its windows fit.
pub(super) fn conv_forward(
    gpu: &Gpu,
    k: Conv2dKernel,
    s: &Conv2dSpec,
    [x, w]: [&Tensor; 2],
    b: Option<&Tensor>,
    relu: bool,
    y: &Tensor,
) -> Result<Vec<Dispatch>> {
    if gpu.windows() && k != Conv2dKernel::Window {
        if let Some(ds) = conv2d_forward_windowed(gpu, s, x, w, b, relu, y)? {
            return Ok(ds);
        }
    }
    conv2d_forward_with(gpu, k, s, x, w, b, relu, y)
}

/// x viewed as `[outer, kept, inner]` when the kept axes are one contiguous block and each
/// output sums few enough elements for one invocation (`sum_outer_inner`'s loop budget).
pub fn kept_block(shape: &[usize], axes: &[usize]) -> Option<(usize, usize, usize)> {
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let (lo, hi) = match (kept.first(), kept.last()) {
        (Some(&lo), Some(&hi)) => (lo, hi + 1),
        _ => (0, 0),
    };
    if hi - lo != kept.len() {
        return None;
    }
    let p = |r: std::ops::Range<usize>| shape[r].iter().product::<usize>();
    let dims = (p(0..lo), p(lo..hi), p(hi..shape.len()));
    (dims.0 * dims.2 <= crate::kernels::LOOP_BUDGET).then_some(dims)
}

/// Sum a conv's partial rows `[rows, NW + CO]` into dweight and (optionally) dbias.
pub(super) fn sum_partials(
    gpu: &Gpu,
    part: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Result<Vec<Dispatch>> {
    let dims = (part.shape[0], part.shape[1], 1);
    let mut d = vec![sum_outer_inner_range(
        gpu,
        part,
        dims,
        0,
        &dw.view(0, &[dw.numel()]),
    )?];
    if let Some(db) = db {
        d.push(sum_outer_inner_range(gpu, part, dims, dw.numel(), db)?);
    }
    Ok(d)
}

/// A matmul node's product; a viewed operand (see [`OperandView`]) has its view's shape.
pub fn matmul_spec(g: &Graph, id: Id, t: MatMulAttrs) -> Result<MatmulSpec> {
    let n = g.node(id);
    product_spec(g, [n.inputs[0], n.inputs[1]], t)
}

/// The product of operands `ab` under `t` (a matmul node's, or one of a group's).
pub fn product_spec(g: &Graph, ab: [Id; 2], t: MatMulAttrs) -> Result<MatmulSpec> {
    let shape = |i: usize, v: Option<OperandView>| match v {
        Some(v) => v.shape.to_vec(),
        None => g.shape(ab[i]).to_vec(),
    };
    let (sa, sb) = (shape(0, t.a_view), shape(1, t.b_view));
    let [batch, m, nn, k] = super::ops_nn::matmul_dims(&sa, &sb, t)?;
    Ok(MatmulSpec {
        batch,
        shared_b: sa.len() == 3 && sb.len() == 2,
        transpose_a: t.ta,
        transpose_b: t.tb,
        bias: t.bias,
        relu: t.relu,
        a_view: t.a_view.map(|v| v.at),
        b_view: t.b_view.map(|v| v.at),
        c_view: t.c_view,
        ..MatmulSpec::new(m, nn, k)
    })
}

/// The conv of input `x` `[B, CI, H, W]` and weight `w` `[CO, CI, KH, KW]`.
pub(super) fn conv_spec(g: &Graph, x: Id, w: Id, c: ConvAttrs) -> Result<Conv2dSpec> {
    let (xs, ws) = (g.shape(x), g.shape(w));
    Ok(Conv2dSpec {
        stride: c.stride,
        batch: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        kh: ws[2],
        kw: ws[3],
        padding: c.padding,
    })
}

pub(super) fn pool_spec(x: &[usize], p: PoolAttrs) -> PoolSpec {
    PoolSpec {
        batch: x[0],
        channels: x[1],
        h: x[2],
        w: x[3],
        pool: p.pool,
        stride: p.stride,
    }
}

struct OwnedLoss {
    z: Tensor,
    label: Option<Tensor>,
    target: Option<Tensor>,
    prob: Tensor,
}

impl OwnedLoss {
    fn as_ref(&self) -> LossTensors<'_> {
        LossTensors {
            z: &self.z,
            label: self.label.as_ref(),
            target: self.target.as_ref(),
            prob: &self.prob,
        }
    }
}

fn loss_tensors(g: &Graph, ts: &Tensors, z: Id, t: Id, prob: Tensor) -> Result<OwnedLoss> {
    let tt = ts.get(g, t)?;
    let (label, target) = match g.node(t).dtype {
        DType::U32 => (Some(tt), None),
        DType::F32 => (None, Some(tt)),
    };
    Ok(OwnedLoss {
        z: ts.get(g, z)?,
        label,
        target,
        prob,
    })
}
