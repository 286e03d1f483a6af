//! Pass: a model's input normalisation moved after its layout Transpose. A deployable model
//! scales and normalises its (N, H, W, 3) images by constants per channel (Mul, Sub, Div; a
//! Gather for BGR order) and its backbone then transposes them to (N, 3, H, W). onnxruntime
//! broadcasts a constant over a last axis of 3 element by element: 29 ms for a batch of 16 at
//! 300×300, against 3 ms for the Transpose first and the same ops after it with (1, 3, 1, 1)
//! constants (2 threads). Elementwise ops and a channel Gather commute with the transpose, so
//! every value is the same to the bit.

use crate::onnx::builder::attribute;
use crate::onnx::proto::{dtype, GraphProto, NodeProto, TensorProto};
use crate::onnx::{self, builder::A};
use std::collections::HashSet;

const NHWC_TO_NCHW: [i64; 4] = [0, 3, 1, 2];

/// Where the pass applies: the nodes from the image input to the Transpose, in order.
struct Chain {
    input: String,
    nodes: Vec<usize>,
    transpose: usize,
    channels: usize,
}

/// Whether [`rewrite`] would change `g`.
pub fn applies(g: &GraphProto) -> bool {
    find(g).is_some()
}

/// Move the chain of per-channel ops between `g`'s image input and an NHWC→NCHW Transpose after
/// that Transpose; returns whether `g` had such a chain.
pub fn rewrite(g: &mut GraphProto) -> bool {
    let Some(chain) = find(g) else { return false };
    let (input, t) = (chain.input.clone(), &g.node[chain.transpose]);
    let mut moved = vec![NodeProto {
        name: t.name.clone(),
        op_type: "Transpose".into(),
        input: vec![input.clone()],
        output: vec![format!("{input}/nchw")],
        attribute: t.attribute.clone(),
        ..Default::default()
    }];
    let out = t.output[0].clone();
    let mut x = moved[0].output[0].clone();
    let (mut inits, mut replaced, mut prev) = (vec![], HashSet::new(), input.clone());
    for (k, &j) in chain.nodes.iter().enumerate() {
        let mut n = g.node[j].clone();
        let from = n.output[0].clone();
        n.output[0] = if k + 1 == chain.nodes.len() { out.clone() } else { format!("{from}/nchw") };
        for i in n.input.iter_mut() {
            if *i == prev {
                i.clone_from(&x);
            } else if let Some(c) = per_channel(g, i, chain.channels).map(|c| as_nchw(c, i, chain.channels)) {
                replaced.insert(std::mem::replace(i, c.name.clone()));
                if !inits.iter().any(|t: &TensorProto| t.name == c.name) {
                    inits.push(c);
                }
            }
        }
        prev = from;
        if n.op_type == "Gather" {
            n.attribute.retain(|a| a.name != "axis");
            n.attribute.push(attribute("axis", A::I(1)));
        }
        x = n.output[0].clone();
        moved.push(n);
    }
    let gone: HashSet<usize> = chain.nodes.iter().copied().chain([chain.transpose]).collect();
    // Where the Transpose was: every constant the chain reads is defined before it.
    let mut nodes = Vec::with_capacity(g.node.len() + 1);
    for (i, n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        if i == chain.transpose {
            nodes.append(&mut moved);
        }
        if !gone.contains(&i) {
            nodes.push(n);
        }
    }
    g.node = nodes;
    g.initializer.extend(inits);
    // The per-channel originals go where nothing reads them now.
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter()).map(String::as_str).collect();
    let outputs: HashSet<&str> = g.output.iter().map(|v| v.name.as_str()).collect();
    let unread: HashSet<String> =
        replaced.into_iter().filter(|t| !read.contains(t.as_str()) && !outputs.contains(t.as_str())).collect();
    g.initializer.retain(|t| !unread.contains(&t.name));
    true
}

/// The chain from the single image input (rank 4, its last axis fixed) to a Transpose with perm
/// (0, 3, 1, 2), each tensor on it read by the next node alone.
fn find(g: &GraphProto) -> Option<Chain> {
    let inputs = onnx::real_inputs(g);
    let [input] = inputs.as_slice() else { return None };
    let dims = onnx::vi_shape(input).1;
    let channels = match dims.as_slice() {
        [_, _, _, Some(c)] if *c > 1 => *c as usize,
        _ => return None,
    };
    let consumers = onnx::Consumers::of(g);
    let (mut t, mut nodes) = (input.name.clone(), vec![]);
    loop {
        let j = consumers.sole(&t)?;
        let n = &g.node[j];
        if n.op_type == "Transpose" {
            let perm = onnx::attr_ints(n, "perm")?;
            return (perm == NHWC_TO_NCHW && !nodes.is_empty()).then_some(Chain {
                input: input.name.clone(),
                nodes,
                transpose: j,
                channels,
            });
        }
        if !movable(g, n, &t, channels) {
            return None;
        }
        nodes.push(j);
        t = n.output[0].clone();
    }
}

