//! The GPU context: adapter choice, device with the adapter's real limits, error capture,
//! pipeline cache, and the few places where the host waits for the GPU (always with a
//! timeout). Each wait has an async core that also runs in the browser (WebGPU, where the
//! page's event loop delivers the callbacks); the native blocking forms wrap it (see
//! [`crate::platform`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::platform::block_on;
#[cfg(native)]
use crate::platform::Instant;

use crate::kernels::{Family, Shader};
use crate::{Error, Result};

/// How long any single wait on the GPU may take before we call the device hung, unless
/// `SHADERGRAD_GPU_TIMEOUT` (seconds) or [`Gpu::set_timeout`] says otherwise.
pub const GPU_TIMEOUT: Duration = Duration::from_secs(600);

/// The most uniform bindings a window kernel uses (conv2d_relu_pool_backward_weight: its
/// params and 6 windows).
pub const WINDOW_UNIFORMS: u32 = 7;

/// Environment variable that keeps naga's runtime checks (bounds clamps, loop bounding) in
/// the shaders of a release build: `SHADERGRAD_SHADER_CHECKS=1`.
pub const SHADER_CHECKS_ENV: &str = "SHADERGRAD_SHADER_CHECKS";

/// Whether shader modules keep naga's runtime checks: always in debug and test builds
/// (debug assertions on), in release builds only with `SHADERGRAD_SHADER_CHECKS=1`.
pub fn shader_checks() -> bool {
    cfg!(debug_assertions) || std::env::var(SHADER_CHECKS_ENV).as_deref() == Ok("1")
}

/// Environment variable overriding [`GPU_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "SHADERGRAD_GPU_TIMEOUT";

/// Environment variable naming a directory for wgpu's pipeline cache (the driver's compiled
/// pipelines, one file per adapter), used where the adapter has PIPELINE_CACHE. Off unless
/// set: `shadergrad bench` measures whether it shortens the cold start.
pub const PIPELINE_CACHE_ENV: &str = "SHADERGRAD_PIPELINE_CACHE";

/// What a binding slot of a kernel is, in binding order after the uniform at binding 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
    /// A read-only uniform-buffer window of [`crate::tensor::WINDOW_BYTES`] (see
    /// matmul_subgroup.wgsl: on CPU adapters uniform loads cost a tenth of storage loads).
    Window,
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
    /// Number of queue submits through [`Gpu::submit`] (tests check a step is one).
    submits: std::sync::atomic::AtomicUsize,
    /// A 16-byte buffer bound where a kernel's binding is unused (a bias that is off).
    dummy: std::sync::OnceLock<crate::tensor::Tensor>,
    dummy_window: std::sync::OnceLock<crate::tensor::Tensor>,
    /// Longest single wait on the GPU, in microseconds (see [`Gpu::set_timeout`]).
    timeout_us: AtomicU64,
    /// The kernel family forced by `SHADERGRAD_KERNELS` when the device was opened.
    forced: Option<Family>,
    /// wgpu's pipeline cache and its file, with [`PIPELINE_CACHE_ENV`].
    pipeline_cache: Option<(wgpu::PipelineCache, std::path::PathBuf)>,
}

/// One line per adapter, for `shadergrad info` and for "no adapter" errors.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?}, driver {} {})",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    )
}

#[cfg(native)]
fn instance() -> wgpu::Instance {
    private_runtime_dir();
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Mesa's window-system code prints "error: XDG_RUNTIME_DIR is invalid or not set" when
/// the variable is unset or names no directory (containers, CI, ssh without a session).
/// Give it a private one (/tmp/shadergrad-runtime-UID, mode 0700) before any instance is
/// created; a valid setting is left alone.
pub fn private_runtime_dir() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let valid = std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|d| !d.is_empty() && std::path::Path::new(&d).is_dir());
        if valid {
            return;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            let dir = std::env::temp_dir().join(format!("shadergrad-runtime-{uid}"));
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
            // Only a directory of ours that no one else can write.
            let ours = std::fs::symlink_metadata(&dir)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0);
            if ours {
                // Before any other thread reads the environment (the first instance).
                std::env::set_var("XDG_RUNTIME_DIR", &dir);
            }
        }
    });
}

