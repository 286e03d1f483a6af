//! tlearn: transfer learning for image classification on stock ONNX Runtime.
//!
//! Stages (each a binary in `pipeline/bin/`): data → backbone → extract → head → evaluate → score.
//! See ARCHITECTURE.md for the map.

pub mod backbone;
pub mod catalog;
pub mod cli;
pub mod error;
pub mod fsutil;
pub mod imageio;
pub mod onnx;
pub mod runtime;

pub use error::{Error, Result};
