//! tlearn's own CPU kernels: training ops that onnxruntime's standard forms run in several passes
//! over memory, or in scalar code, done in one pass here and registered into every CPU session as
//! custom operators of [`DOMAIN`] (the `ort` crate's `Operator` API on the stock library).
//!
//! Only the training compiler's CPU forms emit them (`train::compile::graph::Forms::kernels`);
//! models tlearn exports for inference never contain them, so a deployable model needs nothing
//! but onnxruntime.
//!
//! - [`MAX_POOL`]: a 2-D MaxPool (any window of up to 255 positions, strides and pads), returning
//!   the pooled map and the position of each window's first maximum as one byte (onnxruntime's
//!   MaxPool with an `Indices` output is scalar code writing 8-byte indices: 18 of a 380 ms v1
//!   step for one layer).
//! - [`MAX_POOL_GRAD`]: its gradient, dX written in one pass from dY and those bytes (what
//!   MaxUnpool, or ScatterElements where windows overlap, does from `Indices`), with the ReLU′ of a
//!   Relu before the pool folded in when the pooled map is given.
//! - [`CLIP_GRAD`]: a Relu's or Clip's gradient from its output in one pass (the standard form:
//!   comparisons, a Cast and a Mul).
//! - [`UNFOLD`]: a convolution's im2col columns for its weight gradient, rows copied (the
//!   standard form: a grouped Conv with one-hot filters).

mod attrs;
mod clip;
mod names;
mod pool;
mod shared;
mod unfold;
mod window;

pub use clip::clip_grad;
pub use names::{CLIP_GRAD, DOMAIN, MAX_POOL, MAX_POOL_GRAD, MAX_WINDOW, UNFOLD};
pub use unfold::unfold_plane;
pub use window::{max_pool_argmax, max_pool_argmax_grad, Window};

use ort::operator::OperatorDomain;

/// The domain to register on a session builder (`SessionBuilder::with_operators`).
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(pool::Forward)?.add(pool::Backward)?.add(clip::ClipGrad)?.add(unfold::Unfold)
}
