//! The library's error type: every variant carries the values a user needs to act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message includes the I/O error (not also chained as a source, which would print it twice).
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid ONNX model: {reason}")]
    BadModel { path: PathBuf, reason: String },
    #[error(
        "{path}: input `{input}` is not an image tensor: expected rank 4 float32 (N,H,W,C) or (N,C,H,W), got {got}"
    )]
    NotImageInput { path: PathBuf, input: String, got: String },
    #[error("tensor `{name}` not found in the graph{hint}")]
    NoSuchTensor { name: String, hint: String },
    #[error("{what}: shape mismatch: expected {expected:?}, got {got:?}")]
    Shape { what: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("node `{node}`: op `{op}` is not supported by the training-graph compiler ({why})")]
    UnsupportedOp { node: String, op: String, why: String },
    #[error("{path}: cannot read image: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadData { path: PathBuf, reason: String },
    #[error("invalid parameter {name} = {value}: {reason}")]
    Param { name: &'static str, value: String, reason: String },
    #[error("{path}: sha256 mismatch: expected {expected}, got {got}")]
    Checksum { path: PathBuf, expected: String, got: String },
    /// `waited` says how long and what sets the wait.
    #[error("{path}: held by {holder} ({waited})")]
    Locked { path: PathBuf, holder: String, waited: String },
    /// onnxruntime refused or failed; `code` is the runtime's own error code when it raised one.
    #[error("onnxruntime{}: {message}", code.map(|c| format!(" ({c:?})")).unwrap_or_default())]
    Ort { message: String, code: Option<ort::error::ErrorCode> },
    /// A name that names nothing there is (a backbone, a run); `hint` says what there is instead
    /// and how to go on.
    #[error("unknown {what} `{name}`{hint}")]
    Unknown { what: &'static str, name: String, hint: String },
    #[error("{url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<T> From<ort::Error<T>> for Error {
    fn from(e: ort::Error<T>) -> Self {
        Error::Ort { message: e.message().to_string(), code: Some(e.code()) }
    }
}

/// Attach a path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|err| Error::Io { path: path.into(), err })
    }
}
