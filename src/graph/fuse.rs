//! Peephole fusion passes. Each rewrites the last node of a pattern in place into a fused
//! op, guarded so that no value another node (or the caller) reads disappears: every
//! absorbed node has exactly one reader and is not an output. The absorbed nodes become
//! dead and the planner drops them; `Graph::toposort` restores the order a rewrite may
//! have broken.

use super::ir::*;
use super::layout::Layout;
use crate::gpu::Gpu;

/// Which fusions the adapter's kernels allow (see lower.rs).
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseOptions {
    /// conv + bias + ReLU + max pool as one kernel (uniform-window adapters).
    pub conv_relu_pool: bool,
    /// Reshape/Permute/Slice chains folded into the strides of the matmuls that read them
    /// (attention's heads). Every family's own kernel takes strided views (the tiled,
    /// subgroup and register-tile kernels; the window kernel declines them and its family
    /// falls back to the subgroup kernel), so this is on for every adapter.
    pub matmul_views: bool,
}

/// Set to 1 to turn the matmul views off (A/B timings against the copies).
pub const NO_MATMUL_VIEWS_ENV: &str = "SHADERGRAD_NO_MATMUL_VIEWS";

impl FuseOptions {
    /// Every fusion `gpu`'s kernels allow (matmul views on every family, unless
    /// [`NO_MATMUL_VIEWS_ENV`]).
    pub fn for_gpu(gpu: &Gpu) -> Self {
        let off = std::env::var(NO_MATMUL_VIEWS_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        FuseOptions {
            conv_relu_pool: gpu.windows(),
            matmul_views: !off,
        }
    }
}

/// Run every pass to a fixpoint; returns the number of rewrites.
pub fn fuse(g: &mut Graph, opts: FuseOptions) -> usize {
    let mut total = 0;
    loop {
        let mut n = bias_into_producer(g) + relu_into_producer(g);
        n += relu_into_pool_backward(g) + conv_bias_grad(g) + relu_into_batch_norm(g);
        n += batch_norm_pool(g);
        if opts.conv_relu_pool {
            n += conv_relu_pool(g) + conv_relu_pool_backward_weight(g);
        }
        if opts.matmul_views {
            n += matmul_operand_views(g) + matmul_output_views(g) + matmul_group(g);
        }
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

fn single_use(g: &Graph, uses: &[usize], id: Id) -> bool {
    uses[id.index()] == 1 && !g.is_output(id)
}

/// The parameter behind a bias operand: `b` `[N]` itself, or `b` reshaped to `[N, 1, 1]`.
fn bias_source(g: &Graph, b: Id, channels_first: bool) -> Option<Id> {
    let n = g.node(b);
    match (&n.op, channels_first) {
        (Op::Reshape, true) if n.shape.len() == 3 && n.shape[1..] == [1, 1] => {
            let src = n.inputs[0];
            (g.shape(src).len() == 1).then_some(src)
        }
        (_, false) if n.shape.len() == 1 => Some(b),
        _ => None,
    }
}

/// Add(MatMul(a, w), b `[N]`) -> MatMul{bias}(a, w, b); Add(Conv2d(x, w), b `[C,1,1]`) ->
/// Conv2d{bias}(x, w, b).
fn bias_into_producer(g: &mut Graph) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for id in g.ids() {
        let node = g.node(id);
        if node.op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        let (p, b) = (node.inputs[0], node.inputs[1]);
        if !single_use(g, &uses, p) {
            continue;
        }
        let pn = g.node(p).clone();
        let fused = match pn.op {
            Op::MatMul(mut t)
                if !t.bias && !t.relu && pn.shape.len() == 2 && t.c_view.is_none() =>
            {
                bias_source(g, b, false).map(|src| {
                    t.bias = true;
                    (Op::MatMul(t), src)
                })
            }
            Op::Conv2d(mut c) if !c.bias && !c.relu => bias_source(g, b, true).map(|src| {
                c.bias = true;
                (Op::Conv2d(c), src)
            }),
            _ => None,
        };
        let Some((op, src)) = fused else { continue };
        // The bias runs along axis 1: N of a matmul [M, N], C of a conv [B, C, H, W].
        if g.shape(src)[0] != pn.shape[1] {
            continue;
        }
        let node = &mut g.nodes[id.index()];
        node.op = op;
        node.inputs = vec![pn.inputs[0], pn.inputs[1], src];
        n += 1;
    }
    n
}

/// Relu(MatMul{bias} or Conv2d{bias}) -> the producer with `relu` set.
fn relu_into_producer(g: &mut Graph) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for id in g.ids() {
        let node = g.node(id);
        if node.op != Op::Unary(UnaryOp::Relu) || !single_use(g, &uses, node.inputs[0]) {
            continue;
        }
        let p = g.node(node.inputs[0]).clone();
        let op = match p.op {
            Op::MatMul(mut t) if t.bias && !t.relu => {
                t.relu = true;
                Op::MatMul(t)
            }
            Op::Conv2d(mut c) if c.bias && !c.relu => {
                c.relu = true;
                Op::Conv2d(c)
            }
            _ => continue,
        };
        let node = &mut g.nodes[id.index()];
        node.op = op;
        node.inputs = p.inputs;
        n += 1;
    }
    n
}

/// ReluBackward(y, MaxPool2dBackward(pool = MaxPool(y), g)) -> MaxPool2dBackward{relu}:
/// the pool's output is positive exactly where the ReLU let its gradient through.
fn relu_into_pool_backward(g: &mut Graph) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for id in g.ids() {
        let node = g.node(id);
        let Op::UnaryBackward(UnaryOp::Relu) = node.op else {
            continue;
        };
        let (y, gp) = (node.inputs[0], node.inputs[1]);
        let Op::MaxPool2dBackward { pool, relu: false } = g.node(gp).op else {
            continue;
        };
        let pool_node = g.node(gp).inputs[0];
        if g.node(pool_node).inputs[0] != y || !single_use(g, &uses, gp) {
            continue;
        }
        let inputs = g.node(gp).inputs.clone();
        let node = &mut g.nodes[id.index()];
        node.op = Op::MaxPool2dBackward { pool, relu: true };
        node.inputs = inputs;
        n += 1;
    }
    n
}

