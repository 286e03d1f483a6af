//! tlearn: transfer learning for image classification on stock ONNX Runtime.
//!
//! Stages (each a binary in `pipeline/bin/`): data → backbone → extract → head → evaluate → score;
//! convnet → finetune for whole nets trained on images; predict prints a run's classes. The front
//! binary `tlearn` runs each as `tlearn <stage>` (`commands`), `tlearn setup` puts the ORT library in
//! the per-user folder (`setup`).
//! See ARCHITECTURE.md for the map.

pub mod augment;
pub mod backbone;
pub mod batch;
pub mod calibrate;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod convnet;
pub mod dataset;
pub mod download;
pub mod efficientnet;
pub mod elpv;
pub mod ensemble;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod extract;
pub mod features;
pub mod finetune;
pub mod fit;
pub mod fsutil;
pub mod head;
pub mod heads;
pub mod history;
pub mod imageio;
pub mod imageset;
pub mod init;
pub mod inputs;
pub mod journal;
pub mod kernels;
pub mod layout;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod mnist;
pub mod onnx;
pub mod output;
pub mod params;
pub mod plot;
pub mod progress;
pub mod pth;
pub mod quantize;
pub mod report;
pub mod runs;
pub mod runtime;
pub mod score;
pub mod setup;
pub mod shard;
pub mod spill;
pub mod split;
pub mod train;
pub mod trunk;

pub use error::{Error, Result};
