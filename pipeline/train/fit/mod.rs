//! The fit runtime: what runs compiled graphs to train a model. The [`Trainer`] (sessions,
//! parameters, steps), its [`epochs`], the [`resident`] device buffers, the [`learner`] every
//! training loop runs on (checkpoints, best and last models, early stopping as [`stopping`]
//! strategies), the learning-rate range test ([`lr_find`]), how an epoch draws its samples ([`sampling`]), step [`timing`], [`checkpoint`]s, settings
//! ([`config`]), [`schedule`]s, the fit [`state`], batch sources ([`data`]) and inference
//! ([`predict`](mod@predict)). It takes its graphs from the compiler (`compile`, through
//! `compile::lower`) and never builds graph nodes itself.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod epochs;
pub mod learner;
pub mod lr_find;
pub mod pacing;
pub mod predict;
pub mod resident;
pub mod sampling;
pub mod schedule;
pub mod split;
pub mod state;
pub mod stopping;
pub mod timing;
pub mod trainer;

pub use config::{ClassWeight, FitConfig};
pub use data::{label_tensor, smoothed_labels, Batch, BatchSource, InMemory};
pub use predict::{predict, Predictor};
pub use sampling::Sampling;
pub use state::{FitState, State};
pub use trainer::Trainer;