/// Relu(BatchNorm(..)) -> BatchNorm{relu}, the ReLU's readers reading the batch norm; and
/// BatchNormBackward(x, bn, gamma, ReluBackward(r or bn, dy)) -> BatchNormBackward{relu}(x,
/// bn, gamma, dy): the fused output is positive exactly where the ReLU let its gradient
/// through. The batch norm's value may have no reader but the ReLU, ReLU backwards (their
/// mask is the same on either side of the ReLU), its aux aliases and its backward.
fn relu_into_batch_norm(g: &mut Graph) -> usize {
    let live = g.live_from(&g.outputs);
    let mut n = 0;
    for r in g.ids() {
        let bn = g.node(r).inputs.first().copied();
        let (Op::Unary(UnaryOp::Relu), Some(bn)) = (&g.node(r).op, bn) else {
            continue;
        };
        let Op::BatchNorm { relu: false, .. } = g.node(bn).op else {
            continue;
        };
        let readers: Vec<Id> = g
            .ids()
            .filter(|&i| live[i.index()] && g.node(i).inputs.contains(&bn))
            .collect();
        let ok = readers.iter().all(|&i| match g.node(i).op {
            Op::Aux(_) | Op::UnaryBackward(UnaryOp::Relu) => true,
            // Its own backward reads it as input 1 (for the statistics), nothing else.
            Op::BatchNormBackward { .. } => (g.node(i).inputs.iter())
                .enumerate()
                .all(|(k, &v)| v != bn || k == 1),
            _ => i == r,
        });
        if !ok || g.is_output(bn) || g.is_output(r) {
            continue;
        }
        if let Op::BatchNorm { relu, .. } = &mut g.nodes[bn.index()].op {
            *relu = true;
        }
        for node in g.nodes.iter_mut().skip(r.index() + 1) {
            for i in node.inputs.iter_mut().filter(|i| **i == r) {
                *i = bn;
            }
        }
        n += 1 + relu_mask_into_backward(g, bn);
    }
    n
}

