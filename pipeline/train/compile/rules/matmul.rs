//! Backward rule of MatMul and Gemm (2-D operands; Gemm with alpha = beta = 1, no transA).

use crate::error::Result;
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{attr_f, attr_i};
use crate::train::compile::ctx::{reduce_to, unsupported, Ctx, Rule};

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[("MatMul", matmul), ("Gemm", matmul)];

/// MatMul and Gemm of 2-D operands (Gemm: alpha = beta = 1, no transA).
fn matmul(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let gemm = n.op_type == "Gemm";
    let (ta, tb) = if gemm { (attr_i(n, "transA", 0), attr_i(n, "transB", 0)) } else { (0, 0) };
    if gemm && (attr_f(n, "alpha", 1.0) != 1.0 || attr_f(n, "beta", 1.0) != 1.0 || ta != 0) {
        return Err(unsupported(n, "Gemm with alpha/beta ≠ 1 or transA"));
    }
    if cx.shapes[&n.input[0]].len() != 2 || cx.shapes[&n.input[1]].len() != 2 {
        return Err(unsupported(n, "only 2-D MatMul/Gemm operands are supported"));
    }
    let (a, w) = (&n.input[0], &n.input[1]);
    let t2 = || vec![("perm", A::Ints(vec![1, 0]))];
    if cx.wants(n, 0) {
        let d = if tb == 0 {
            let wt = cx.b.op("Transpose", &[w], t2());
            cx.b.op("MatMul", &[&dy, &wt], vec![])
        } else {
            cx.b.op("MatMul", &[&dy, w], vec![])
        };
        cx.push(a, d);
    }
    if cx.wants(n, 1) {
        let d = if tb == 0 {
            let at = cx.b.op("Transpose", &[a], t2());
            cx.b.op("MatMul", &[&at, &dy], vec![])
        } else {
            let dyt = cx.b.op("Transpose", &[&dy], t2());
            cx.b.op("MatMul", &[&dyt, a], vec![])
        };
        cx.push(w, d);
    }
    if gemm && cx.wants(n, 2) {
        let d = reduce_to(cx.b, &dy, &cx.shapes[&n.output[0]], &cx.shapes[&n.input[2]]);
        cx.push(&n.input[2], d);
    }
    Ok(())
}
