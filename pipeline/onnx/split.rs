//! Split a graph in two at one tensor: the part before it (input → tensor) and the part after
//! (tensor → outputs), each a model of its own. The cut must be a single tensor that everything
//! after it reads from the part before: [`single_cut`] finds the latest such point before a given
//! node.

use super::proto::*;
use super::{graph, Dim};
use std::collections::HashSet;

/// Where to split: the node index the second part starts at, and the one tensor it reads from
/// the first.
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    pub at: usize,
    pub tensor: String,
}

/// Tensors that depend on no graph input: initializers, Constant outputs, and the outputs of
/// nodes that read only such tensors (a Cast or Transpose of a weight).
fn constants(g: &GraphProto) -> HashSet<&str> {
    let mut c: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in &g.node {
        if n.input.iter().all(|i| i.is_empty() || c.contains(i.as_str())) {
            c.extend(n.output.iter().map(|o| o.as_str()));
        }
    }
    c
}

/// The latest boundary at or before node `before` across which exactly one non-constant tensor
/// flows (besides constants, which both parts can hold): the tensor the part after it starts
/// from. None when there is none (e.g. a later node reads the input's shape) or when it would be
/// the graph input itself.
pub fn single_cut(g: &GraphProto, before: usize) -> Option<Cut> {
    let consts = constants(g);
    let outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    for at in (1..=before.min(g.node.len())).rev() {
        let made: HashSet<&str> = g.node[..at].iter().flat_map(|n| n.output.iter().map(|o| o.as_str())).collect();
        let later: HashSet<&str> = g.node[at..].iter().flat_map(|n| n.output.iter().map(|o| o.as_str())).collect();
        let mut live: HashSet<&str> = g.node[at..]
            .iter()
            .flat_map(|n| n.input.iter().map(|i| i.as_str()))
            .filter(|i| !i.is_empty() && !consts.contains(i) && !later.contains(i))
            .collect();
        live.extend(made.iter().filter(|t| outputs.contains(*t) && !consts.contains(*t)));
        if let [t] = live.into_iter().collect::<Vec<_>>()[..] {
            if made.contains(t) {
                return Some(Cut { at, tensor: t.to_string() });
            }
        }
    }
    None
}

/// `m` split at `cut` ([`single_cut`]): (input → the cut tensor, the cut tensor → the outputs),
/// the second with the cut tensor as its one input of shape `shape` (the batch dimension
/// dynamic). Initializers go with the part that reads them, keeping their names; constant nodes
/// made before the cut and read after it go with both. Neither part keeps `m`'s metadata (a
/// part is not the model it came from).
pub fn split_at(m: &ModelProto, cut: &Cut, shape: &[usize]) -> (ModelProto, ModelProto) {
    let g = graph(m);
    let part = |nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>| {
        let read: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(|i| i.as_str())).collect();
        let mut m2 = m.clone();
        // Initializers that are not graph inputs need IR version 4.
        m2.ir_version = m2.ir_version.max(4);
        m2.metadata_props.clear();
        let g2 = m2.graph.as_mut().expect("graph");
        g2.initializer = g.initializer.iter().filter(|t| read.contains(t.name.as_str())).cloned().collect();
        g2.node = nodes;
        g2.input = inputs;
        g2.output = outputs;
        g2.value_info.clear();
        m2
    };
    let mut dims = vec![Dim::named("N")];
    dims.extend(shape.iter().skip(1).map(|&d| Dim::Fixed(d as i64)));
    let cut_vi = super::value_info(&cut.tensor, dtype::FLOAT, &dims);
    let data_inputs: Vec<ValueInfoProto> = super::real_inputs(g).into_iter().cloned().collect();
    let consts = constants(g);
    let read_after: HashSet<&str> = g.node[cut.at..].iter().flat_map(|n| n.input.iter().map(|i| i.as_str())).collect();
    // Constant subgraphs before the cut that the part after reads (whole, in order).
    let mut needed: HashSet<&str> = read_after.iter().copied().filter(|t| consts.contains(t)).collect();
    let mut keep = vec![false; cut.at];
    for i in (0..cut.at).rev() {
        let n = &g.node[i];
        if n.output.iter().any(|o| needed.contains(o.as_str())) {
            keep[i] = true;
            needed.extend(n.input.iter().map(|x| x.as_str()));
        }
    }
    let mut after: Vec<NodeProto> = (0..cut.at).filter(|&i| keep[i]).map(|i| g.node[i].clone()).collect();
    after.extend(g.node[cut.at..].iter().cloned());
    let before = part(g.node[..cut.at].to_vec(), data_inputs, vec![cut_vi.clone()]);
    (before, part(after, vec![cut_vi], g.output.clone()))
}