/// A warning for a CPU adapter (lavapipe, llvmpipe, WARP, SwiftShader): naming the GPU that
/// exists where there is one, else what training there costs. None on a GPU.
#[cfg(native)]
pub fn cpu_adapter_warning(info: &wgpu::AdapterInfo) -> Option<String> {
    if info.device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    // Vulkan, Metal and DX12 only: probing OpenGL through EGL logs errors where it has no
    // driver, and a GPU shows up on a primary backend.
    let instance = instance();
    let gpus: Vec<String> =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
            .iter()
            .map(|a| a.get_info())
            .filter(|i| {
                i.device_type != wgpu::DeviceType::Cpu && i.device_type != wgpu::DeviceType::Other
            })
            .map(|i| format!("{} ({:?})", i.name, i.backend))
            .collect();
    Some(match gpus.first() {
        Some(g) => format!(
            "warning: {} is a CPU emulator, but a GPU exists: {g}; choose it with WGPU_ADAPTER_NAME or WGPU_BACKEND",
            info.name
        ),
        None => format!(
            "warning: training on {} ({:?}), a CPU emulator: expect it to be slow (the seed CNN: ~25 s an epoch on two cores)",
            info.name, info.backend
        ),
    })
}

/// wgpu's multi-line error reports ("Validation Error\n\nCaused by:\n  In ...") as one line.
fn one_line(msg: &str) -> String {
    let parts: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if parts.is_empty() {
        "(no message)".to_string()
    } else {
        parts.join(" ")
    }
}

/// The backend names `WGPU_BACKEND` accepts (wgpu's own list).
#[cfg(native)]
const BACKEND_NAMES: &str = "vulkan (vk), metal (mtl), dx12 (d3d12), gl (opengl, gles)";

/// Every adapter on every backend, whatever `WGPU_BACKEND` says: what an error lists when
/// the requested backend or name matches nothing.
#[cfg(native)]
fn all_adapters() -> Vec<wgpu::Adapter> {
    private_runtime_dir();
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    };
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

#[cfg(native)]
fn describe_all(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        return "none".to_string();
    }
    adapters
        .iter()
        .map(|a| describe_adapter(&a.get_info()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The timeout from `SHADERGRAD_GPU_TIMEOUT`, else [`GPU_TIMEOUT`].
fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(GPU_TIMEOUT),
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::usage(
                    TIMEOUT_ENV,
                    format!("{s:?} is not a positive number of seconds"),
                )
            }),
    }
}

