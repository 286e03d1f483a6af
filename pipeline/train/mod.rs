//! Training on stock onnxruntime, in two parts; the fit runtime uses the compiler, never the
//! reverse:
//!
//! - [`compile`]: the training-graph compiler, graph → graph (forward, loss and gradients as
//!   standard ONNX ops; the optimizer's update and the device's kernels at `compile::lower`).
//!   It knows no fit, file or device buffer.
//! - [`fit`]: the fit runtime (the [`Trainer`], resident device buffers, the learner, checkpoints,
//!   schedules, early stopping and best-model choice). It builds no graph nodes.
//!
//! The paths below are this module's public face; the code inside `train/` imports the parts
//! themselves, so the re-exports here form no import cycle.

pub mod compile;
pub mod fit;

pub use compile as graph;
pub use compile::{is_frozen, nchwc, poolconv, FROZEN};
pub use fit::{checkpoint, learner, lr_find, pacing, resident, timing};
pub use fit::{
    label_tensor, predict, smoothed_labels, Batch, BatchSource, ClassWeight, FitConfig, FitState, InMemory, Predictor,
    Sampling, Trainer,
};

/// The optimizers (their settings and in-graph update, from the compiler), their host state and
/// the learning-rate schedules (from the fit runtime).
pub mod optim {
    pub use crate::train::compile::update::{
        append_update, next_name, slot_name, update_graph, Groups, Optimizer, DECAY, LR,
    };
    pub use crate::train::fit::schedule::Schedule;
    pub use crate::train::fit::state::State;
}