/// BatchNormBackward{relu: false}(x, bn, gamma, ReluBackward(bn, dy)) ->
/// BatchNormBackward{relu}(x, bn, gamma, dy), for `bn` just fused with its ReLU.
fn relu_mask_into_backward(g: &mut Graph, bn: Id) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for b in g.ids() {
        let node = g.node(b);
        let Op::BatchNormBackward { eps, relu: false } = node.op else {
            continue;
        };
        let rb = node.inputs[3];
        let rn = g.node(rb);
        let masks = rn.op == Op::UnaryBackward(UnaryOp::Relu) && rn.inputs[0] == bn;
        if node.inputs[1] != bn || !masks || !single_use(g, &uses, rb) {
            continue;
        }
        let dy = rn.inputs[1];
        let node = &mut g.nodes[b.index()];
        node.op = Op::BatchNormBackward { eps, relu: true };
        node.inputs[3] = dy;
        n += 1;
    }
    n
}

/// MaxPool2d(bn = BatchNorm{relu}(x, ..)) with pool = stride -> BatchNormPool(x, ..): the
/// normalised values are never written. Its statistics move to aux 1, 2 (the argmax is aux
/// 0); and BatchNormBackward(x, bn, gamma, MaxPool2dBackward(pool, dy)) ->
/// BatchNormPoolBackward(x, pool, gamma, dy): the batch norm's gradient is the pooled one
/// at the argmax positions where the pooled value is positive (what either pool backward,
/// with or without its ReLU mask, and the ReLU-masked batch norm backward make of it). The
/// batch norm may have no other reader, nor the pool's argmax.
fn batch_norm_pool(g: &mut Graph) -> usize {
    let live = g.live_from(&g.outputs);
    let mut n = 0;
    for p in g.ids() {
        if let Some(m) = match_batch_norm_pool(g, &live, p) {
            rewrite_batch_norm_pool(g, &live, p, m);
            n += 1;
        }
    }
    n
}

/// The live nodes reading `of`.
fn live_readers(g: &Graph, live: &[bool], of: Id) -> Vec<Id> {
    g.ids()
        .filter(|&i| live[i.index()] && g.node(i).inputs.contains(&of))
        .collect()
}

/// A max pool `p` (pool = stride) of a training or evaluation batch norm with its ReLU
/// fused, that nothing else reads, with (when training) that batch norm's backward fed by
/// the pool's backward alone.
struct BatchNormPoolMatch {
    bn: Id,
    eps: f32,
    training: bool,
    backward: Option<Id>,
    pool_backward: Option<Id>,
}

