//! Pass (before differentiation, train mode): the first convolution block without MaxPool indices.
//!
//! A MaxPool's gradient needs its argmax, and onnxruntime's MaxPool with an `Indices` output is
//! ~8–10× slower than without (scalar code; v1's first pool, 32×32×148×148: 57 ms of a 430 ms
//! step, plus 13 ms of MaxUnpool). For a block `Conv → Relu → MaxPool(2×2, stride 2)` whose input
//! needs no gradient (the data) there is a cheaper exact form: the pooled value at window (y, x)
//! is the max over the four window offsets (a, b) of the convolution at (2y + a, 2x + b), so
//!
//! ```text
//! P = Relu(Max(Z₀₀, Z₀₁, Z₁₀, Z₁₁)),  Z_ab = Conv(X[a:, b:], W, B, stride 2)
//! ```
//!
//! — four strided convolutions (together the work of one), an elementwise Max and a Relu, all of
//! the pooled size. The compiler differentiates that with its ordinary rules: the Max rule routes
//! the gradient to the first maximal input, in MaxPool's scan order (0,0), (0,1), (1,0), (1,1), so
//! the gradients equal the MaxPool form's (tested), and W's four weight gradients are summed.
//! MaxPool(Relu(Z)) = Relu(Max(Z)) because Relu is monotone.

use crate::onnx::builder::A;
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::{attr, attr_i, attr_ints, GraphBuilder};
use std::collections::{HashMap, HashSet};

/// Rewrite every matching block of `g` (see the module docs); None when none matches. `params`:
/// trained initializers; `needs`: tensors that need a gradient; `shapes` gets the new tensors'.
pub fn rewrite(
    g: &GraphProto,
    params: &HashSet<&str>,
    needs: &HashSet<String>,
    shapes: &mut HashMap<String, Vec<usize>>,
) -> Option<GraphProto> {
    let consumers = crate::onnx::Consumers::of(g);
    let mut b = GraphBuilder::new("").with_prefix("pool4/");
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut gone: HashSet<usize> = HashSet::new();
    for (i, n) in g.node.iter().enumerate() {
        if gone.contains(&i) {
            continue;
        }
        let chain = (n.op_type == "Conv")
            .then(|| consumers.only(&n.output[0], "Relu"))
            .flatten()
            .and_then(|r| consumers.only(&g.node[r].output[0], "MaxPool").map(|p| (r, p)))
            .filter(|&(_, p)| matches(n, &g.node[p], params, needs, shapes));
        let Some((r, p)) = chain else {
            nodes.push(n.clone());
            continue;
        };
        let pool = &g.node[p];
        let (x, z) = (&n.input[0], &n.output[0]);
        let (zs, ws) = (shapes[z].clone(), shapes[&n.input[1]].clone());
        let (h, w) = (zs[2] / 2, zs[3] / 2);
        let (kh, kw) = (ws[2], ws[3]);
        let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
        let xp = if pads.iter().any(|&v| v != 0) {
            let all = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]];
            let c = b.const_i64("pads", &all);
            b.op("Pad", &[x, &c], vec![])
        } else {
            x.clone()
        };
        let mut quarters = vec![];
        for (a, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let st = b.const_i64("starts", &[a as i64, c as i64]);
            let en = b.const_i64("ends", &[(a + 2 * h + kh - 2) as i64, (c + 2 * w + kw - 2) as i64]);
            let ax = b.const_i64("axes", &[2, 3]);
            let xs = b.op("Slice", &[&xp, &st, &en, &ax], vec![]);
            let mut inputs: Vec<&str> = vec![&xs, &n.input[1]];
            if let Some(bias) = n.input.get(2).filter(|s| !s.is_empty()) {
                inputs.push(bias);
            }
            let q = b.op(
                "Conv",
                &inputs,
                vec![("kernel_shape", A::Ints(vec![kh as i64, kw as i64])), ("strides", A::Ints(vec![2, 2]))],
            );
            shapes.insert(xs, vec![zs[0], ws[1], 2 * h + kh - 2, 2 * w + kw - 2]);
            shapes.insert(q.clone(), vec![zs[0], zs[1], h, w]);
            quarters.push(q);
        }
        let q: Vec<&str> = quarters.iter().map(String::as_str).collect();
        let m = b.op("Max", &q, vec![]);
        shapes.insert(m.clone(), vec![zs[0], zs[1], h, w]);
        b.node("Relu", &[&m], &[&pool.output[0]], vec![]);
        nodes.append(&mut b.graph.node);
        gone.extend([r, p]);
    }
    if gone.is_empty() {
        return None;
    }
    let mut out = g.clone();
    out.node = nodes;
    out.initializer.append(&mut b.graph.initializer);
    Some(out)
}

/// Conv (2-D, group 1, stride 1, dilation 1, explicit pads, trained weights, input without a
/// gradient) followed by a MaxPool 2×2 / stride 2 without padding, ceil mode or indices.
fn matches(
    conv: &NodeProto,
    pool: &NodeProto,
    params: &HashSet<&str>,
    needs: &HashSet<String>,
    shapes: &HashMap<String, Vec<usize>>,
) -> bool {
    let all = |n: &NodeProto, name: &str, v: i64| attr_ints(n, name).is_none_or(|a| a.iter().all(|&x| x == v));
    let no_auto = |n: &NodeProto| attr(n, "auto_pad").is_none_or(|a| a.s == b"NOTSET" || a.s == b"VALID");
    let two = |n: &NodeProto, name: &str| attr_ints(n, name).as_deref() == Some(&[2, 2][..]);
    let conv_ok = conv.input.len() >= 2
        && params.contains(conv.input[1].as_str())
        && !needs.contains(&conv.input[0])
        && shapes.get(&conv.input[1]).is_some_and(|s| s.len() == 4)
        && shapes.get(&conv.output[0]).is_some_and(|s| s.len() == 4 && s[2] >= 2 && s[3] >= 2)
        && attr_i(conv, "group", 1) == 1
        && all(conv, "strides", 1)
        && all(conv, "dilations", 1)
        && (attr(conv, "auto_pad").is_none_or(|a| a.s == b"NOTSET") || all(conv, "pads", 0))
        && no_auto(conv);
    let pool_ok = two(pool, "kernel_shape")
        && two(pool, "strides")
        && all(pool, "pads", 0)
        && all(pool, "dilations", 1)
        && no_auto(pool)
        && attr_i(pool, "ceil_mode", 0) == 0
        && attr_i(pool, "storage_order", 0) == 0
        && pool.output.len() == 1;
    conv_ok && pool_ok
}
