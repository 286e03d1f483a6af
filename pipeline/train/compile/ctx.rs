//! What every backward rule works with: the [`Ctx`] of one reverse pass (the graph being built,
//! the forward graph's constants and shapes, which tensors need a gradient, the gradients so
//! far) and the one [`Rule`] type the registry (`rules`) holds.

use super::graph::Forms;
#[cfg(doc)]
use super::graph::PoolGrad;
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::GraphBuilder;
use std::collections::{HashMap, HashSet};

/// A backward rule: the gradients of `n`'s inputs from its summed output gradient `dy`, added to
/// the pass's [`Ctx`].
pub type Rule = fn(&mut Ctx, &NodeProto, String) -> Result<()>;

/// What the rules of one reverse pass share.
pub struct Ctx<'a> {
    pub b: &'a mut GraphBuilder,
    /// The forward graph: constant operands (ReduceMean's axes) are read from its initializers.
    pub g: &'a GraphProto,
    /// Every float tensor's shape for a batch of 2.
    pub shapes: &'a HashMap<String, Vec<usize>>,
    /// Tensors on a path from a parameter to the loss: no other gets a gradient.
    pub needs: &'a HashSet<String>,
    /// The forms for the session: how MaxPool's gradient is routed ([`PoolGrad::Scatter`]:
    /// always ScatterElements), whether depthwise weight gradients take the NCHWc kernels' form.
    pub forms: Forms,
    /// Gradient contributions per tensor, summed once the pass reaches the tensor's producer.
    pub grads: HashMap<String, Vec<String>>,
}

impl Ctx<'_> {
    pub fn push(&mut self, t: &str, d: String) {
        self.grads.entry(t.to_string()).or_default().push(d)
    }

    /// Whether input `i` of `n` needs a gradient.
    pub fn wants(&self, n: &NodeProto, i: usize) -> bool {
        n.input.get(i).is_some_and(|t| self.needs.contains(t))
    }
}

/// The error of a node no rule can differentiate (as it is).
pub fn unsupported(n: &NodeProto, why: &str) -> Error {
    Error::UnsupportedOp { node: n.name.clone(), op: n.op_type.clone(), why: why.into() }
}

/// Sum a broadcast gradient of shape `out` back to an operand of shape `target`.
pub fn reduce_to(b: &mut GraphBuilder, d: &str, out: &[usize], target: &[usize]) -> String {
    if out == target {
        return d.to_string();
    }
    let lead = out.len() - target.len();
    let mut d = d.to_string();
    if lead > 0 {
        let axes: Vec<i64> = (0..lead as i64).collect();
        let ax = b.const_i64("axes", &axes);
        d = b.op("ReduceSum", &[&d, &ax], vec![("keepdims", A::I(0))]);
    }
    let axes: Vec<i64> =
        target.iter().enumerate().filter(|(i, &t)| t == 1 && out[lead + i] != 1).map(|(i, _)| i as i64).collect();
    if !axes.is_empty() {
        let ax = b.const_i64("axes", &axes);
        d = b.op("ReduceSum", &[&d, &ax], vec![("keepdims", A::I(1))]);
    }
    d
}