/// All adapters the instance sees on the backends of `WGPU_BACKEND`, or else on the
/// primary backends (Vulkan, Metal, DX12), or else on any backend (OpenGL).
#[cfg(native)]
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
    #[cfg(native)]
    pub fn new() -> Result<Gpu> {
        // A bad setting is refused whether or not an adapter exists.
        timeout_from_env()?;
        let mut requested = String::new();
        if let Ok(b) = std::env::var("WGPU_BACKEND") {
            requested += &format!(" for WGPU_BACKEND={b}");
            // wgpu ignores names it does not know, which would leave no backend at all.
            let unknown: Vec<&str> = b
                .split(',')
                .map(str::trim)
                .filter(|t| wgpu::Backends::from_comma_list(t).is_empty())
                .collect();
            if !unknown.is_empty() {
                requested += &format!(
                    " ({} is not a backend; use {BACKEND_NAMES})",
                    unknown.join(", ")
                );
                return Err(Error::NoAdapter {
                    requested,
                    available: describe_all(&all_adapters()),
                });
            }
        }
        let instance = instance();
        let adapters = enumerate_adapters(&instance);
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
        match adapter {
            Some(adapter) => Self::with_adapter(adapter),
            // List what exists on every backend, not only on the requested ones.
            None => Err(Error::NoAdapter {
                requested,
                available: describe_all(&all_adapters()),
            }),
        }
    }

    /// The browser's adapter (`navigator.gpu`, high performance) with its own limits.
    #[cfg(not(native))]
    pub async fn request() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::BROWSER_WEBGPU,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        };
        let adapter = instance
            .request_adapter(&options)
            .await
            .map_err(|e| Error::NoAdapter {
                requested: format!(" from navigator.gpu ({e})"),
                available:
                    "none: this browser has no WebGPU adapter (Chromium: --enable-unsafe-webgpu)"
                        .into(),
            })?;
        let limits = adapter.limits();
        Self::open(adapter, limits).await
    }

    #[cfg(native)]
    pub fn with_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        // Ask for everything the adapter can do: the defaults (128 MiB bindings, 16 KiB
        // workgroup memory) are lower than most hardware's.
        let limits = adapter.limits();
        Self::with_adapter_limits(adapter, limits)
    }

    /// A device on `adapter` that enforces `limits` (each at most the adapter's): how the
    /// tests rehearse a smaller GPU than the one they run on.
    #[cfg(native)]
    pub fn with_adapter_limits(adapter: wgpu::Adapter, limits: wgpu::Limits) -> Result<Gpu> {
        block_on("Gpu::open", Self::open(adapter, limits))
    }

    /// [`Gpu::with_adapter_limits`]'s async core.
    pub async fn open(adapter: wgpu::Adapter, limits: wgpu::Limits) -> Result<Gpu> {
        let info = adapter.get_info();
        let timeout = timeout_from_env()?;
        let forced = Family::from_env()?;
        let cache_dir = std::env::var_os(PIPELINE_CACHE_ENV)
            .filter(|d| !d.is_empty())
            .filter(|_| adapter.features().contains(wgpu::Features::PIPELINE_CACHE));
        let mut features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        if cache_dir.is_some() {
            features |= wgpu::Features::PIPELINE_CACHE;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("shadergrad"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = adapter
            .request_device(&desc)
            .await
            .map_err(|e| Error::Device {
                adapter: describe_adapter(&info),
                msg: e.to_string(),
            })?;
        let fault = watch_faults(&device);
        let pipeline_cache = cache_dir.and_then(|dir| open_pipeline_cache(&device, &info, &dir));
        Ok(Gpu {
            pipeline_cache,
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
            dummy_window: std::sync::OnceLock::new(),
            readbacks: std::sync::atomic::AtomicUsize::new(0),
            submits: std::sync::atomic::AtomicUsize::new(0),
            timeout_us: AtomicU64::new(timeout.as_micros().min(u64::MAX as u128) as u64),
            forced: None,
        })
        .and_then(|mut gpu| {
            if let Some(f) = forced {
                gpu.force_family(f)?;
            }
            Ok(gpu)
        })
    }

    /// Run the kernels of `family` from now on (what `SHADERGRAD_KERNELS` does at creation);
    /// Err, naming what is missing, when this adapter cannot run them.
    pub fn force_family(&mut self, family: Family) -> Result<()> {
        let missing = match family {
            Family::Gpu => (self.limits.max_compute_workgroup_storage_size
                < crate::kernels::matmul::TILED_MIN_WORKGROUP_BYTES)
                .then_some("workgroup memory for the tiled kernels"),
            Family::Window => (!self.window_capable())
                .then_some("subgroups of at least 8 lanes and 7 uniform buffers of 64 KiB"),
            Family::Subgroup => {
                (!self.subgroup_capable()).then_some("subgroups of at least 8 lanes")
            }
            Family::Portable => None,
        };
        if let Some(missing) = missing {
            return Err(Error::usage(
                crate::kernels::family::KERNELS_ENV,
                format!(
                    "{family}: {} lacks {missing}; use another family (gpu, window, subgroup, portable) or unset it",
                    self.describe()
                ),
            ));
        }
        self.forced = Some(family);
        Ok(())
    }

    /// The kernel family this device runs: the forced one, else the adapter's default
    /// (gpu for discrete, integrated and virtual GPUs and a browser's GPU; window for CPU
    /// adapters that can bind the windows; subgroup; else portable). See
    /// [`crate::kernels::family`].
    pub fn family(&self) -> Family {
        if let Some(f) = self.forced {
            return f;
        }
        use wgpu::DeviceType::*;
        // A browser tells only whether its adapter is a software fallback (Cpu, such as
        // SwiftShader, where workgroup barriers are slow and the portable kernels win) or
        // not (Other: a GPU, for the tiled kernels).
        let browser_gpu =
            self.info.backend == wgpu::Backend::BrowserWebGpu && self.info.device_type == Other;
        let gpu_like = browser_gpu
            || matches!(
                self.info.device_type,
                DiscreteGpu | IntegratedGpu | VirtualGpu
            );
        if gpu_like
            && self.limits.max_compute_workgroup_storage_size
                >= crate::kernels::matmul::TILED_MIN_WORKGROUP_BYTES
        {
            Family::Gpu
        } else if self.window_capable() && self.is_cpu() {
            Family::Window
        } else if self.subgroup_capable() {
            Family::Subgroup
        } else {
            Family::Portable
        }
    }

    /// The longest any single wait on the GPU may take before it fails with
    /// [`Error::Timeout`].
    pub fn timeout(&self) -> Duration {
        Duration::from_micros(self.timeout_us.load(Ordering::Relaxed))
    }

    pub fn set_timeout(&self, timeout: Duration) {
        let us = timeout.as_micros().clamp(1, u64::MAX as u128) as u64;
        self.timeout_us.store(us, Ordering::Relaxed);
    }

    #[cfg(native)]
    fn timeout_error(&self, op: &str) -> Error {
        Error::Timeout {
            op: op.to_string(),
            seconds: self.timeout().as_secs_f64(),
        }
    }

    /// A zeroed uniform window for window bindings a kernel variant does not read.
    pub fn dummy_window(&self) -> &crate::tensor::Tensor {
        self.dummy_window.get_or_init(|| crate::tensor::Tensor {
            buffer: Arc::new(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused window"),
                size: crate::tensor::WINDOW_BYTES,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: false,
            })),
            offset: 0,
            shape: vec![crate::tensor::WINDOW_BYTES as usize / 4],
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

    /// How many command buffers [`Gpu::submit`] has submitted.
    pub fn submits(&self) -> usize {
        self.submits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Submit one command buffer, counted (see [`Gpu::submits`]).
    pub fn submit(&self, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        self.submits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queue.submit([commands])
    }

    pub fn describe(&self) -> String {
        describe_adapter(&self.info)
    }

    /// The device has subgroup operations with subgroups of at least 8 invocations, and
    /// `SHADERGRAD_NO_SUBGROUPS=1` is not set.
    fn subgroup_capable(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
            && self.info.subgroup_min_size >= 8
            && std::env::var("SHADERGRAD_NO_SUBGROUPS").as_deref() != Ok("1")
    }

    /// The window kernels are subgroup kernels, bind up to [`WINDOW_UNIFORMS`] uniform
    /// buffers and need whole 64 KiB windows.
    fn window_capable(&self) -> bool {
        let l = &self.limits;
        self.subgroup_capable()
            && l.max_uniform_buffer_binding_size >= crate::tensor::WINDOW_BYTES
            && l.max_uniform_buffers_per_shader_stage >= WINDOW_UNIFORMS
    }

    /// Subgroup kernels are usable and the family runs them (window, subgroup, and gpu
    /// where the adapter has subgroups; never portable).
    pub fn subgroups(&self) -> bool {
        self.subgroup_capable() && self.family() != Family::Portable
    }

    /// Whether kernels should read through uniform windows where they have a window variant:
    /// the window family (by default on CPU adapters such as lavapipe, where a uniform load
    /// costs a tenth of a storage load). A device with smaller limits keeps the
    /// storage-buffer kernels.
    pub fn windows(&self) -> bool {
        self.window_capable() && self.family() == Family::Window
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

    /// Block until `index` (or all submitted work) is done, at most [`Gpu::timeout`].
    #[cfg(native)]
    pub fn wait(&self, op: &str, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.wait_for(op, index, self.timeout())
    }

    /// In the browser only the fault check: a tab may not block, and WebGPU runs one queue
    /// in order, so whatever reads the results later (a readback) sees the work done. Await
    /// [`Gpu::settle`] to know when it is.
    #[cfg(not(native))]
    pub fn wait(&self, op: &str, _index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check(op)
    }

    /// Wait until all submitted work is done (natively: [`Gpu::wait`]; in the browser the
    /// queue's submitted-work-done callback).
    pub async fn settle(&self, op: &str) -> Result<()> {
        #[cfg(native)]
        return self.wait(op, None);
        #[cfg(not(native))]
        {
            let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
            self.queue.on_submitted_work_done(move || {
                let _ = tx.send(());
            });
            let _ = rx.receive().await;
            self.check(op)
        }
    }

    #[cfg(native)]
    fn wait_for(
        &self,
        op: &str,
        index: Option<wgpu::SubmissionIndex>,
        timeout: Duration,
    ) -> Result<()> {
        let poll = wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(timeout),
        };
        let polled = self.device.poll(poll);
        if let Err(wgpu::PollError::Timeout) = polled {
            return self.check(op).and(Err(self.timeout_error(op)));
        }
        if self.check(op).is_ok() {
            // A failed submit shows up as a poll error; the validation error that caused
            // it (in the fault slot) is the useful message when there is one.
            return polled
                .map(|_| ())
                .map_err(|e| Error::gpu(op, one_line(&e.to_string())));
        }
        // A fault was recorded. A lost or destroyed device only reports itself from a poll
        // once the work already submitted has finished: give that a bounded wait, so the
        // error says "device lost" rather than only what failed after it.
        let drain = wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(timeout.min(Duration::from_secs(10))),
        };
        let _ = self.device.poll(drain);
        self.check(op)
    }

    fn module(&self, shader: Shader) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&shader) {
            return Ok(m.clone());
        }
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.file()),
            source: wgpu::ShaderSource::Wgsl(shader.source().into()),
        };
        let file = shader.file();
        let error = move |msg| Error::Shader {
            file: file.into(),
            entry: "(module)".into(),
            msg,
        };
        let module = self.scoped(error, || {
            if shader_checks() {
                return self.device.create_shader_module(desc);
            }
            // SAFETY: every kernel guards its own indexing (bounds-checked loads and stores,
            // grids sized with div_ceil) and tests/kernels.rs runs each against its reference
            // on awkward shapes with the checks on (debug and test builds, CI); release
            // builds drop naga's clamps and loop counters, worth up to a third of a GEMM.
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        })?;
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
        let entries = layout_entries(access);
        let file = shader.file();
        let name = entry.to_string();
        let error = move |msg| Error::Shader {
            file: file.into(),
            entry: name,
            msg,
        };
        let (layout, pipeline) = self.scoped(error, || {
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(entry),
                    entries: &entries,
                });
            let pipeline_layout =
                self.device
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
                    cache: self.pipeline_cache.as_ref().map(|(c, _)| c),
                });
            (layout, pipeline)
        })?;
        let p = Arc::new(Pipeline { pipeline, layout });
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, p.clone());
        Ok(p)
    }

    /// Write the pipeline cache (see [`PIPELINE_CACHE_ENV`]) to its file, if there is one.
    pub fn save_pipeline_cache(&self) -> Result<()> {
        let Some((cache, file)) = &self.pipeline_cache else {
            return Ok(());
        };
        let Some(data) = cache.get_data() else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        // Atomically: another process may be reading it.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, data).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, file).map_err(|e| Error::io(file, e))
    }

    /// Run `make` inside a validation error scope; what it raised becomes `error(message)`.
    /// Natively the scope's verdict is awaited here (a bad shader fails at once); in the
    /// browser it arrives later and goes to the fault slot, so the next check reports it.
    pub fn scoped<T>(
        &self,
        error: impl FnOnce(String) -> Error + 'static,
        make: impl FnOnce() -> T,
    ) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let made = make();
        let verdict = scope.pop();
        #[cfg(native)]
        if let Some(e) = pollster::block_on(verdict) {
            return Err(error(e.to_string()));
        }
        #[cfg(not(native))]
        {
            let fault = self.fault.clone();
            crate::platform::spawn(async move {
                if let Some(e) = verdict.await {
                    let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert_with(|| one_line(&error(e.to_string()).to_string()));
                }
            });
        }
        Ok(made)
    }

    /// Copy `size` bytes at `offset` of `buffer` back to the host. For tests, metrics and
    /// checkpoints only: never inside a training step. Native; see
    /// [`Gpu::read_bytes_async`].
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        block_on("read_bytes", self.read_bytes_async(buffer, offset, size))
    }

    /// [`Gpu::read_bytes`]'s async core.
    pub async fn read_bytes_async(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
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
        let index = self.submit(encoder.finish());
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        let mapped = self.mapped(index, rx).await;
        mapped.and_then(|()| self.check("readback"))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::gpu("readback map", e.to_string()))?;
        let bytes = view[..size as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(bytes)
    }

    /// Natively: poll the device until the map callback of the readback submitted as
    /// `index` has run (wgpu runs callbacks inside polls), never past the timeout.
    #[cfg(native)]
    async fn mapped(&self, index: wgpu::SubmissionIndex, rx: MapReceiver) -> Result<()> {
        let mut received = std::pin::pin!(rx.receive());
        let deadline = Instant::now() + self.timeout();
        let mut index = Some(index);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_for("readback", index.take(), left)?;
            match crate::platform::poll_once(received.as_mut()) {
                Some(r) => return self.map_result(r),
                None if left.is_zero() => return Err(self.timeout_error("readback map")),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// In the browser: the page's event loop runs the map callback; await it.
    #[cfg(not(native))]
    async fn mapped(&self, _index: wgpu::SubmissionIndex, rx: MapReceiver) -> Result<()> {
        let r = rx.receive().await;
        self.map_result(r)
    }

    fn map_result(&self, r: Option<std::result::Result<(), wgpu::BufferAsyncError>>) -> Result<()> {
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::gpu("readback map", e.to_string())),
            None => {
                self.check("readback map")?;
                Err(Error::gpu("readback map", "map callback dropped"))
            }
        }
    }
}

