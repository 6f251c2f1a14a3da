//! Reverse-mode autodiff, graph to graph: the gradient nodes are appended to the same graph,
//! so the backward pass is fused, planned and lowered like the forward pass.
//!
//! `grad` prunes to the nodes between the parameters and the loss, walks them in reverse,
//! and applies one vector-Jacobian rule per op (`vjp`, below, all in one place). Every rule
//! uses its incoming gradient `g`: a rule that assumed g == 1 would pass as the last op of a
//! graph and fail mid-graph, which is where tests/graph_gradcheck.rs puts every op.
//! Broadcasts are undone in one place (`unbroadcast`), contributions summed with `add`.

use super::ir::*;
use crate::kernels::loss::Loss;
use crate::{Error, Result};

/// Gradients of the scalar (or any-shaped, seeded with ones) `loss` with respect to `wrt`,
/// in order. A parameter the loss does not depend on gets a zero constant.
pub fn grad(g: &mut Graph, loss: Id, wrt: &[Id]) -> Result<Vec<Id>> {
    let end = loss.index() + 1;
    let on_path = path(g, loss, wrt);
    let mut grads: Vec<Option<Id>> = vec![None; end];
    let shape = g.shape(loss).to_vec();
    let seed = g.constant(1.0, &shape);
    grads[loss.index()] = Some(seed);
    for i in (0..end).rev() {
        let (id, Some(gout)) = (Id(i as u32), grads[i]) else {
            continue;
        };
        if !on_path[i] || g.node(id).op.is_leaf() {
            continue;
        }
        let input_grads = vjp(g, id, gout)?;
        let inputs = g.node(id).inputs.clone();
        for (x, gx) in inputs.into_iter().zip(input_grads) {
            let Some(gx) = gx else { continue };
            if !on_path[x.index()] {
                continue;
            }
            grads[x.index()] = Some(match grads[x.index()] {
                Some(prev) => g.add(prev, gx)?,
                None => gx,
            });
        }
    }
    let mut out = Vec::with_capacity(wrt.len());
    for &p in wrt {
        let shape = g.shape(p).to_vec();
        out.push(match grads.get(p.index()).copied().flatten() {
            Some(gp) => gp,
            None => g.constant(0.0, &shape),
        });
    }
    Ok(out)
}

/// Nodes on a path from one of `wrt` to `loss`.
fn path(g: &Graph, loss: Id, wrt: &[Id]) -> Vec<bool> {
    let reaches_loss = g.live_from(&[loss]);
    let mut from_wrt = vec![false; g.len()];
    for &w in wrt {
        from_wrt[w.index()] = true;
    }
    for i in 0..g.len() {
        if g.nodes[i].inputs.iter().any(|x| from_wrt[x.index()]) {
            from_wrt[i] = true;
        }
    }
    (0..g.len())
        .map(|i| from_wrt[i] && reaches_loss[i])
        .collect()
}

/// `g` summed down to `shape` over the axes a broadcast stretched.
pub fn unbroadcast(gr: &mut Graph, g: Id, shape: &[usize]) -> Result<Id> {
    let gs = gr.shape(g).to_vec();
    if gs == shape {
        return Ok(g);
    }
    let lead = gs.len() - shape.len();
    let axes: Vec<usize> = (0..gs.len())
        .filter(|&a| a < lead || (shape[a - lead] == 1 && gs[a] != 1))
        .collect();
    let s = gr.sum(g, &axes)?;
    gr.reshape(s, shape)
}

/// `g` (the reduced shape) broadcast back over the reduced `axes` of `shape`.
fn unreduce(gr: &mut Graph, g: Id, axes: &[usize], shape: &[usize]) -> Result<Id> {
    let keep: Vec<usize> = (0..shape.len())
        .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
        .collect();
    let k = gr.reshape(g, &keep)?;
    gr.expand(k, shape)
}

fn second_order(op: &Op) -> Error {
    Error::shape(
        "autodiff",
        format!("{op:?} is a backward op; second-order gradients are not supported"),
    )
}

