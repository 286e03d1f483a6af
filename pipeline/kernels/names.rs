//! The names the training compiler emits and the operators answer to.

/// The custom-operator domain of tlearn's CPU kernels.
pub const DOMAIN: &str = "tlearn.cpu";
/// `MaxPoolArgmax(X) → (Y, A)`: attribute `kernel_shape` (= the strides; no pads); A (uint8) is
/// the row-major offset in its window of each output's first maximum.
pub const MAX_POOL: &str = "MaxPoolArgmax";
/// `MaxPoolArgmaxGrad(dY, A, shape of X[, Y]) → dX`: same attribute; with Y, dX is zero where Y ≤ 0.
pub const MAX_POOL_GRAD: &str = "MaxPoolArgmaxGrad";
/// The most positions a window may have (its argmax is one byte).
pub const MAX_WINDOW: i64 = 255;
