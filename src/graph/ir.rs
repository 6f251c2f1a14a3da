//! The op graph: nodes `{op, inputs, shape, dtype}` appended in topological order, so the
//! node vector is itself a valid schedule. Leaves are inputs (filled by the executor's
//! gather), parameters (views of the flat parameter buffer) and scalar constants (never
//! materialised at full size). Shapes are checked when a node is added (see ops.rs).
//!
//! Some kernels write more than one tensor (a max pool's argmax, a loss's probabilities, a
//! conv's bias gradient beside its weight gradient): those extra tensors are the node's
//! `aux` outputs, read through `Aux(k)` alias nodes. The memory planner keeps a node's aux
//! outputs alive as long as the node itself.

use crate::kernels::conv2d::Padding;
use crate::kernels::loss::Loss;
use crate::model::ParamSpec;
use crate::{Error, Result};

/// A node of a [`Graph`]: an index into its node vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u32);

impl Id {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    /// Labels, indices, argmax positions.
    U32,
}

/// The elementwise functions are the elementwise kernel family's own (one WGSL file).
pub use crate::kernels::elementwise::{BinaryOp, UnaryOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Geometry of a 2-D convolution; the shapes come from its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvAttrs {
    pub stride: usize,
    pub padding: Padding,
    /// A bias operand follows x and w (set by fusion).
    pub bias: bool,
    /// ReLU applied to the output (set by fusion).
    pub relu: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAttrs {
    pub pool: usize,
    pub stride: usize,
}

/// `C = op(A) · op(B) (+ bias) (ReLU)`, batched when A and C have rank 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MatMulAttrs {
    /// A is stored `[.., K, M]`.
    pub ta: bool,
    /// B is stored `[.., N, K]`.
    pub tb: bool,
    pub bias: bool,
    pub relu: bool,
    /// Operand A (B) is read in place from the input's buffer through strides (set by
    /// fusion: a chain of movement ops folded into the matmul).
    pub a_view: Option<OperandView>,
    pub b_view: Option<OperandView>,
    /// The product `[batch, M, N]` is written at these strides into the node's value, which
    /// is then another shape (fusion: a Reshape/Permute chain of the product folded in).
    pub c_view: Option<crate::kernels::matmul::Strided>,
}

/// A rank-3 matmul operand `[batch, rows, cols]` (`shape`, as stored: before the
/// transpose flags) read from its input's buffer at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandView {
    pub shape: [usize; 3],
    pub at: crate::kernels::matmul::Strided,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Filled by the executor before each step (the batch's images, labels, targets).
    Input(String),
    /// Parameter `i` of [`Graph::params`]: a view of the flat parameter buffer.
    Param(usize),
    /// A scalar broadcast to the node's shape; materialised only where a kernel needs it.
    Const(f32),
    Unary(UnaryOp),
    /// [x or y (see [`UnaryOp::backward_uses`]), dy] -> dx.
    UnaryBackward(UnaryOp),
    Binary(BinaryOp),
    /// `[mask, a, b]` -> mask != 0 ? a : b, broadcast.
    Where,
    /// Reduce the listed axes away (no keepdim).
    Reduce(ReduceOp, Vec<usize>),
    /// `[x]` broadcast to the node's shape (x right-aligned, its size-1 axes stretched).
    Expand,
    /// Same elements, another shape: an alias, no dispatch.
    Reshape,
    /// Aux output k of the input node: an alias, no dispatch.
    Aux(usize),
    Permute(Vec<usize>),
    /// `[x]` -> x`[.., start..start + len, ..]` along `axis` (len from the node's shape).
    Slice {
        axis: usize,
        start: usize,
    },
    /// `[x]` placed at `start` along `axis` of a zero tensor of the node's shape.
    Pad {
        axis: usize,
        start: usize,
    },
    Concat(usize),
    /// [a, b (, bias)].
    MatMul(MatMulAttrs),
    /// `[a0, b0, a1, b1, ..]` -> the node's value, product i (attrs i, no bias) written at
    /// its `c_view`; the views together cover the value once. Set by fusion (fuse.rs): the
    /// gradients of slices of one value (attention's dq, dk, dv) written where they belong
    /// rather than padded and summed.
    MatMulGroup(Vec<MatMulAttrs>),
    /// [x, w (, bias)] -> y `[B, CO, OH, OW]`.
    Conv2d(ConvAttrs),
    /// `[dy, w]` -> dx (the node's shape is x's).
    Conv2dBackwardInput(ConvAttrs),
    /// `[dy, x]` -> dweight; with `bias`, aux 0 is dbias `[CO]`.
    Conv2dBackwardWeight {
        conv: ConvAttrs,
        bias: bool,
    },
    /// `[x]` -> y; aux 0 is the argmax (u32, same shape as y).
    MaxPool2d(PoolAttrs),
    /// `[pool node, dy]` -> dx. With `relu`, also the backward of a ReLU just before the
    /// pool (dx kept where the pool's output is positive).
    MaxPool2dBackward {
        pool: PoolAttrs,
        relu: bool,
    },
    /// `[x]` -> the mean of each window.
    AvgPool2d(PoolAttrs),
    /// `[dy]` -> dx (the node's shape is x's).
    AvgPool2dBackward(PoolAttrs),
    /// `[x]` -> x * mask, mask 0 with probability p else 1 / (1 - p), drawn afresh each step
    /// from a counter-based generator keyed by `salt` (one per dropout in a graph); aux 0
    /// is the mask.
    Dropout {
        p: f32,
        salt: u32,
    },
    /// Fused conv + bias + ReLU + max pool: `[x, w, b]` -> y; aux 0 the argmax.
    ConvReluPool {
        conv: ConvAttrs,
        pool: PoolAttrs,
    },
    /// [x, dy (of the pool), fused node] -> dweight; aux 0 dbias.
    ConvReluPoolBackwardWeight {
        conv: ConvAttrs,
        pool: PoolAttrs,
    },
    /// [table `[V, D]`, idx u32 `[..]`] -> [.., D]: the table's rows at idx.
    Embedding,
    /// [idx, dy `[.., D]`] -> dtable `[V, D]` (the node's shape): rows of dy summed per index.
    EmbeddingBackward,
    /// `[x]` -> softmax over the last axis. With `causal` = T > 0, x is viewed `[.., T, C]` and
    /// query row t only sees columns j <= t (the others get probability 0).
    Softmax {
        causal: usize,
    },
    /// [y (the softmax's output), dy] -> dx.
    SoftmaxBackward {
        causal: usize,
    },
    /// [x `[.., C]`, gamma `[C]`, beta `[C]`] -> y, normalised over the last axis; aux 0 the
    /// per-row mean, aux 1 the per-row 1 / sqrt(var + eps).
    LayerNorm {
        eps: f32,
    },
    /// `[x, layer-norm node, gamma, dy]` -> dx.
    LayerNormBackwardInput {
        eps: f32,
    },
    /// `[x, layer-norm node, dy]` -> dgamma `[C]`; aux 0 dbeta `[C]`.
    LayerNormBackwardParams {
        eps: f32,
    },
    /// Batch normalisation over axis 1 of x `[B, C, ...]`, then a ReLU with `relu`.
    /// Training: `[x, gamma, beta]` -> y with the batch's statistics; aux 0 its mean `[C]`, aux 1
    /// its biased variance `[C]`. Evaluation: `[x, gamma, beta, mean, var]` -> y with the given
    /// (running) statistics, no aux.
    BatchNorm {
        eps: f32,
        relu: bool,
        training: bool,
    },
    /// [x, batch-norm node (training), gamma, dy] -> dx; aux 0 dgamma `[C]`, aux 1 dbeta `[C]`.
    BatchNormBackward {
        eps: f32,
        relu: bool,
    },
    /// Fused (fuse.rs) BatchNorm{relu} then a max pool of `pool` x `pool` windows every
    /// `pool`: the inputs of BatchNorm -> the pooled y; aux 0 the argmax positions in the
    /// H x W plane as f32 (y's shape), training: aux 1 mean, aux 2 var `[C]`. The normalised
    /// values are never written.
    BatchNormPool {
        eps: f32,
        pool: usize,
        training: bool,
    },
    /// [x, BatchNormPool node, gamma, dy (pooled)] -> dx; aux 0 dgamma, aux 1 dbeta.
    BatchNormPoolBackward {
        eps: f32,
        pool: usize,
    },
    /// `[x]` -> a value of its own holding x's elements. Never merged with another node (no
    /// common-subexpression elimination), so each copy gets its own buffer: how parameters
    /// that share one gradient each get theirs.
    Copy,
    /// [state, value]: write value into the state leaf (a non-trainable parameter such as
    /// a running mean) at the end of the step; a sink, its own value is the state's buffer.
    Assign,
    /// [logits or outputs z `[B, C]`, labels u32 `[B]` or targets f32 `[B, C]`] -> per-sample
    /// loss `[B]`; aux 0 the probabilities (or predictions) `[B, C]`.
    Loss(Loss),
    /// `[loss node, z, labels or targets]` -> dz of the batch mean of the loss.
    LossBackward(Loss),
}

impl Op {
    /// Ops whose value is another node's buffer (no dispatch, no allocation).
    pub fn is_alias(&self) -> bool {
        matches!(self, Op::Reshape | Op::Aux(_))
    }

    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input(_) | Op::Param(_) | Op::Const(_))
    }

    /// A short name for errors and logs.
    pub fn name(&self) -> String {
        format!("{self:?}")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<Id>,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Extra tensors the node's kernel writes: (shape, dtype).
    pub aux: Vec<(Vec<usize>, DType)>,
}

