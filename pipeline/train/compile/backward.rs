//! The reverse-mode walk: from the gradient of the loss at the logits back over the nodes (as
//! the [`relupool`] pass presents them), each node's summed output gradient handed to its rule
//! in the registry ([`rules`]), until every parameter has its gradient `grad/<name>`.

use super::ctx::Ctx;
use super::graph::{grad_name, Forms};
use super::{relupool, rules};
use crate::error::{Error, Result};
use crate::onnx::proto::GraphProto;
use crate::onnx::GraphBuilder;
use std::collections::{HashMap, HashSet};

/// What the reverse pass reads of the forward graph.
pub struct Forward<'a> {
    pub g: &'a GraphProto,
    /// The final activation's input.
    pub logits: &'a str,
    pub params: &'a [String],
    /// Tensors on a path from a parameter to the loss.
    pub needs: &'a HashSet<String>,
    pub shapes: &'a HashMap<String, Vec<usize>>,
}

/// Reverse-mode pass from `d_logits` (the gradient of the loss w.r.t. the final activation's
/// input) back to every parameter.
pub fn backward(b: &mut GraphBuilder, f: &Forward, d_logits: String, forms: Forms) -> Result<()> {
    let Forward { g, logits, params, needs, shapes } = *f;
    let nodes = relupool::fuse(g);
    let mut cx = Ctx { b, g, shapes, needs, forms, grads: HashMap::new() };
    cx.push(logits, d_logits);
    let producer_of_logits = nodes.iter().position(|n| n.output.iter().any(|o| o == logits)).unwrap_or(0);
    for n in nodes[..=producer_of_logits].iter().rev() {
        let Some(gs) = n.output.first().and_then(|o| cx.grads.remove(o)) else {
            continue;
        };
        if !n.input.iter().any(|i| needs.contains(i)) {
            continue;
        }
        let dy = sum(cx.b, gs);
        rules::backward(&mut cx, n, dy)?;
    }
    for p in params {
        let gs = cx
            .grads
            .remove(p.as_str())
            .ok_or_else(|| Error::Other(format!("parameter `{p}` does not influence the loss")))?;
        let d = sum(cx.b, gs);
        cx.b.node("Identity", &[&d], &[&grad_name(p)], vec![]);
    }
    Ok(())
}

/// The sum of a tensor's gradients, as a chain of `Add`s: onnxruntime's `Add` of two equal shapes
/// takes half the time of its variadic `Sum` (ResNet-50's residual gradients), and the left fold
/// adds in `Sum`'s order, so the result is the same to the bit.
fn sum(b: &mut GraphBuilder, gs: Vec<String>) -> String {
    let mut gs = gs.into_iter();
    let first = gs.next().expect("a gradient to sum");
    gs.fold(first, |acc, g| b.op("Add", &[&acc, &g], vec![]))
}
