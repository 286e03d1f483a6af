//! Backward rule of BatchNormalization in inference form: the running mean and variance stay
//! constants, so the op is a per-channel affine map (dX = dY·γ/σ; dγ, dβ summed over all but the
//! channel axis).

use crate::error::Result;
use crate::onnx::builder::A;
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr_f, attr_i, GraphBuilder};
use crate::train::compile::ctx::{unsupported, Ctx, Rule};

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[("BatchNormalization", batch_normalization)];

fn batch_normalization(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x0 = &n.input[0];
    if attr_i(n, "training_mode", 0) != 0 {
        return Err(unsupported(n, "BatchNormalization in training mode (export in inference form)"));
    }
    let (scale, bias, mean, var) = (&n.input[1], &n.input[2], &n.input[3], &n.input[4]);
    let rank = cx.shapes[x0].len();
    let eps = cx.b.const_f32("eps", attr_f(n, "epsilon", 1e-5));
    let ve = cx.b.op("Add", &[var, &eps], vec![]);
    let sd = cx.b.op("Sqrt", &[&ve], vec![]);
    let inv = cx.b.op("Reciprocal", &[&sd], vec![]);
    // Per-channel vectors (C) broadcast as (C, 1, …, 1) against (N, C, …).
    let ax: Vec<i64> = (1..rank as i64 - 1).collect();
    let bcast = |b: &mut GraphBuilder, t: &str| -> String {
        if ax.is_empty() {
            return t.to_string();
        }
        let a = b.const_i64("axes", &ax);
        b.op("Unsqueeze", &[t, &a], vec![])
    };
    let reduce: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
    if cx.wants(n, 0) {
        let si = cx.b.op("Mul", &[scale, &inv], vec![]);
        let si = bcast(cx.b, &si);
        let d = cx.b.op("Mul", &[&dy, &si], vec![]);
        cx.push(x0, d);
    }
    if cx.wants(n, 1) {
        let m = bcast(cx.b, mean);
        let i = bcast(cx.b, &inv);
        let xc = cx.b.op("Sub", &[x0, &m], vec![]);
        let xh = cx.b.op("Mul", &[&xc, &i], vec![]);
        let p = cx.b.op("Mul", &[&dy, &xh], vec![]);
        let a = cx.b.const_i64("axes", &reduce);
        let d = cx.b.op("ReduceSum", &[&p, &a], vec![("keepdims", A::I(0))]);
        cx.push(scale, d);
    }
    if cx.wants(n, 2) {
        let a = cx.b.const_i64("axes", &reduce);
        let d = cx.b.op("ReduceSum", &[&dy, &a], vec![("keepdims", A::I(0))]);
        cx.push(bias, d);
    }
    Ok(())
}