fn match_batch_norm_pool(g: &Graph, live: &[bool], p: Id) -> Option<BatchNormPoolMatch> {
    let Op::MaxPool2d(pool) = g.node(p).op else {
        return None;
    };
    let bn = g.node(p).inputs[0];
    let Op::BatchNorm {
        eps,
        relu: true,
        training,
    } = g.node(bn).op
    else {
        return None;
    };
    // The batch norm's backward and the pool backward feeding only it.
    let mut backward = None;
    let bn_ok = live_readers(g, live, bn)
        .iter()
        .all(|&i| match g.node(i).op {
            Op::Aux(_) => true,
            Op::BatchNormBackward { .. } if g.node(i).inputs[1] == bn => {
                backward = Some(i);
                g.node(i).inputs.iter().filter(|&&v| v == bn).count() == 1
            }
            _ => i == p,
        });
    let pool_backward = backward.map(|b| g.node(b).inputs[3]);
    let pb_ok = match pool_backward {
        Some(pb) => {
            matches!(g.node(pb).op, Op::MaxPool2dBackward { .. })
                && g.node(pb).inputs[0] == p
                && live_readers(g, live, pb) == [backward.unwrap_or(pb)]
                && !g.is_output(pb)
        }
        None => true,
    };
    // Nothing else may read the pool's argmax (its positions become f32).
    let argmax_ok = live_readers(g, live, p).iter().all(|&i| {
        !matches!(g.node(i).op, Op::MaxPool2dBackward { .. } | Op::Aux(_))
            || Some(i) == pool_backward
    });
    let fits = pool.pool == pool.stride && g.shape(bn).len() == 4;
    let ok = bn_ok && pb_ok && argmax_ok && fits && !g.is_output(bn);
    ok.then_some(BatchNormPoolMatch {
        bn,
        eps,
        training,
        backward,
        pool_backward,
    })
}

/// The pool node becomes BatchNormPool (aux: the argmax, then the batch norm's
/// statistics, so the batch norm's Aux readers shift by one), the batch norm's backward
/// BatchNormPoolBackward reading the pool's incoming gradient.
fn rewrite_batch_norm_pool(g: &mut Graph, live: &[bool], p: Id, m: BatchNormPoolMatch) {
    let Op::MaxPool2d(pool) = g.node(p).op else {
        return;
    };
    let (x_node, pooled_shape) = (g.node(m.bn).clone(), g.node(p).shape.clone());
    let mut aux = vec![(pooled_shape, DType::F32)];
    aux.extend(x_node.aux.iter().cloned());
    let fused = &mut g.nodes[p.index()];
    fused.op = Op::BatchNormPool {
        eps: m.eps,
        pool: pool.pool,
        training: m.training,
    };
    fused.inputs = x_node.inputs.clone();
    fused.aux = aux;
    for i in live_readers(g, live, m.bn) {
        let node = &mut g.nodes[i.index()];
        if let Op::Aux(k) = node.op {
            node.op = Op::Aux(k + 1);
            node.inputs = vec![p];
        }
    }
    if let (Some(b), Some(pb)) = (m.backward, m.pool_backward) {
        let dy = g.node(pb).inputs[1];
        let node = &mut g.nodes[b.index()];
        node.op = Op::BatchNormPoolBackward {
            eps: m.eps,
            pool: pool.pool,
        };
        node.inputs = vec![node.inputs[0], p, node.inputs[2], dy];
    }
}

/// Sum(dy, `[0, 2, 3]`) beside Conv2dBackwardWeight(dy, x): the conv kernel's partial rows
/// hold dbias too, so the sum becomes its aux output.
fn conv_bias_grad(g: &mut Graph) -> usize {
    let mut n = 0;
    for id in g.ids() {
        let node = g.node(id);
        if node.op != Op::Reduce(ReduceOp::Sum, vec![0, 2, 3]) {
            continue;
        }
        let dy = node.inputs[0];
        let bw = g.ids().find(|&c| {
            matches!(g.node(c).op, Op::Conv2dBackwardWeight { bias: false, .. })
                && g.node(c).inputs[0] == dy
        });
        let Some(bw) = bw else { continue };
        let shape = g.node(id).shape.clone();
        let cn = &mut g.nodes[bw.index()];
        if let Op::Conv2dBackwardWeight { bias, .. } = &mut cn.op {
            *bias = true;
        }
        cn.aux = vec![(shape, DType::F32)];
        let node = &mut g.nodes[id.index()];
        node.op = Op::Aux(0);
        node.inputs = vec![bw];
        n += 1;
    }
    n
}