/// The vector-Jacobian products of node `y` for each of its inputs, given dL/dy = `g`.
fn vjp(gr: &mut Graph, y: Id, g: Id) -> Result<Vec<Option<Id>>> {
    let n = gr.node(y).clone();
    let ins = n.inputs.clone();
    let shp = |gr: &Graph, i: usize| gr.shape(ins[i]).to_vec();
    Ok(match &n.op {
        Op::Input(_) | Op::Param(_) | Op::Const(_) => vec![],
        Op::Unary(u) => {
            let from = if u.backward_uses().1 { y } else { ins[0] };
            vec![Some(gr.unary_backward(*u, from, g))]
        }
        Op::Binary(op) => binary_vjp(gr, *op, y, ins[0], ins[1], g)?,
        Op::Where => {
            let zero = gr.constant(0.0, &[]);
            let da = gr.where_(ins[0], g, zero)?;
            let db = gr.where_(ins[0], zero, g)?;
            let (sa, sb) = (shp(gr, 1), shp(gr, 2));
            vec![
                None,
                Some(unbroadcast(gr, da, &sa)?),
                Some(unbroadcast(gr, db, &sb)?),
            ]
        }
        Op::Reduce(ReduceOp::Sum, axes) => vec![Some(unreduce(gr, g, axes, &shp(gr, 0))?)],
        Op::Reduce(ReduceOp::Max, axes) => vec![Some(reduce_max_vjp(gr, y, ins[0], axes, g)?)],
        Op::Expand => vec![Some(unbroadcast(gr, g, &shp(gr, 0))?)],
        Op::Copy => vec![Some(g)],
        Op::Reshape => vec![Some(gr.reshape(g, &shp(gr, 0))?)],
        Op::Aux(_) if n.dtype == DType::U32 => vec![None],
        Op::Aux(k) => {
            return Err(Error::shape(
                "autodiff",
                format!("gradient through aux output {k} of {:?} is not supported; hint: differentiate the loss node itself", gr.node(ins[0]).op),
            ))
        }
        Op::Permute(_) | Op::Slice { .. } | Op::Pad { .. } | Op::Concat(_) => {
            movement_vjp(gr, &n.op, &ins, g)?
        }
        Op::MatMul(t) if !t.bias && !t.relu => matmul_vjp(gr, *t, ins[0], ins[1], g)?,
        Op::Conv2d(c) if !c.bias && !c.relu => {
            let (xs, ws) = (shp(gr, 0), shp(gr, 1));
            let dx = gr.push(Op::Conv2dBackwardInput(*c), vec![g, ins[1]], xs, DType::F32);
            let dw = gr.push(
                Op::Conv2dBackwardWeight { conv: *c, bias: false },
                vec![g, ins[0]],
                ws,
                DType::F32,
            );
            vec![Some(dx), Some(dw)]
        }
        Op::MaxPool2d(p) => {
            let op = Op::MaxPool2dBackward { pool: *p, relu: false };
            vec![Some(gr.push(op, vec![y, g], shp(gr, 0), DType::F32))]
        }
        Op::AvgPool2d(p) => {
            let op = Op::AvgPool2dBackward(*p);
            vec![Some(gr.push(op, vec![g], shp(gr, 0), DType::F32))]
        }
        Op::Dropout { .. } => {
            let mask = gr.aux(y, 0);
            vec![Some(gr.mul(g, mask)?)]
        }
        Op::Embedding => {
            let op = Op::EmbeddingBackward;
            vec![Some(gr.push(op, vec![ins[1], g], shp(gr, 0), DType::F32)), None]
        }
        Op::Softmax { causal } => {
            let op = Op::SoftmaxBackward { causal: *causal };
            vec![Some(gr.push(op, vec![y, g], shp(gr, 0), DType::F32))]
        }
        Op::LayerNorm { .. } | Op::BatchNorm { training: true, .. } => {
            norm_vjp(gr, &n.op, y, &ins, g)?
        }
        Op::BatchNorm { training: false, .. } => {
            return Err(Error::shape(
                "autodiff",
                "batch norm with running statistics (evaluation mode) is not differentiated; build the graph in training mode",
            ))
        }
        Op::BatchNormPool { .. } => {
            return Err(Error::shape(
                "autodiff",
                "BatchNormPool is made by fusion after autodiff; differentiate the batch norm, ReLU and max pool it fuses",
            ))
        }
        Op::Loss(kind) => vec![Some(loss_vjp(gr, *kind, y, &ins, g)?), None],
        op => return Err(second_order(op)),
    })
}