/// Whether `n` (reading the chain's tensor `t`) gives the same values before or after the
/// transpose: an elementwise op with a constant that is one number or one per channel, or a
/// Gather of constant indices along the channel axis.
fn movable(g: &GraphProto, n: &NodeProto, t: &str, channels: usize) -> bool {
    if n.output.len() != 1 {
        return false;
    }
    match n.op_type.as_str() {
        "Mul" | "Add" | "Sub" | "Div" => {
            let [a, b] = n.input.as_slice() else { return false };
            let other = if a == t { b } else { a };
            (a == t) != (b == t)
                && is_constant(g, other)
                && onnx::constant(g, other).is_some_and(|c| {
                    c.dims.len() <= 4 && (onnx::numel(c) == 1 || per_channel(g, other, channels).is_some())
                })
        }
        "Gather" => {
            let axis = onnx::attr_i(n, "axis", 0);
            let indices = n.input.get(1).filter(|i| is_constant(g, i) && i.as_str() != t);
            n.input.first().is_some_and(|i| i == t)
                && (axis == 3 || axis == -1)
                && indices.and_then(|i| onnx::constant(g, i)).is_some_and(|c| c.dims.len() == 1)
        }
        _ => false,
    }
}

/// Whether `t` is a constant no feed can replace (an initializer listed as a graph input, as
/// older models list them all, is a default value).
fn is_constant(g: &GraphProto, t: &str) -> bool {
    onnx::constant(g, t).is_some() && !g.input.iter().any(|i| i.name == t)
}

/// The float constant `name` when it holds one value per channel along the last axis (shape
/// (C) or (1, …, 1, C)).
fn per_channel<'g>(g: &'g GraphProto, name: &str, channels: usize) -> Option<&'g TensorProto> {
    let c = onnx::constant(g, name).filter(|c| c.data_type == dtype::FLOAT)?;
    let (last, rest) = c.dims.split_last()?;
    (*last as usize == channels && rest.iter().all(|&d| d == 1) && onnx::tensor_to_f32(c).is_ok()).then_some(c)
}