impl Node {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An op graph plus the parameters its `Param` leaves name, and the values the caller reads.
#[derive(Clone, Debug)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub params: Vec<ParamSpec>,
    /// Values kept past the step (losses, probabilities, parameter gradients).
    pub outputs: Vec<Id>,
    /// Evaluation graphs set this false: dropout becomes the identity.
    pub training: bool,
}

impl Default for Graph {
    fn default() -> Self {
        Graph {
            nodes: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            training: true,
        }
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn shape(&self, id: Id) -> &[usize] {
        &self.nodes[id.index()].shape
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = Id> {
        (0..self.nodes.len() as u32).map(Id)
    }

    /// Append a node whose shape was checked by the caller; an identical node already in
    /// the graph is returned instead (common-subexpression elimination for free).
    pub fn push(&mut self, op: Op, inputs: Vec<Id>, shape: Vec<usize>, dtype: DType) -> Id {
        self.push_with_aux(op, inputs, shape, dtype, Vec::new())
    }

    pub fn push_with_aux(
        &mut self,
        op: Op,
        inputs: Vec<Id>,
        shape: Vec<usize>,
        dtype: DType,
        aux: Vec<(Vec<usize>, DType)>,
    ) -> Id {
        let node = Node {
            op,
            inputs,
            shape,
            dtype,
            aux,
        };
        if !matches!(node.op, Op::Input(_) | Op::Param(_) | Op::Copy) {
            if let Some(i) = self.nodes.iter().rposition(|n| *n == node) {
                return Id(i as u32);
            }
        }
        self.nodes.push(node);
        Id(self.nodes.len() as u32 - 1)
    }

    /// Register a parameter tensor and return its leaf.
    pub fn param(&mut self, spec: ParamSpec) -> Id {
        let shape = spec.shape.clone();
        self.params.push(spec);
        self.push(Op::Param(self.params.len() - 1), vec![], shape, DType::F32)
    }

    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Id {
        self.push(Op::Input(name.into()), vec![], shape.to_vec(), dtype)
    }

    /// The leaf of input `name`, if the graph has one.
    pub fn find_input(&self, name: &str) -> Option<Id> {
        self.ids()
            .find(|&i| matches!(&self.node(i).op, Op::Input(n) if n == name))
    }

    pub fn mark_output(&mut self, id: Id) {
        if !self.outputs.contains(&id) {
            self.outputs.push(id);
        }
    }

    pub fn is_output(&self, id: Id) -> bool {
        self.outputs.contains(&id)
    }

    /// How many live nodes read each node, counting outputs as readers (dead nodes, such
    /// as the input gradient of a first layer, do not count).
    pub fn uses(&self) -> Vec<usize> {
        let live = self.live_from(&self.outputs);
        let mut uses = vec![0; self.nodes.len()];
        for (n, _) in self.nodes.iter().zip(&live).filter(|(_, &l)| l) {
            for i in &n.inputs {
                uses[i.index()] += 1;
            }
        }
        for o in &self.outputs {
            uses[o.index()] += 1;
        }
        uses
    }

    /// Nodes that `roots` depend on (themselves included).
    pub fn live_from(&self, roots: &[Id]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for r in roots {
            live[r.index()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for inp in &self.nodes[i].inputs {
                    live[inp.index()] = true;
                }
            }
        }
        live
    }

    /// The node whose buffer holds `id`'s value, following aliases, and which of its
    /// tensors (0 = its value, k + 1 = aux k).
    pub fn storage_of(&self, mut id: Id) -> (Id, usize) {
        let mut slot = 0;
        loop {
            let n = self.node(id);
            match n.op {
                Op::Reshape => id = n.inputs[0],
                Op::Aux(k) if slot == 0 => {
                    slot = k + 1;
                    id = n.inputs[0];
                }
                _ => return (id, slot),
            }
        }
    }

    /// The live nodes (those `outputs` depend on) in a dependency order, renumbered:
    /// fusion may rewrite a node to read one that comes later. Returns the new graph and
    /// each old id's new id.
    pub fn toposort(&self) -> (Graph, Vec<Option<Id>>) {
        let live = self.live_from(&self.outputs);
        let mut new_id: Vec<Option<Id>> = vec![None; self.nodes.len()];
        let mut out = Graph {
            nodes: Vec::new(),
            params: self.params.clone(),
            outputs: Vec::new(),
            training: self.training,
        };
        for root in 0..self.nodes.len() {
            if !live[root] || new_id[root].is_some() {
                continue;
            }
            // Iterative depth-first post-order from `root`.
            let mut stack = vec![(root, 0usize)];
            while let Some((i, next)) = stack.pop() {
                if let Some(&x) = self.nodes[i].inputs.get(next) {
                    stack.push((i, next + 1));
                    if new_id[x.index()].is_none() {
                        stack.push((x.index(), 0));
                    }
                    continue;
                }
                if new_id[i].is_some() {
                    continue;
                }
                let mut n = self.nodes[i].clone();
                n.inputs = n
                    .inputs
                    .iter()
                    .map(|x| new_id[x.index()].unwrap_or(*x))
                    .collect();
                out.nodes.push(n);
                new_id[i] = Some(Id(out.nodes.len() as u32 - 1));
            }
        }
        out.outputs = self
            .outputs
            .iter()
            .filter_map(|o| new_id[o.index()])
            .collect();
        (out, new_id)
    }

    /// One line per node, for logs (`RUST_LOG=debug`) and test failures.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let ins: Vec<String> = n.inputs.iter().map(|x| format!("%{}", x.0)).collect();
            s += &format!(
                "%{i} = {} ({}) : {:?}\n",
                n.op.name(),
                ins.join(", "),
                n.shape
            );
        }
        s
    }
}

/// Elements of `shape`.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The broadcast shape of `a` and `b` (NumPy rules), or an error naming the op.
pub fn broadcast_shape(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map(|j| s[j]).unwrap_or(1);
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(Error::shape(
                op,
                format!("shapes {a:?} and {b:?} do not broadcast (axis {i}: {x} vs {y}); hint: reshape one operand so that each axis matches or is 1"),
            )),
        })
        .collect()
}