/// What a readback's map callback sends.
type MapReceiver = futures_intrusive::channel::shared::OneshotReceiver<
    std::result::Result<(), wgpu::BufferAsyncError>,
>;

/// A kernel's bind group layout: binding 0 its uniform parameters, bindings 1.. its buffers
/// in `access` order (uniform windows, or storage read-only or read-write).
fn layout_entries(access: &[Access]) -> Vec<wgpu::BindGroupLayoutEntry> {
    let entry = |binding: u32, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform)];
    for (i, a) in access.iter().enumerate() {
        let ty = match a {
            Access::Window => wgpu::BufferBindingType::Uniform,
            _ => wgpu::BufferBindingType::Storage {
                read_only: *a == Access::Read,
            },
        };
        entries.push(entry(i as u32 + 1, ty));
    }
    entries
}

/// The slot where the device's first uncaptured error lands, and a lost device's reason
/// (which goes first: it explains every error after it).
fn watch_faults(device: &wgpu::Device) -> Arc<Mutex<Option<String>>> {
    let fault: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let f = fault.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| one_line(&e.to_string()));
    }));
    // A lost device explains every error after it: its message goes first.
    let f = fault.clone();
    device.set_device_lost_callback(move |reason, msg| {
        let mut slot = f.lock().unwrap_or_else(|p| p.into_inner());
        let lost = match msg.trim() {
            "" => format!("device lost ({reason:?})"),
            m => format!("device lost ({reason:?}): {}", one_line(m)),
        };
        *slot = Some(match slot.take() {
            Some(first) => format!("{lost}; first error: {first}"),
            None => lost,
        });
    });
    fault
}

/// The pipeline cache in `dir`, from its file for this adapter's cache key when there is one.
fn open_pipeline_cache(
    device: &wgpu::Device,
    info: &wgpu::AdapterInfo,
    dir: &std::ffi::OsStr,
) -> Option<(wgpu::PipelineCache, std::path::PathBuf)> {
    let file = std::path::Path::new(dir).join(wgpu::util::pipeline_cache_key(info)?);
    let data = std::fs::read(&file).ok();
    // SAFETY: the data is what `save_pipeline_cache` wrote for an adapter of the same
    // cache key; wgpu checks its header and, with `fallback`, starts empty otherwise.
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("shadergrad"),
            data: data.as_deref(),
            fallback: true,
        })
    };
    Some((cache, file))
}