/// The constant `name` (`c`: C values) as a (1, C, 1, 1) initializer beside it.
fn as_nchw(c: &TensorProto, name: &str, channels: usize) -> TensorProto {
    let a = onnx::tensor_to_f32(c).expect("checked by per_channel");
    let a = a.into_shape_with_order(ndarray::IxDyn(&[1, channels, 1, 1])).expect("C values");
    onnx::tensor_f32(&format!("{name}/nchw"), &a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{Dim, GraphBuilder};
    use ndarray::{ArrayD, IxDyn};
    use std::path::Path;

    /// An image normaliser as `fuse` writes one (BGR, scale, mean, std) before a backbone's
    /// Transpose, then a Conv reading the transposed image.
    fn model(bgr: bool) -> crate::onnx::proto::ModelProto {
        let mut b = GraphBuilder::new("t");
        b.input("image", &[Dim::named("N"), Dim::Fixed(5), Dim::Fixed(4), Dim::Fixed(3)]);
        let mut x = "image".to_string();
        if bgr {
            let idx = b.const_i64("bgr", &[2, 1, 0]);
            x = b.op("Gather", &[&x, &idx], vec![("axis", A::I(3))]);
        }
        let s = b.const_f32("scale", 1.0 / 255.0);
        x = b.op("Mul", &[&x, &s], vec![]);
        let m = b.const_vec_f32("mean", &[0.485, 0.456, 0.406]);
        x = b.op("Sub", &[&x, &m], vec![]);
        let sd = b.init_f32("std", &ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 3]), vec![0.229, 0.224, 0.225]).unwrap());
        x = b.op("Div", &[&x, &sd], vec![]);
        let t = b.op("Transpose", &[&x], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
        let w = b.init_f32("w", &ArrayD::from_shape_fn(IxDyn(&[2, 3, 1, 1]), |i| (i[0] + 2 * i[1]) as f32 * 0.1));
        b.node("Conv", &[&t, &w], &["y"], vec![]);
        b.output("y", &[Dim::named("N"), Dim::Fixed(2), Dim::Fixed(5), Dim::Fixed(4)]);
        onnx::model(b.finish(), "test")
    }

    fn opts() -> crate::runtime::SessionOptions {
        crate::runtime::SessionOptions { device: crate::runtime::Device::Cpu, threads: 1, precision: None }
    }

    fn run(m: &crate::onnx::proto::ModelProto, x: &ArrayD<f32>) -> ArrayD<f32> {
        let mut s = crate::runtime::open(&onnx::encode_model(m), Path::new("t.onnx"), &opts()).unwrap().session;
        crate::runtime::run_f32(&mut s, vec![("image", x.view())], &["y"]).unwrap().remove(0)
    }

    #[test]
    fn the_normalisation_runs_after_the_transpose_with_the_same_values() {
        for bgr in [false, true] {
            let before = model(bgr);
            let mut after = before.clone();
            assert!(rewrite(after.graph.as_mut().unwrap()));
            let g = onnx::graph(&after);
            let t = g.node.iter().position(|n| n.op_type == "Transpose").unwrap();
            assert_eq!(g.node[t].input, ["image"]);
            assert_eq!(g.node.iter().filter(|n| n.input.iter().any(|i| i == "image")).count(), 1);
            for c in g.initializer.iter().filter(|c| c.data_type == onnx::proto::dtype::FLOAT && onnx::numel(c) == 3) {
                assert_eq!(c.dims, [1, 3, 1, 1], "{}", c.name);
            }
            let x = ArrayD::from_shape_fn(IxDyn(&[2, 5, 4, 3]), |i| ((i[1] * 7 + i[2] * 3 + i[3] * 11) % 256) as f32);
            assert_eq!(run(&before, &x), run(&after, &x), "bgr {bgr}");
            assert!(!rewrite(after.graph.as_mut().unwrap()), "nothing left to move");
        }
    }

    /// The initializer whose name contains `which`, taken out of `g` as a Constant node's value
    /// (unnamed, as exports write them): the node, not yet placed, and the tensor it makes.
    fn constant_node(g: &mut GraphProto, which: &str) -> (String, NodeProto) {
        let k = g.initializer.iter().position(|t| t.name.contains(which)).unwrap();
        let mut t = g.initializer.remove(k);
        let name = std::mem::take(&mut t.name);
        let value = crate::onnx::proto::AttributeProto {
            name: "value".into(),
            r#type: crate::onnx::proto::attr_type::TENSOR,
            t: Some(t),
            ..Default::default()
        };
        let node = NodeProto {
            op_type: "Constant".into(),
            output: vec![name.clone()],
            attribute: vec![value],
            ..Default::default()
        };
        (name, node)
    }

    /// A mean held by a Constant node (its tensor unnamed) moves under a name of its own; an
    /// initializer listed as a graph input (older models list them all: a feed may replace it)
    /// is no constant, and its op stays where it is.
    #[test]
    fn constant_nodes_and_initializers_listed_as_inputs() {
        let before = model(false);
        let mut after = before.clone();
        let g = after.graph.as_mut().unwrap();
        let (name, constant) = constant_node(g, "mean");
        g.node.insert(0, constant);
        let mut listed = g.clone();
        assert!(rewrite(g));
        assert!(g.initializer.iter().any(|t| t.name == format!("{name}/nchw")));
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 5, 4, 3]), |i| (i[1] * 5 + i[2] * 2 + i[3]) as f32);
        assert_eq!(run(&after, &x), run(&before, &x));
        listed.input.push(onnx::value_info(
            "std",
            dtype::FLOAT,
            &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(3)],
        ));
        assert!(!rewrite(&mut listed), "the Div by a replaceable std ends the chain before the Transpose");
        let mut m = model(true);
        let g = m.graph.as_mut().unwrap();
        let idx = g.node.iter().find(|n| n.op_type == "Gather").unwrap().input[1].clone();
        g.input.push(onnx::value_info(&idx, dtype::INT64, &[Dim::Fixed(3)]));
        assert!(!rewrite(g), "a Gather of replaceable indices stays");
    }

    /// The moved nodes go where the Transpose was: a Constant the chain reads, defined after the
    /// chain's first node (as exports put a Constant just before its use), is defined before them.
    #[test]
    fn the_moved_nodes_follow_the_constants_they_read() {
        let before = model(false);
        let mut after = before.clone();
        let g = after.graph.as_mut().unwrap();
        let (_, constant) = constant_node(g, "std");
        let div = g.node.iter().position(|n| n.op_type == "Div").unwrap();
        g.node.insert(div, constant);
        assert!(rewrite(g));
        let defined = |t: &str| g.node.iter().position(|n| n.output.iter().any(|o| o == t));
        for (i, n) in g.node.iter().enumerate() {
            for t in n.input.iter().filter(|t| defined(t).is_some()) {
                assert!(defined(t).unwrap() < i, "{} reads {t} before it is made", n.op_type);
            }
        }
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 5, 4, 3]), |i| (i[1] * 3 + i[2] * 5 + i[3]) as f32);
        assert_eq!(run(&after, &x), run(&before, &x));
    }

    #[test]
    fn a_tensor_read_twice_or_another_permutation_is_left_alone() {
        let mut m = model(false);
        let g = m.graph.as_mut().unwrap();
        let t = g.node.iter_mut().find(|n| n.op_type == "Transpose").unwrap();
        t.attribute = vec![attribute("perm", A::Ints(vec![0, 3, 2, 1]))];
        assert!(!rewrite(g));
        let mut m = model(false);
        let g = m.graph.as_mut().unwrap();
        let sub_out = g.node.iter().find(|n| n.op_type == "Sub").unwrap().output[0].clone();
        g.output.push(onnx::value_info(&sub_out, 1, &[]));
        assert!(!rewrite(g));
    }
}