/// MaxPool2d(Conv2d{bias, relu}(x, w, b)) -> ConvReluPool(x, w, b): the conv's output is
/// never written.
fn conv_relu_pool(g: &mut Graph) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for id in g.ids() {
        let Op::MaxPool2d(pool) = g.node(id).op else {
            continue;
        };
        let c = g.node(id).inputs[0];
        let Op::Conv2d(conv) = g.node(c).op else {
            continue;
        };
        if !(conv.bias && conv.relu && conv.stride == 1 && single_use(g, &uses, c)) {
            continue;
        }
        let inputs = g.node(c).inputs.clone();
        let node = &mut g.nodes[id.index()];
        node.op = Op::ConvReluPool { conv, pool };
        node.inputs = inputs;
        n += 1;
    }
    n
}

/// Conv2dBackwardWeight{bias}(MaxPool2dBackward{relu}(p = ConvReluPool(x, ..), g), x) ->
/// ConvReluPoolBackwardWeight(x, g, p): dweight and dbias straight from the pool's
/// gradient at the argmax positions; the conv's gradient is never formed.
fn conv_relu_pool_backward_weight(g: &mut Graph) -> usize {
    let uses = g.uses();
    let mut n = 0;
    for id in g.ids() {
        let Op::Conv2dBackwardWeight { conv, bias: true } = g.node(id).op else {
            continue;
        };
        let (gz, x) = (g.node(id).inputs[0], g.node(id).inputs[1]);
        let Op::MaxPool2dBackward { pool, relu: true } = g.node(gz).op else {
            continue;
        };
        let (p, gp) = (g.node(gz).inputs[0], g.node(gz).inputs[1]);
        let fused = matches!(g.node(p).op, Op::ConvReluPool { .. }) && g.node(p).inputs[0] == x;
        // gz's readers: this node and its dbias sum (now its aux), nothing else.
        if !fused || uses[gz.index()] != 1 || g.is_output(gz) {
            continue;
        }
        let node = &mut g.nodes[id.index()];
        node.op = Op::ConvReluPoolBackwardWeight { conv, pool };
        node.inputs = vec![x, gp, p];
        n += 1;
    }
    n
}

/// MatMul(chain(x), ..) -> MatMul{a_view}(x, ..), likewise B: a rank-3 operand made by a
/// chain of Reshape, Permute and Slice that holds a Permute or a Slice (each a copy) is
/// read in place from the chain's source when its layout there is a strided, two-level
/// batched view (see layout.rs). The chain's nodes stay for their other readers, if any.
fn matmul_operand_views(g: &mut Graph) -> usize {
    let mut n = 0;
    for id in g.ids() {
        let Op::MatMul(mut t) = g.node(id).op else {
            continue;
        };
        let mut inputs = g.node(id).inputs.clone();
        for (i, view) in [&mut t.a_view, &mut t.b_view].into_iter().enumerate() {
            if view.is_some() {
                continue;
            }
            if let Some((src, v)) = operand_view(g, inputs[i]) {
                (inputs[i], *view) = (src, Some(v));
                n += 1;
            }
        }
        let node = &mut g.nodes[id.index()];
        node.op = Op::MatMul(t);
        node.inputs = inputs;
    }
    n
}

/// The furthest source of the movement chain ending at `x` that `x` is a view of, and that
/// view: where the chain from it copies something and its layout is a matmul operand's.
fn operand_view(g: &Graph, x: Id) -> Option<(Id, OperandView)> {
    let shape: [usize; 3] = g.shape(x).try_into().ok()?;
    let mut chain = vec![];
    let mut src = x;
    while matches!(
        g.node(src).op,
        Op::Reshape | Op::Permute(_) | Op::Slice { .. }
    ) {
        chain.push(src);
        src = g.node(src).inputs[0];
    }
    (1..=chain.len()).rev().find_map(|len| {
        let c = &chain[..len];
        let src = g.node(c[len - 1]).inputs[0];
        let copies = c.iter().any(|&i| g.node(i).op != Op::Reshape);
        if !copies || g.node(src).dtype != DType::F32 {
            return None;
        }
        let mut l = Layout::contiguous(g.shape(src));
        for &i in c.iter().rev() {
            let node = g.node(i);
            l = match &node.op {
                Op::Reshape => l.reshape(&node.shape)?,
                Op::Permute(p) => l.permute(p)?,
                Op::Slice { axis, start } => l.slice(*axis, *start, node.shape[*axis])?,
                _ => return None,
            };
        }
        let at = l.strided()?;
        Some((src, OperandView { shape, at }))
    })
}

