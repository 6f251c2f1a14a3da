//! Run any graph: its parameters and inputs in buffers of their own, the rest planned and
//! lowered as a training step is. For tests (gradient checks), tools and models outside
//! the fixed training step.

use std::collections::HashMap;

use super::fuse::{fuse, FuseOptions};
use super::ir::*;
use super::{lower, plan, tune};
use crate::gpu::Gpu;
use crate::kernels::{run_all, Dispatch};
use crate::tensor::Tensor;
use crate::{Error, Result};

pub struct Session<'g> {
    gpu: &'g Gpu,
    g: Graph,
    map: Vec<Option<Id>>,
    tensors: lower::Tensors,
    dispatches: Vec<Dispatch>,
}

impl<'g> Session<'g> {
    /// Compile `g` so that its `outputs` can be read after [`Session::run`]; `fused` runs
    /// the fusion passes first.
    pub fn new(gpu: &'g Gpu, g: &Graph, fused: bool) -> Result<Self> {
        Self::with_fusion(gpu, g, fused.then(|| FuseOptions::for_gpu(gpu)))
    }

    /// [`Session::new`] with the given fusion passes (None: none).
    pub fn with_fusion(gpu: &'g Gpu, g: &Graph, fusion: Option<FuseOptions>) -> Result<Self> {
        let mut g = g.clone();
        if let Some(opts) = fusion {
            fuse(&mut g, opts);
        }
        tune::choose_layouts(gpu, &mut g)?;
        let (g, map) = g.toposort();
        let mem = plan::plan(&g, &|_, _| false, plan::reuse_from_env());
        // Parameters start at their initial values (seed 0); `write` replaces them.
        let init = crate::nn::init_params(&g.params, 0);
        let mut own = HashMap::new();
        for id in g.ids() {
            if let Op::Param(i) = g.node(id).op {
                let t = Tensor::from_f32(gpu, &g.params[i].name, &g.node(id).shape, &init[i])?;
                own.insert((id, 0), t);
            }
        }
        let tensors = lower::allocate(gpu, &g, &mem, &own)?;
        let choices = tune::choose_kernels(gpu, &g)?;
        let dispatches = lower::lower(gpu, &g, &tensors, &choices)?;
        Ok(Session {
            gpu,
            g,
            map,
            tensors,
            dispatches,
        })
    }

    /// The tensor holding `id`'s value (an id of the graph passed to [`Session::new`]).
    pub fn tensor(&self, id: Id) -> Result<Tensor> {
        let new = self.map.get(id.index()).copied().flatten().ok_or_else(|| {
            Error::shape(
                "session",
                format!("%{} is not live in the compiled graph", id.0),
            )
        })?;
        self.tensors.get(&self.g, new)
    }

    /// Write an input or parameter leaf (f32).
    pub fn write(&self, id: Id, values: &[f32]) -> Result<()> {
        self.tensor(id)?.write_f32(self.gpu, values)
    }

    pub fn write_u32(&self, id: Id, values: &[u32]) -> Result<()> {
        let t = self.tensor(id)?;
        if values.len() != t.numel() {
            return Err(Error::shape(
                "session",
                format!("{} values for {:?}", values.len(), t.shape),
            ));
        }
        self.gpu
            .queue
            .write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(values));
        Ok(())
    }

    /// One submit of every dispatch, waiting for it.
    pub fn run(&self) -> Result<()> {
        run_all(self.gpu, &self.dispatches)
    }

    pub fn read(&self, id: Id) -> Result<Vec<f32>> {
        self.tensor(id)?.to_f32(self.gpu)
    }

    /// The compiled dispatches, in order (to record them into a caller's pass).
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Kernel names of the compiled dispatches, in order.
    pub fn kernels(&self) -> Vec<&'static str> {
        self.dispatches.iter().map(|d| d.name).collect()
    }
}
