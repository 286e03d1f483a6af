//! The names the training compiler emits and the operators answer to.

/// The custom-operator domain of tlearn's CPU kernels.
pub const DOMAIN: &str = "tlearn.cpu";
/// `MaxPoolArgmax(X) → (Y, A)`: attributes `kernel_shape`, `strides` and `pads` (ONNX MaxPool's,
/// floor); A (uint8) is the row-major offset in its window of each output's first maximum.
pub const MAX_POOL: &str = "MaxPoolArgmax";
/// `MaxPoolArgmaxGrad(dY, A, shape of X[, Y]) → dX`: the same attributes; with Y, dX is zero where Y ≤ 0.
pub const MAX_POOL_GRAD: &str = "MaxPoolArgmaxGrad";
/// The most positions a window may have (its argmax is one byte).
pub const MAX_WINDOW: i64 = 255;
/// `ClipGrad(dY, Y) → dX`: attributes `min` and, optional, `max`; dX = dY where min < Y (< max),
/// else 0 (a Relu's or Clip's gradient from its output).
pub const CLIP_GRAD: &str = "ClipGrad";
/// `Unfold(X) → columns (N, C·kh·kw, oh, ow)`: attributes `kernel_shape`, `strides`, `pads` (a
/// convolution's, without dilation); column c·kh·kw + i·kw + j is channel c at tap (i, j).
pub const UNFOLD: &str = "Unfold";