/// chain(MatMul(a, b)) -> MatMul{c_view}(a, b): a batched product whose only reader is a
/// chain of Reshape and Permute (holding a Permute) writes the chain's value in place, when
/// the product's layout in it is a strided view with rows written contiguous (attention's
/// heads merged back: `[B*H, T, hd]` -> `[B*T, D]`). The product and the chain's inner nodes
/// have that one reader each and are no outputs; the chain's last node may have any.
fn matmul_output_views(g: &mut Graph) -> usize {
    let uses = g.uses();
    let (live, reader) = (g.live_from(&g.outputs), readers(g));
    let mut n = 0;
    for id in g.ids() {
        let Op::MatMul(t) = g.node(id).op else {
            continue;
        };
        if t.c_view.is_some() || g.node(id).shape.len() != 3 || !live[id.index()] {
            continue;
        }
        let chain = movement_chain(g, &uses, &reader, id);
        // The longest chain whose layout fits, as long as it copies (holds a Permute).
        let fits = (1..=chain.len()).rev().find_map(|len| {
            let c = &chain[..len];
            let copies = c.iter().any(|&i| matches!(g.node(i).op, Op::Permute(_)));
            let view = copies.then(|| undo_chain(g, id, c)).flatten();
            view.and_then(|l| output_view(&l, g.shape(id)))
                .map(|v| (c[len - 1], v))
        });
        let Some((end, view)) = fits else { continue };
        let inputs = g.node(id).inputs.clone();
        let node = &mut g.nodes[end.index()];
        node.op = Op::MatMul(MatMulAttrs {
            c_view: Some(view),
            ..t
        });
        node.inputs = inputs;
        n += 1;
    }
    n
}

/// A live reader of each node (the one, where it has one).
fn readers(g: &Graph) -> Vec<Option<Id>> {
    let live = g.live_from(&g.outputs);
    let mut reader = vec![None; g.len()];
    for id in g.ids().filter(|i| live[i.index()]) {
        for &i in &g.node(id).inputs {
            reader[i.index()] = Some(id);
        }
    }
    reader
}

/// The Reshape and Permute nodes after `x`, each the only reader of the one before.
fn movement_chain(g: &Graph, uses: &[usize], reader: &[Option<Id>], x: Id) -> Vec<Id> {
    let mut chain = vec![];
    let mut cur = x;
    while let Some(r) = reader[cur.index()].filter(|_| single_use(g, uses, cur)) {
        if !matches!(g.node(r).op, Op::Reshape | Op::Permute(_)) {
            break;
        }
        chain.push(r);
        cur = r;
    }
    chain
}