/// y = a op b (broadcast): each side's product with g, summed back to its own shape.
fn binary_vjp(gr: &mut Graph, op: BinaryOp, y: Id, a: Id, b: Id, g: Id) -> Result<Vec<Option<Id>>> {
    let (da, db) = match op {
        BinaryOp::Add => (g, g),
        BinaryOp::Sub => (g, gr.scale(g, -1.0)?),
        BinaryOp::Mul => (gr.mul(g, b)?, gr.mul(g, a)?),
        BinaryOp::Div => {
            let da = gr.div(g, b)?;
            let t = gr.mul(da, y)?;
            (da, gr.scale(t, -1.0)?)
        }
        BinaryOp::Max | BinaryOp::Min => {
            let ma = gr.binary(BinaryOp::CmpEq, y, a)?;
            let da = gr.mul(g, ma)?;
            (da, gr.sub(g, da)?)
        }
        BinaryOp::Pow => {
            // y = a^b: da = g b y / a, db = g y ln a.
            let gy = gr.mul(g, y)?;
            let t = gr.mul(gy, b)?;
            let ln = gr.unary(UnaryOp::Log, a)?;
            (gr.div(t, a)?, gr.mul(gy, ln)?)
        }
        BinaryOp::CmpGt | BinaryOp::CmpEq | BinaryOp::CmpGe | BinaryOp::CmpLt => {
            return Ok(vec![None, None])
        }
    };
    let (sa, sb) = (gr.shape(a).to_vec(), gr.shape(b).to_vec());
    Ok(vec![
        Some(unbroadcast(gr, da, &sa)?),
        Some(unbroadcast(gr, db, &sb)?),
    ])
}

/// y = max of x over `axes`: ties share the gradient evenly (tinygrad's rule),
/// mask / count * g.
fn reduce_max_vjp(gr: &mut Graph, y: Id, x: Id, axes: &[usize], g: Id) -> Result<Id> {
    let xs = gr.shape(x).to_vec();
    let ymax = unreduce(gr, y, axes, &xs)?;
    let mask = gr.binary(BinaryOp::CmpEq, x, ymax)?;
    let count = gr.sum(mask, axes)?;
    let share = gr.div(g, count)?;
    let share = unreduce(gr, share, axes, &xs)?;
    gr.mul(mask, share)
}

/// Permute, slice, pad and concat: each moves g back where its input's values came from.
fn movement_vjp(gr: &mut Graph, op: &Op, ins: &[Id], g: Id) -> Result<Vec<Option<Id>>> {
    let len = |gr: &Graph, i: usize, axis: usize| gr.shape(ins[i])[axis];
    Ok(match *op {
        Op::Permute(ref p) => {
            let mut inv = vec![0; p.len()];
            for (i, &a) in p.iter().enumerate() {
                inv[a] = i;
            }
            vec![Some(gr.permute(g, &inv)?)]
        }
        Op::Slice { axis, start } => {
            let total = len(gr, 0, axis);
            vec![Some(gr.pad(g, axis, start, total)?)]
        }
        Op::Pad { axis, start } => {
            let n = len(gr, 0, axis);
            vec![Some(gr.slice(g, axis, start, n)?)]
        }
        Op::Concat(axis) => {
            let mut at = 0;
            let mut out = Vec::new();
            for i in 0..ins.len() {
                let n = len(gr, i, axis);
                out.push(Some(gr.slice(g, axis, at, n)?));
                at += n;
            }
            out
        }
        ref other => return Err(second_order(other)),
    })
}

