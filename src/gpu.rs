//! The GPU context: adapter choice, device with the adapter's real limits, error capture,
//! pipeline cache, and the few places where the host waits for the GPU (always with a
//! timeout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kernels::Shader;
use crate::{Error, Result};

/// How long any single wait on the GPU may take before we call the device hung.
pub const GPU_TIMEOUT: Duration = Duration::from_secs(600);

/// What a binding slot of a kernel is, in binding order after the uniform at binding 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A compute pipeline with the explicit bind group layout it was built with.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: Shader,
    entry: String,
    access: Vec<Access>,
    constants: Vec<(String, u64)>,
}

pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// First uncaptured error or device-lost message; checked after every wait.
    fault: Arc<Mutex<Option<String>>>,
    modules: Mutex<HashMap<Shader, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    /// Number of host readbacks so far (tests check that a training step makes none).
    readbacks: std::sync::atomic::AtomicUsize,
    /// A 16-byte buffer bound where a kernel's binding is unused (a bias that is off).
    dummy: std::sync::OnceLock<crate::tensor::Tensor>,
}

/// One line per adapter, for `shadergrad info` and for "no adapter" errors.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, driver {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// All adapters the instance sees on the backends of `WGPU_BACKEND`, or else on the
/// primary backends (Vulkan, Metal, DX12), or else on any backend (OpenGL).
pub fn enumerate_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    if let Some(backends) = wgpu::Backends::from_env() {
        return pollster::block_on(instance.enumerate_adapters(backends));
    }
    let primary = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if !primary.is_empty() {
        return primary;
    }
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

impl Gpu {
    /// Pick an adapter from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`, else
    /// the best available, and open a device with the adapter's own limits.
    pub fn new() -> Result<Gpu> {
        let instance = instance();
        let adapters = enumerate_adapters(&instance);
        let available = if adapters.is_empty() {
            "none".to_string()
        } else {
            adapters
                .iter()
                .map(|a| describe_adapter(&a.get_info()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut requested = String::new();
        if let Ok(b) = std::env::var("WGPU_BACKEND") {
            requested += &format!(" for WGPU_BACKEND={b}");
        }
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) => {
                requested += &format!(" matching WGPU_ADAPTER_NAME={name}");
                let name = name.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&name))
            }
            Err(_) => {
                // Best first: discrete, integrated, virtual, CPU (or the reverse for
                // WGPU_POWER_PREF=low), then Vulkan/Metal/DX12 before OpenGL.
                let low_power =
                    wgpu::PowerPreference::from_env() == Some(wgpu::PowerPreference::LowPower);
                let rank = |a: &wgpu::Adapter| {
                    let info = a.get_info();
                    let device = match info.device_type {
                        wgpu::DeviceType::DiscreteGpu => {
                            if low_power {
                                1
                            } else {
                                0
                            }
                        }
                        wgpu::DeviceType::IntegratedGpu => {
                            if low_power {
                                0
                            } else {
                                1
                            }
                        }
                        wgpu::DeviceType::VirtualGpu => 2,
                        wgpu::DeviceType::Cpu => 3,
                        wgpu::DeviceType::Other => 4,
                    };
                    (device, (info.backend == wgpu::Backend::Gl) as u8)
                };
                adapters.into_iter().min_by_key(rank)
            }
        };
        let adapter = adapter.ok_or(Error::NoAdapter {
            requested,
            available,
        })?;
        Self::with_adapter(adapter)
    }

    pub fn with_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        // Ask for everything the adapter can do: the defaults (128 MiB bindings, 16 KiB
        // workgroup memory) are lower than most hardware's.
        let limits = adapter.limits();
        let features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let desc = wgpu::DeviceDescriptor {
            label: Some("shadergrad"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Device {
                adapter: describe_adapter(&info),
                msg: e.to_string(),
            })?;
        let fault: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
        });
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            limits,
            features,
            fault,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            dummy: std::sync::OnceLock::new(),
            readbacks: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A 4-element buffer for bindings a kernel does not read. It must never be bound where
    /// the kernel writes.
    pub fn dummy(&self) -> &crate::tensor::Tensor {
        self.dummy.get_or_init(|| crate::tensor::Tensor {
            buffer: Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused binding"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })),
            offset: 0,
            shape: vec![4],
        })
    }

    /// How many times [`Gpu::read_bytes`] has copied GPU data back to the host.
    pub fn readbacks(&self) -> usize {
        self.readbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// Subgroup kernels are usable: the device has subgroup operations with subgroups of at
    /// least 8 invocations, and `SHADERGRAD_NO_SUBGROUPS=1` is not set.
    pub fn subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
            && self.info.subgroup_min_size >= 8
            && std::env::var("SHADERGRAD_NO_SUBGROUPS").as_deref() != Ok("1")
    }

    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Err if the device reported an uncaptured error or was lost.
    pub fn check(&self, op: &str) -> Result<()> {
        let slot = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(msg) => Err(Error::gpu(op, msg.clone())),
            None => Ok(()),
        }
    }

    /// Block until `index` (or all submitted work) is done, at most [`GPU_TIMEOUT`].
    pub fn wait(&self, op: &str, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let poll = wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(GPU_TIMEOUT),
        };
        match self.device.poll(poll) {
            Ok(_) => self.check(op),
            Err(wgpu::PollError::Timeout) => Err(Error::Timeout {
                op: op.to_string(),
                seconds: GPU_TIMEOUT.as_secs(),
            }),
            // A failed submit shows up here; the validation error that caused it is the
            // useful message.
            Err(e) => self.check(op).and(Err(Error::gpu(op, e.to_string()))),
        }
    }

    fn module(&self, shader: Shader) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&shader) {
            return Ok(m.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.file()),
            source: wgpu::ShaderSource::Wgsl(shader.source().into()),
        };
        // Runtime bounds checks stay on: measured on lavapipe, dropping them gained nothing.
        let module = self.device.create_shader_module(desc);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                file: shader.file().into(),
                entry: "(module)".into(),
                msg: e.to_string(),
            });
        }
        let module = Arc::new(module);
        modules.insert(shader, module.clone());
        Ok(module)
    }

    /// The pipeline for `shader::entry` with binding 0 a uniform and bindings 1.. storage
    /// buffers of the given access, specialised by override `constants`. Built once, cached.
    pub fn pipeline(
        &self,
        shader: Shader,
        entry: &str,
        access: &[Access],
        constants: &[(&str, f64)],
    ) -> Result<Arc<Pipeline>> {
        let key = PipelineKey {
            shader,
            entry: entry.to_string(),
            access: access.to_vec(),
            constants: constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        };
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.module(shader)?;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, a) in access.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader {
                file: shader.file().into(),
                entry: entry.into(),
                msg: e.to_string(),
            });
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, p.clone());
        Ok(p)
    }

    /// Copy `size` bytes at `offset` of `buffer` back to the host. For tests, metrics and
    /// checkpoints only: never inside a training step.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.readbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let padded = size.div_ceil(wgpu::COPY_BUFFER_ALIGNMENT) * wgpu::COPY_BUFFER_ALIGNMENT;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
        let index = self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait("readback", Some(index))?;
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::gpu("readback map", e.to_string())),
            None => return Err(Error::gpu("readback map", "map callback never ran")),
        }
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::gpu("readback map", e.to_string()))?;
        let bytes = view[..size as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(bytes)
    }
}