/// Sum of Pads of batched products along one axis, covering it once, (then a
/// Reshape/Permute chain) -> MatMulGroup writing each product where its Pad put it: the
/// pads' fills and copies, the sums and the chain's copies go. Attention's dqkv from dq,
/// dk, dv. Every absorbed node has one reader and is no output.
fn matmul_group(g: &mut Graph) -> usize {
    let uses = g.uses();
    let (live, reader) = (g.live_from(&g.outputs), readers(g));
    let mut n = 0;
    for id in g.ids() {
        if g.node(id).op != Op::Binary(BinaryOp::Add) || !live[id.index()] {
            continue;
        }
        let Some(products) = padded_products(g, &uses, id) else {
            continue;
        };
        let chain = movement_chain(g, &uses, &reader, id);
        let fits = (0..=chain.len()).rev().find_map(|len| {
            let l = undo_chain(g, id, &chain[..len])?;
            let end = if len == 0 { id } else { chain[len - 1] };
            let views = (products.iter())
                .map(|&(p, _, axis, start)| {
                    let shape = g.shape(p);
                    let at = l.slice(axis, start, shape[axis])?.reshape(shape)?;
                    output_view(&at, shape)
                })
                .collect::<Option<Vec<_>>>()?;
            Some((end, views))
        });
        let Some((end, views)) = fits else { continue };
        let mut attrs = vec![];
        let mut inputs = vec![];
        for (&(p, t, _, _), v) in products.iter().zip(views) {
            attrs.push(MatMulAttrs {
                c_view: Some(v),
                ..t
            });
            inputs.extend_from_slice(&g.node(p).inputs[..2]);
        }
        let node = &mut g.nodes[end.index()];
        node.op = Op::MatMulGroup(attrs);
        node.inputs = inputs;
        n += 1;
    }
    n
}

/// A plain batched product (no bias, ReLU or output view) under one Pad of a sum: its node,
/// its attributes, and the Pad's axis and start.
type Padded = (Id, MatMulAttrs, usize, usize);

/// The products behind a sum `root` of Pads (inner sums, Pads and products one reader
/// each), when the pads share an axis and cover it once.
fn padded_products(g: &Graph, uses: &[usize], root: Id) -> Option<Vec<Padded>> {
    let shape = g.shape(root).to_vec();
    let (mut stack, mut out) = (vec![root], vec![]);
    while let Some(x) = stack.pop() {
        let node = g.node(x);
        if x != root && !single_use(g, uses, x) {
            return None;
        }
        match node.op {
            Op::Binary(BinaryOp::Add) if node.shape == shape => stack.extend(&node.inputs),
            Op::Pad { axis, start } if node.shape == shape => {
                let p = node.inputs[0];
                let t = match g.node(p).op {
                    Op::MatMul(t) if !t.bias && !t.relu && t.c_view.is_none() => t,
                    _ => return None,
                };
                if g.shape(p).len() != 3 || !single_use(g, uses, p) {
                    return None;
                }
                out.push((p, t, axis, start));
            }
            _ => return None,
        }
    }
    out.sort_by_key(|&(_, _, _, start)| start);
    let axis = out.first()?.2;
    let mut at = 0;
    for &(p, _, a, start) in &out {
        if a != axis || start != at {
            return None;
        }
        at += g.shape(p)[axis];
    }
    (at == shape[axis] && out.len() > 1).then_some(out)
}

/// The layout of `x`'s elements in the value of the last node of `chain` (Reshape and
/// Permute nodes from `x` on): the chain undone from a contiguous layout of that value.
fn undo_chain(g: &Graph, x: Id, chain: &[Id]) -> Option<Layout> {
    let last = chain.last().copied().unwrap_or(x);
    let mut l = Layout::contiguous(g.shape(last));
    for (k, &c) in chain.iter().enumerate().rev() {
        let before = if k == 0 { x } else { chain[k - 1] };
        l = match &g.node(c).op {
            Op::Reshape => l.reshape(g.shape(before))?,
            Op::Permute(p) => {
                let mut inverse = vec![0; p.len()];
                p.iter().enumerate().for_each(|(i, &a)| inverse[a] = i);
                l.permute(&inverse)?
            }
            _ => return None,
        };
    }
    Some(l)
}

/// A product `[batch, M, N]` laid out as `l` as C's strides: rows written contiguous.
fn output_view(l: &Layout, shape: &[usize]) -> Option<crate::kernels::matmul::Strided> {
    let mut at = l.strided()?;
    if shape.get(2) == Some(&1) {
        at.col = 1;
    }
    (at.col == 1).then_some(at)
}