/// Layer norm and training-mode batch norm: one backward node for dx (dgamma and dbeta
/// its aux outputs, or for layer norm a second node).
fn norm_vjp(gr: &mut Graph, op: &Op, y: Id, ins: &[Id], g: Id) -> Result<Vec<Option<Id>>> {
    let (x, gamma) = (ins[0], ins[1]);
    let (xs, c) = (gr.shape(x).to_vec(), gr.shape(gamma).to_vec());
    Ok(match *op {
        Op::LayerNorm { eps } => {
            let op = Op::LayerNormBackwardInput { eps };
            let dx = gr.push(op, vec![x, y, gamma, g], xs, DType::F32);
            let op = Op::LayerNormBackwardParams { eps };
            let aux = vec![(c.clone(), DType::F32)];
            let dgamma = gr.push_with_aux(op, vec![x, y, g], c, DType::F32, aux);
            let dbeta = gr.aux(dgamma, 0);
            vec![Some(dx), Some(dgamma), Some(dbeta)]
        }
        Op::BatchNorm { eps, relu, .. } => {
            let op = Op::BatchNormBackward { eps, relu };
            let aux = vec![(c.clone(), DType::F32), (c, DType::F32)];
            let dx = gr.push_with_aux(op, vec![x, y, gamma, g], xs, DType::F32, aux);
            let (dgamma, dbeta) = (gr.aux(dx, 0), gr.aux(dx, 1));
            vec![Some(dx), Some(dgamma), Some(dbeta)]
        }
        ref other => return Err(second_order(other)),
    })
}

/// C = op(A) · op(B): dA = g · op(B)ᵀ, dB = op(A)ᵀ · g, each written in A's and B's
/// stored layouts through the transpose flags (no transposes materialised).
fn matmul_vjp(gr: &mut Graph, t: MatMulAttrs, a: Id, b: Id, g: Id) -> Result<Vec<Option<Id>>> {
    let da = if t.ta {
        gr.matmul(b, g, t.tb, true)?
    } else {
        gr.matmul(g, b, false, !t.tb)?
    };
    let shared_b = gr.shape(a).len() == 3 && gr.shape(b).len() == 2;
    let db = if shared_b && !t.ta {
        // B is shared by the batch: fold the batch into M, so dB needs no sum.
        let (sa, sg) = (gr.shape(a).to_vec(), gr.shape(g).to_vec());
        let a2 = gr.reshape(a, &[sa[0] * sa[1], sa[2]])?;
        let g2 = gr.reshape(g, &[sg[0] * sg[1], sg[2]])?;
        if t.tb {
            gr.matmul(g2, a2, true, false)?
        } else {
            gr.matmul(a2, g2, true, false)?
        }
    } else {
        let db = if t.tb {
            gr.matmul(g, a, true, t.ta)?
        } else {
            gr.matmul(a, g, !t.ta, false)?
        };
        if shared_b {
            gr.sum(db, &[0])?
        } else {
            db
        }
    };
    Ok(vec![Some(da), Some(db)])
}

/// The loss kernels' backward is d(batch mean)/dz, i.e. per-sample gradient 1/B. An
/// incoming per-sample gradient g `[B]` scales each row by g * B (nothing when g == 1/B,
/// as it is when the loss is the root of a training graph).
fn loss_vjp(gr: &mut Graph, kind: Loss, y: Id, ins: &[Id], g: Id) -> Result<Id> {
    let zs = gr.shape(ins[0]).to_vec();
    let dz = gr.push(
        Op::LossBackward(kind),
        vec![y, ins[0], ins[1]],
        zs.clone(),
        DType::F32,
    );
    let rows = gr.scale(g, zs[0] as f32)?;
    if matches!(gr.node(rows).op, Op::Const(c) if c == 1.0) {
        return Ok(dz);
    }
    let rows = gr.reshape(rows, &[zs[0], 1])?;
    gr.mul(dz, rows)
}
