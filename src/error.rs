//! One error type for the whole crate. Messages name the operation, the file or field, the
//! shapes involved and, where one exists, a hint at the fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- input files -------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file (IDX, gzip) whose content is not what it must be.
    #[error("{path}: {field}: {msg}")]
    Data {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// A checkpoint file that cannot be used.
    #[error("checkpoint {path}: {field}: {msg}")]
    Checkpoint {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// An image given to `predict` that cannot be read.
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },

    // ---- model and shapes --------------------------------------------------------------
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: String, msg: String },
    #[error("invalid argument {arg}: {msg}")]
    Usage { arg: String, msg: String },

    // ---- GPU ---------------------------------------------------------------------------
    #[error("no GPU adapter found{requested}; adapters present: {available}. Hint: install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers` for lavapipe) or unset WGPU_BACKEND / WGPU_ADAPTER_NAME")]
    NoAdapter {
        requested: String,
        available: String,
    },
    #[error("request_device on {adapter}: {msg}")]
    Device { adapter: String, msg: String },
    #[error("shader {file} entry point {entry}: {msg}")]
    Shader {
        file: String,
        entry: String,
        msg: String,
    },
    #[error("{op}: {what} needs {requested} but the adapter allows {limit}. Hint: {hint}")]
    Limit {
        op: String,
        what: String,
        requested: u64,
        limit: u64,
        hint: String,
    },
    #[error("GPU error during {op}: {msg}")]
    Gpu { op: String, msg: String },
    #[error("GPU did not finish {op} within {seconds} s (device hung or lost). Hint: a slow device may need a longer SHADERGRAD_GPU_TIMEOUT (seconds)")]
    Timeout { op: String, seconds: f64 },

    // ---- training ----------------------------------------------------------------------
    /// `step` is the step of the epoch after which it was detected; `what` says what was
    /// non-finite and, for the loss, the steps it may have come from.
    #[error(
        "non-finite {what} at epoch {epoch}, step {step}; training stopped. Hint: lower the learning rate (--lr)"
    )]
    NonFinite {
        what: String,
        epoch: usize,
        step: usize,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn data(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.into(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn shape(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            msg: msg.into(),
        }
    }

    pub fn usage(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Usage {
            arg: arg.into(),
            msg: msg.into(),
        }
    }

    pub fn gpu(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Gpu {
            op: op.into(),
            msg: msg.into(),
        }
    }
}
