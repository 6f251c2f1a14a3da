//! GPU tensors: a range of a storage buffer plus a shape. Elements are 4 bytes (f32, or u32
//! for labels, indices and packed pixels). Many tensors may view one buffer (the flat
//! parameter, gradient and optimizer-state buffers), each at a 256-byte-aligned offset.

use std::sync::Arc;

use crate::gpu::Gpu;
use crate::platform::block_on;
use crate::{Error, Result};

/// Offsets of tensors inside shared buffers are multiples of this many bytes (wgpu's
/// `min_storage_buffer_offset_alignment` is at most 256 on every backend).
pub const ALIGN_BYTES: u64 = 256;

/// Bytes of one uniform-buffer window (the most WebGPU guarantees for a uniform binding).
/// Every buffer gets this much slack past its data, so that a window may start anywhere in it.
pub const WINDOW_BYTES: u64 = 65536;

#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Arc<wgpu::Buffer>,
    /// Byte offset of element 0 in `buffer`.
    pub offset: u64,
    pub shape: Vec<usize>,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Allocate a zeroed storage buffer of `bytes`, refusing sizes the adapter cannot bind.
pub fn storage_buffer(gpu: &Gpu, label: &str, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
    let bytes = bytes.max(4);
    let max_binding = gpu.limits.max_storage_buffer_binding_size;
    if bytes > max_binding {
        return Err(Error::Limit {
            op: label.to_string(),
            what: "storage buffer binding size (bytes)".into(),
            requested: bytes,
            limit: max_binding,
            hint: "use a smaller batch size or model".into(),
        });
    }
    let padded = bytes.div_ceil(wgpu::COPY_BUFFER_ALIGNMENT) * wgpu::COPY_BUFFER_ALIGNMENT;
    Ok(Arc::new(gpu.device.create_buffer(
        &wgpu::BufferDescriptor {
            label: Some(label),
            size: padded + WINDOW_BYTES,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        },
    )))
}

impl Tensor {
    pub fn zeros(gpu: &Gpu, label: &str, shape: &[usize]) -> Result<Tensor> {
        let bytes = numel(shape) as u64 * 4;
        Ok(Tensor {
            buffer: storage_buffer(gpu, label, bytes)?,
            offset: 0,
            shape: shape.to_vec(),
        })
    }

    pub fn from_f32(gpu: &Gpu, label: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::from_bytes(gpu, label, shape, bytemuck::cast_slice(data))
    }

    pub fn from_u32(gpu: &Gpu, label: &str, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::from_bytes(gpu, label, shape, bytemuck::cast_slice(data))
    }

    fn from_bytes(gpu: &Gpu, label: &str, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        if bytes.len() != numel(shape) * 4 {
            return Err(Error::shape(
                label,
                format!(
                    "{} elements given for shape {:?} ({} elements)",
                    bytes.len() / 4,
                    shape,
                    numel(shape)
                ),
            ));
        }
        let t = Self::zeros(gpu, label, shape)?;
        if !bytes.is_empty() {
            gpu.queue.write_buffer(&t.buffer, 0, bytes);
        }
        Ok(t)
    }

    /// A view of `shape` starting `elem_offset` elements into this tensor's range.
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Tensor {
        Tensor {
            buffer: self.buffer.clone(),
            offset: self.offset + elem_offset as u64 * 4,
            shape: shape.to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * 4
    }

    /// The binding of this tensor's range (at least 4 bytes, as WebGPU requires).
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        }
    }

    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        self.write("write_f32", gpu, data)
    }

    pub fn write_u32(&self, gpu: &Gpu, data: &[u32]) -> Result<()> {
        self.write("write_u32", gpu, data)
    }

    /// Queue `data` (one value per element) for upload; `op` names the caller in errors.
    fn write<T: bytemuck::Pod>(&self, op: &str, gpu: &Gpu, data: &[T]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::shape(
                op,
                format!(
                    "{} values for a tensor of shape {:?}",
                    data.len(),
                    self.shape
                ),
            ));
        }
        gpu.queue
            .write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// A [`WINDOW_BYTES`] uniform window holding elements `first..first + len`: its start
    /// (aligned down to `align` bytes) and the index of element `first` inside it. None when
    /// the elements do not fit one window.
    pub fn window(&self, first: usize, len: usize, align: u64) -> Option<(Tensor, u32)> {
        let start = self.offset + first as u64 * 4;
        let at = start - start % align;
        let base = (start - at) / 4;
        let fits = (base + len as u64) * 4 <= WINDOW_BYTES
            && first + len <= self.numel()
            && at + WINDOW_BYTES <= self.buffer.size();
        fits.then(|| {
            let t = Tensor {
                buffer: self.buffer.clone(),
                offset: at,
                shape: vec![WINDOW_BYTES as usize / 4],
            };
            (t, base as u32)
        })
    }

    /// Read back as f32 (tests, metrics, checkpoints only).
    pub fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        block_on("to_f32", self.to_f32_async(gpu))
    }

    pub fn to_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        block_on("to_u32", self.to_u32_async(gpu))
    }

    pub async fn to_f32_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = gpu.read_bytes_async(&self.buffer, self.offset, self.bytes());
        Ok(bytemuck::pod_collect_to_vec(&bytes.await?))
    }

    pub async fn to_u32_async(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        let bytes = gpu.read_bytes_async(&self.buffer, self.offset, self.bytes());
        Ok(bytemuck::pod_collect_to_vec(&bytes.await?))
    }
}
