//! Kernel families: which set of kernels an adapter runs by default, and the
//! `SHADERGRAD_KERNELS` switch that forces one (how CI proves every family on lavapipe).
//!
//! - `gpu`: workgroup-memory tiled kernels (matmul.wgsl's `matmul_tiled`, implicit-GEMM
//!   conv for layers with >= 8 input channels), shaped for real GPUs; the subgroup kernels
//!   stay where the adapter has subgroups (a subgroup broadcast is a shuffle on GPUs), the
//!   uniform-window kernels never run (on GPUs a uniform load of differing addresses
//!   serialises).
//! - `window`: the uniform-buffer window kernels (CPU adapters: a uniform load costs a tenth
//!   of a storage load), subgroup kernels elsewhere.
//! - `subgroup`: the subgroup kernels reading storage buffers.
//! - `portable`: only the kernels that need neither subgroups nor windows.
//!
//! Forcing a family the adapter cannot run (`subgroup` or `window` without subgroups of at
//! least 8, `window` without 64 KiB uniform windows) is an error when the [`crate::gpu::Gpu`]
//! is created, never a silent fallback: a CI run that says `window` ran the window kernels.

use std::fmt;

use crate::{Error, Result};

/// Environment variable forcing a kernel family.
pub const KERNELS_ENV: &str = "SHADERGRAD_KERNELS";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Gpu,
    Window,
    Subgroup,
    Portable,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Gpu,
        Family::Window,
        Family::Subgroup,
        Family::Portable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Gpu => "gpu",
            Family::Window => "window",
            Family::Subgroup => "subgroup",
            Family::Portable => "portable",
        }
    }

    /// The family named by `SHADERGRAD_KERNELS`, None when unset or empty.
    pub fn from_env() -> Result<Option<Family>> {
        match std::env::var(KERNELS_ENV) {
            Err(_) => Ok(None),
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => s.parse().map(Some),
        }
    }

    /// What `shadergrad info` prints for the family.
    pub fn describe(self) -> &'static str {
        match self {
            Family::Gpu => "workgroup-memory tiled matmul and implicit-GEMM conv (GPU adapter), subgroup kernels where the adapter has them",
            Family::Window => "uniform-window kernels for Dense and conv + pool (CPU adapter), subgroup kernels elsewhere",
            Family::Subgroup => "subgroup kernels (storage buffers)",
            Family::Portable => "portable kernels",
        }
    }
}

impl std::str::FromStr for Family {
    type Err = Error;

    fn from_str(s: &str) -> Result<Family> {
        let t = s.trim().to_ascii_lowercase();
        Family::ALL
            .into_iter()
            .find(|f| f.name() == t)
            .ok_or_else(|| {
                Error::usage(
                    KERNELS_ENV,
                    format!("{s:?} is not a kernel family; use gpu, window, subgroup or portable"),
                )
            })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
