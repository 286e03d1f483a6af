//! Pass: a Relu whose only reader is a MaxPool is differentiated after the pool.
//!
//! MaxPool(Relu(x)) routes its gradient only to argmax positions, where the ReLU output equals
//! the pooled value, so ReLU' can be taken on the pooled tensor instead of at full resolution
//! (4× fewer elements for 2×2 pools). The pass leaves the forward alone: it returns the nodes the
//! reverse pass walks, with each such Relu and its MaxPool moved into [`DOMAIN`], where the
//! registry finds their fused rules (the Relu passes its gradient through, the MaxPool applies
//! ReLU' before its own rule).

use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::Consumers;
use std::collections::HashSet;

/// The domain of the nodes this pass marks (never emitted: it names rules, not ops).
pub const DOMAIN: &str = "tlearn.relu_maxpool";

/// `g`'s nodes as the reverse pass sees them (see the module docs).
pub fn fuse(g: &GraphProto) -> Vec<NodeProto> {
    let pooled = relus_feeding_only_a_maxpool(g);
    g.node
        .iter()
        .map(|n| {
            let fused = match n.op_type.as_str() {
                "Relu" => pooled.contains(n.output[0].as_str()),
                "MaxPool" => pooled.contains(n.input[0].as_str()),
                _ => false,
            };
            if fused {
                NodeProto { domain: DOMAIN.into(), ..n.clone() }
            } else {
                n.clone()
            }
        })
        .collect()
}

/// Outputs of Relu nodes whose only consumer is a MaxPool (and that are not graph outputs).
fn relus_feeding_only_a_maxpool(g: &GraphProto) -> HashSet<&str> {
    let consumers = Consumers::of(g);
    g.node
        .iter()
        .filter(|n| n.op_type == "Relu")
        .map(|n| n.output[0].as_str())
        .filter(|y| consumers.only(y, "MaxPool").is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::GraphBuilder;

    #[test]
    fn marks_a_relu_read_only_by_a_maxpool_and_that_pool() {
        let mut b = GraphBuilder::new("g");
        b.node("Relu", &["x"], &["r"], vec![]);
        b.node("MaxPool", &["r"], &["p"], vec![]);
        b.node("Relu", &["p"], &["r2"], vec![]);
        b.node("MaxPool", &["r2"], &["p2"], vec![]);
        b.node("Sigmoid", &["r2"], &["s"], vec![]);
        b.output_any("p2");
        let g = b.finish();
        let domains: Vec<&str> = fuse(&g).iter().map(|n| if n.domain == DOMAIN { "fused" } else { "" }).collect();
        // The second Relu also feeds a Sigmoid: not fused, nor is its pool.
        assert_eq!(domains, ["fused", "fused", "", "", ""]);
        assert!(fuse(&g).iter().zip(&g.node).all(|(a, b)| a.op_type == b.op_type && a.input == b.input));
    }
}
