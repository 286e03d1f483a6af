//! Backward rules of the pooling ops:
//!
//! - MaxPool: the forward also returns `Indices` ([`pool_indices`]); dX = MaxUnpool(dY, Indices)
//!   when windows do not overlap, else ScatterElements(add) over the flattened input — always for
//!   CUDA sessions ([`PoolGrad::Scatter`]), whose provider has no MaxUnpool kernel. On the CPU
//!   ([`PoolGrad::Argmax`]) 2-D pools run on tlearn's kernels instead ([`argmax_window`]): the
//!   forward keeps a byte argmax, dX = [`kernels::MAX_POOL_GRAD`](dY, argmax).
//! - GlobalAveragePool: dY spread evenly over the window.
//! - A Relu that only feeds a MaxPool, as the [`relupool`] pass marks it: its ReLU' is applied
//!   after the pool's backward, on the pooled tensor ([`FUSED`]).

use super::conv::ints;
use super::elementwise::relu_backward;
use crate::error::Result;
use crate::kernels;
use crate::onnx::builder::A;
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr, attr_i, attr_ints};
use crate::train::compile::ctx::{unsupported, Ctx, Rule};
use crate::train::compile::graph::PoolGrad;
#[cfg(doc)]
use crate::train::compile::relupool;

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[("MaxPool", max_pool), ("GlobalAveragePool", global_average_pool)];

/// The rules of the nodes the [`relupool`] pass marks (its domain): the Relu passes the gradient
/// through, and the MaxPool applies ReLU' before its own rule.
pub const FUSED: &[(&str, Rule)] = &[("Relu", pooled_relu), ("MaxPool", relu_max_pool)];

/// Name of the `Indices` output the training forward adds to a MaxPool producing `y`.
pub fn pool_indices(y: &str) -> String {
    format!("{y}/indices")
}

/// True when a MaxPool's windows overlap or are padded (MaxUnpool cannot invert it then).
pub fn pool_needs_scatter(n: &NodeProto) -> bool {
    let k = attr_ints(n, "kernel_shape").unwrap_or_default();
    let s = attr_ints(n, "strides").unwrap_or_else(|| vec![1; k.len()]);
    let pads = attr_ints(n, "pads").unwrap_or_default();
    k != s || pads.iter().any(|&p| p != 0) || attr(n, "auto_pad").is_some_and(|a| a.s != b"NOTSET" && a.s != b"VALID")
}

/// The attributes of a MaxPool that `pools` puts on tlearn's CPU kernels ([`PoolGrad::Argmax`]):
/// a 2-D one with explicit pads (or none), MaxPool's floor and no dilation, whose window has at
/// most [`kernels::MAX_WINDOW`] positions.
pub fn argmax_window(n: &NodeProto, pools: PoolGrad) -> Option<Vec<(&'static str, A)>> {
    let k = attr_ints(n, "kernel_shape")?;
    let explicit = attr(n, "auto_pad").is_none_or(|a| a.s == b"NOTSET" || a.s == b"VALID");
    let plain = attr_i(n, "ceil_mode", 0) == 0
        && attr_i(n, "storage_order", 0) == 0
        && ints(n, "dilations", 2, 1).iter().all(|&v| v == 1);
    let small = k.len() == 2 && k.iter().product::<i64>() <= kernels::MAX_WINDOW;
    let or = |name: &str, len: usize, default: i64| A::Ints(attr_ints(n, name).unwrap_or_else(|| vec![default; len]));
    (pools == PoolGrad::Argmax && explicit && plain && small)
        .then(|| vec![("kernel_shape", A::Ints(k)), ("strides", or("strides", 2, 1)), ("pads", or("pads", 4, 0))])
}

/// dX of a MaxPool on the CPU kernels: one pass from dY and the argmax bytes, zero where the
/// pooled map is not positive when `relu` (a Relu before the pool).
fn argmax_pool_grad(cx: &mut Ctx, n: &NodeProto, dy: &str, window: Vec<(&str, A)>, relu: bool) {
    let (x0, y) = (&n.input[0], &n.output[0]);
    let b = &mut *cx.b;
    let shp = b.op("Shape", &[x0], vec![]);
    let idx = pool_indices(y);
    let mut inputs = vec![dy, idx.as_str(), shp.as_str()];
    if relu {
        inputs.push(y);
    }
    let dx = b.op_in(kernels::DOMAIN, kernels::MAX_POOL_GRAD, &inputs, window);
    cx.push(x0, dx);
}

fn max_pool(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x0 = &n.input[0];
    if let Some(window) = argmax_window(n, cx.forms.pools) {
        argmax_pool_grad(cx, n, &dy, window, false);
        return Ok(());
    }
    if attr_i(n, "storage_order", 0) != 0 || ints(n, "dilations", 2, 1).iter().any(|&v| v != 1) {
        return Err(unsupported(n, "MaxPool with storage_order or dilations"));
    }
    let b = &mut *cx.b;
    let idx = pool_indices(&n.output[0]);
    let shp = b.op("Shape", &[x0], vec![]);
    let dx = if cx.forms.pools == PoolGrad::Scatter || pool_needs_scatter(n) {
        let zero = b.const_f32("zero", 0.0);
        let z = b.op("Mul", &[x0, &zero], vec![]);
        let flat = b.const_i64("flat", &[-1]);
        let zf = b.op("Reshape", &[&z, &flat], vec![]);
        let i_f = b.op("Reshape", &[&idx, &flat], vec![]);
        let d_f = b.op("Reshape", &[&dy, &flat], vec![]);
        let sc = b.op("ScatterElements", &[&zf, &i_f, &d_f], vec![("axis", A::I(0)), ("reduction", A::S("add"))]);
        b.op("Reshape", &[&sc, &shp], vec![])
    } else {
        let k = attr_ints(n, "kernel_shape").unwrap_or_default();
        b.op("MaxUnpool", &[&dy, &idx, &shp], vec![("kernel_shape", A::Ints(k.clone())), ("strides", A::Ints(k))])
    };
    cx.push(x0, dx);
    Ok(())
}

fn global_average_pool(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x0 = &n.input[0];
    let count: usize = cx.shapes[x0][2..].iter().product();
    let b = &mut *cx.b;
    let shp = b.op("Shape", &[x0], vec![]);
    let e = b.op("Expand", &[&dy, &shp], vec![]);
    let c = b.const_f32("inv_count", 1.0 / count as f32);
    let d = b.op("Mul", &[&e, &c], vec![]);
    cx.push(x0, d);
    Ok(())
}

/// A Relu that only feeds a MaxPool: the pool's rule applies its ReLU'.
fn pooled_relu(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    cx.push(&n.input[0], dy);
    Ok(())
}

/// A MaxPool of such a Relu: ReLU' taken on the pooled tensor. The gradient reaches only argmax
/// positions, where the ReLU output equals the pooled value P, so relu' = [P > 0] there — exact,
/// and 4× fewer elements than on the ReLU output (2×2 pools).
fn relu_max_pool(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    if let Some(window) = argmax_window(n, cx.forms.pools) {
        argmax_pool_grad(cx, n, &dy, window, true);
        return Ok(());
    }
    let masked = relu_backward(cx.b, &dy, &n.output[0], cx.forms.kernels());
    max_pool(cx, n, masked)
}
