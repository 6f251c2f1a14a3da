//! Parameters, gradients and optimizer state, each in one flat GPU buffer with every tensor
//! at a 256-byte-aligned offset: the optimizer is one dispatch and a checkpoint one read.

use crate::gpu::Gpu;
use crate::model::ParamSpec;
use crate::tensor::{Tensor, ALIGN_BYTES};
use crate::{Error, Result};

pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    /// Element offset of each tensor in the flat buffers.
    pub offsets: Vec<usize>,
    /// Elements in each flat buffer, alignment padding included (padding stays zero).
    pub len: usize,
    /// Elements of the trainable region at the start of the buffers.
    pub trainable_len: usize,
    pub params: Tensor,
    pub grads: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

impl ParamStore {
    pub fn new(gpu: &Gpu, specs: Vec<ParamSpec>) -> Result<ParamStore> {
        let align = (ALIGN_BYTES / 4) as usize;
        // Trainable tensors first, then state (running statistics): the optimizer updates
        // elements 0..trainable_len only.
        let mut offsets = vec![0; specs.len()];
        let mut len = 0;
        let mut trainable_len = 0;
        for pass in [true, false] {
            for (i, s) in specs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.trainable == pass)
            {
                offsets[i] = len;
                len += s.numel().next_multiple_of(align);
            }
            if pass {
                trainable_len = len;
            }
        }
        let flat = |label| Tensor::zeros(gpu, label, &[len.max(1)]);
        Ok(ParamStore {
            params: flat("parameters")?,
            grads: flat("gradients")?,
            m: flat("optimizer m")?,
            v: flat("optimizer v")?,
            specs,
            offsets,
            len,
            trainable_len,
        })
    }

    fn view(&self, flat: &Tensor, i: usize) -> Tensor {
        flat.view(self.offsets[i], &self.specs[i].shape)
    }

    pub fn param(&self, i: usize) -> Tensor {
        self.view(&self.params, i)
    }

    pub fn grad(&self, i: usize) -> Tensor {
        self.view(&self.grads, i)
    }

    /// The trainable region of a flat buffer (what the optimizer reads and writes).
    pub fn trainable(&self, flat: &Tensor) -> Tensor {
        flat.view(0, &[self.trainable_len.max(1)])
    }

    /// Index of the parameter called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Flat host copy of a buffer laid out as the tensors' values, padding dropped.
    fn unflatten(&self, flat: &[f32]) -> Vec<Vec<f32>> {
        self.specs
            .iter()
            .zip(&self.offsets)
            .map(|(s, &o)| flat[o..o + s.numel()].to_vec())
            .collect()
    }

    fn flatten(&self, what: &str, values: &[Vec<f32>]) -> Result<Vec<f32>> {
        if values.len() != self.specs.len() {
            return Err(Error::shape(
                what,
                format!(
                    "{} tensors given, model has {}",
                    values.len(),
                    self.specs.len()
                ),
            ));
        }
        let mut flat = vec![0.0; self.len.max(1)];
        for ((s, &o), v) in self.specs.iter().zip(&self.offsets).zip(values) {
            if v.len() != s.numel() {
                return Err(Error::shape(
                    what,
                    format!(
                        "{} has {} values, shape {:?} needs {}",
                        s.name,
                        v.len(),
                        s.shape,
                        s.numel()
                    ),
                ));
            }
            flat[o..o + v.len()].copy_from_slice(v);
        }
        Ok(flat)
    }

    /// Read one flat buffer (params, grads, m or v) back as per-tensor values.
    pub fn read(&self, gpu: &Gpu, flat: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self.unflatten(&flat.to_f32(gpu)?))
    }

    pub async fn read_async(&self, gpu: &Gpu, flat: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self.unflatten(&flat.to_f32_async(gpu).await?))
    }

    pub fn write(&self, gpu: &Gpu, flat: &Tensor, values: &[Vec<f32>]) -> Result<()> {
        flat.write_f32(gpu, &self.flatten("write parameters", values)?)
    }
}
