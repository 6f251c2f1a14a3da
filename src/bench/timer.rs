//! How a row is timed: N passes after warm-up, each one compute pass of the row's dispatches
//! (repeated `inner` times so that a pass is long enough to time), by GPU timestamp queries
//! at the pass's start and end where the adapter has them, else by the wall clock around a
//! submit that is waited on. Every figure is per run of the row's dispatches.

use std::time::Instant;

use crate::gpu::Gpu;
use crate::kernels::Dispatch;
use crate::Result;

/// How the rows' times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// GPU timestamp queries at a compute pass's start and end.
    Timestamps,
    /// The host's clock around a submit and its wait.
    WallClock,
}

impl Timer {
    pub fn for_gpu(gpu: &Gpu) -> Timer {
        if gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            Timer::Timestamps
        } else {
            Timer::WallClock
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Timer::Timestamps => "gpu-timestamps",
            Timer::WallClock => "wall-clock",
        }
    }
}

/// min / median / max over the timed runs, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub runs: usize,
    /// Runs of the dispatches recorded in one timed pass.
    pub inner: usize,
}

impl Stats {
    pub fn of(samples: &[f64], inner: usize) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        Stats {
            min: s.first().copied().unwrap_or(f64::NAN),
            median,
            max: s.last().copied().unwrap_or(f64::NAN),
            runs: n,
            inner,
        }
    }
}

/// How long to time: runs after warm-up, and the shortest a timed pass should last.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub runs: usize,
    pub pass_ms: f64,
    /// Fewer runs (at least 3) where a row would take longer than this in all.
    pub row_ms: f64,
}

pub struct PassTimer<'g> {
    gpu: &'g Gpu,
    pub timer: Timer,
    queries: Option<(wgpu::QuerySet, wgpu::Buffer)>,
}

impl<'g> PassTimer<'g> {
    pub fn new(gpu: &'g Gpu) -> PassTimer<'g> {
        let timer = Timer::for_gpu(gpu);
        let queries = (timer == Timer::Timestamps).then(|| {
            let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (set, resolved)
        });
        PassTimer {
            gpu,
            timer,
            queries,
        }
    }

    /// Milliseconds of one pass recording `ds` `n` times (then `slow - 1` more times, the
    /// injected delay of [`super::SLOW_ENV`]), divided by `n`.
    pub fn pass(&self, ds: &[&Dispatch], n: usize, slow: usize) -> Result<f64> {
        let gpu = self.gpu;
        let started = Instant::now();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes =
                self.queries
                    .as_ref()
                    .map(|(set, _)| wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench"),
                timestamp_writes,
            });
            for _ in 0..n * slow.max(1) {
                for d in ds {
                    d.record(&mut pass);
                }
            }
        }
        if let Some((set, resolved)) = &self.queries {
            encoder.resolve_query_set(set, 0..2, resolved, 0);
        }
        let index = gpu.queue.submit([encoder.finish()]);
        gpu.wait("bench", Some(index))?;
        let wall = started.elapsed().as_secs_f64() * 1e3;
        let ms = match &self.queries {
            Some((_, resolved)) => {
                let bytes = gpu.read_bytes(resolved, 0, 16)?;
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
                let ns = ticks[1].saturating_sub(ticks[0]) as f64
                    * gpu.queue.get_timestamp_period() as f64;
                // A driver that writes no timestamps leaves zeros: use the wall clock.
                if ns > 0.0 {
                    ns / 1e6
                } else {
                    wall
                }
            }
            None => wall,
        };
        Ok(ms / n as f64)
    }

    /// Warm up, choose how many runs a pass records, then time `budget.runs` passes.
    pub fn measure(&self, ds: &[&Dispatch], budget: &Budget, slow: usize) -> Result<Stats> {
        let first = self.pass(ds, 1, slow)?;
        let inner = ((budget.pass_ms / first.max(1e-6)).ceil() as usize).clamp(1, 64);
        let per_pass = first * inner as f64;
        let runs = if per_pass * budget.runs as f64 > budget.row_ms {
            ((budget.row_ms / per_pass) as usize).clamp(3, budget.runs)
        } else {
            budget.runs
        };
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            samples.push(self.pass(ds, inner, slow)?);
        }
        Ok(Stats::of(&samples, inner))
    }
}
