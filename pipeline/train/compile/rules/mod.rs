//! The backward-rule registry: every op family registers its rules (op type → [`Rule`]) into one
//! table, looked up by a node's op type. The nodes a fusion pass marks (their domain,
//! [`relupool::DOMAIN`]) are looked up among the fused rules.

pub mod conv;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod shape;

use crate::error::Result;
use crate::onnx::proto::NodeProto;
use crate::train::compile::ctx::{unsupported, Ctx, Rule};
use crate::train::compile::relupool;

/// Every family's rules: elementwise, layout and reduction, matrix products, convolution,
/// pooling, normalisation.
const FAMILIES: &[&[(&str, Rule)]] =
    &[elementwise::RULES, shape::RULES, matmul::RULES, conv::RULES, pool::RULES, norm::RULES];

/// The rules of nodes a pass fused (see [`relupool`]).
const FUSED: &[&[(&str, Rule)]] = &[pool::FUSED];

/// The rule of `n`'s op type (in its pass's domain for a fused node).
pub fn rule(n: &NodeProto) -> Option<Rule> {
    let table = if n.domain == relupool::DOMAIN { FUSED } else { FAMILIES };
    table.iter().flat_map(|f| f.iter()).find(|(op, _)| *op == n.op_type).map(|&(_, r)| r)
}

/// Backward of `n` given its summed output gradient `dy`, by its rule.
pub fn backward(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let r = rule(n).ok_or_else(|| unsupported(n, &format!("no backward rule for {}", n.op_type)))?;
    r(cx, n, dy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, domain: &str) -> NodeProto {
        NodeProto { op_type: op.into(), domain: domain.into(), ..Default::default() }
    }

    #[test]
    fn every_op_has_one_rule() {
        for table in [FAMILIES, FUSED] {
            let mut ops: Vec<&str> = table.iter().flat_map(|f| f.iter().map(|(op, _)| *op)).collect();
            let n = ops.len();
            ops.sort_unstable();
            ops.dedup();
            assert_eq!(ops.len(), n, "an op registered twice: {ops:?}");
        }
    }

    #[test]
    fn fused_nodes_find_their_own_rules() {
        for op in ["Relu", "MaxPool", "Conv", "Gemm", "BatchNormalization", "Concat", "Pad", "Max"] {
            assert!(rule(&node(op, "")).is_some(), "{op}");
        }
        assert!(rule(&node("Tanh", "")).is_none());
        let (plain, fused) = (rule(&node("Relu", "")).unwrap(), rule(&node("Relu", relupool::DOMAIN)).unwrap());
        assert_ne!(plain as usize, fused as usize, "a fused Relu has its own rule");
        assert!(rule(&node("Conv", relupool::DOMAIN)).is_none());
    }
}
