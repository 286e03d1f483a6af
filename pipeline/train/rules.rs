//! Backward rules of the dense and elementwise ops (the convolutional ones are in [`super::conv`]):
//! one function per op or op family, looked up by op type, each adding the gradients of the
//! node's inputs to the pass's shared [`Ctx`].

use super::conv;
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr, attr_f, attr_i, attr_ints, GraphBuilder};
use std::collections::{HashMap, HashSet};

/// What the rules of one reverse pass share.
pub(super) struct Ctx<'a> {
    pub b: &'a mut GraphBuilder,
    /// The forward graph: constant operands (ReduceMean's axes) are read from its initializers.
    pub g: &'a GraphProto,
    /// Every float tensor's shape for a batch of 2.
    pub shapes: &'a HashMap<String, Vec<usize>>,
    /// Tensors on a path from a parameter to the loss: no other gets a gradient.
    pub needs: &'a HashSet<String>,
    /// Gradient contributions per tensor, summed once the pass reaches the tensor's producer.
    pub grads: HashMap<String, Vec<String>>,
}

impl Ctx<'_> {
    pub fn push(&mut self, t: &str, d: String) {
        self.grads.entry(t.to_string()).or_default().push(d)
    }

    /// Whether input `i` of `n` needs a gradient.
    fn wants(&self, n: &NodeProto, i: usize) -> bool {
        n.input.get(i).is_some_and(|t| self.needs.contains(t))
    }

    /// Backward of `n` by its rule in [`conv`].
    pub fn conv(&mut self, n: &NodeProto, dy: &str, always_scatter: bool) -> Result<()> {
        let needs = self.needs;
        let wants = |i: usize| n.input.get(i).is_some_and(|t| needs.contains(t));
        for (t, d) in conv::backward(self.b, n, dy, self.shapes, &wants, always_scatter)? {
            self.push(&t, d);
        }
        Ok(())
    }
}

/// A backward rule: the gradients of `n`'s inputs from its summed output gradient `dy`.
type Rule = fn(&mut Ctx, &NodeProto, String) -> Result<()>;

fn rule(op: &str) -> Option<Rule> {
    let r: Rule = match op {
        "Identity" => identity,
        "Relu" => relu,
        "Clip" => clip,
        "Pad" => pad,
        "Sigmoid" => sigmoid,
        "Softmax" => softmax,
        "Dropout" => dropout,
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => reshape,
        "Transpose" => transpose,
        "ReduceMean" => reduce_mean,
        "Add" | "Sub" => add_sub,
        "Max" => max,
        "Mul" => mul,
        "Div" => div,
        "MatMul" | "Gemm" => matmul,
        _ => return None,
    };
    Some(r)
}

/// Backward of `n` given its summed output gradient `dy`, by the rule of its op type.
pub(super) fn backward(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let r = rule(&n.op_type).ok_or_else(|| unsupported(n, &format!("no backward rule for {}", n.op_type)))?;
    r(cx, n, dy)
}

fn unsupported(n: &NodeProto, why: &str) -> Error {
    Error::UnsupportedOp { node: n.name.clone(), op: n.op_type.clone(), why: why.into() }
}

/// dy · relu'(x) from the ReLU's output y: dy · [y > 0] as Greater + Cast + Mul (≈ 2× faster
/// than Sign + Mul on onnxruntime's CPU provider, whose Sign is not vectorised).
pub(super) fn relu_backward(b: &mut GraphBuilder, dy: &str, y: &str) -> String {
    let zero = b.const_f32("zero", 0.0);
    let pos = b.op("Greater", &[y, &zero], vec![]);
    let mask = b.op("Cast", &[&pos], vec![("to", A::I(dtype::FLOAT as i64))]);
    b.op("Mul", &[dy, &mask], vec![])
}

fn identity(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    cx.push(&n.input[0], dy);
    Ok(())
}

fn relu(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let d = relu_backward(cx.b, &dy, &n.output[0]);
    cx.push(&n.input[0], d);
    Ok(())
}

/// Clip (ReLU6 and friends): the gradient passes where the input lies strictly inside the bounds
/// (PyTorch's hardtanh rule), bounds as attributes (opset < 11) or constant inputs.
fn clip(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x = &n.input[0];
    let bound = |i: usize, attr_name: &str| -> Result<Option<f32>> {
        match n.input.get(i).filter(|t| !t.is_empty()) {
            Some(t) => constant_f32(cx.g, t)
                .map(Some)
                .ok_or_else(|| unsupported(n, &format!("Clip needs constant bounds (`{t}` is computed)"))),
            None => Ok(attr(n, attr_name).map(|a| a.f)),
        }
    };
    let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
    let mut mask: Option<String> = None;
    for (v, op) in [(lo, "Greater"), (hi, "Less")] {
        let Some(v) = v else { continue };
        let c = cx.b.const_f32("bound", v);
        let inside = cx.b.op(op, &[x, &c], vec![]);
        let m = cx.b.op("Cast", &[&inside], vec![("to", A::I(dtype::FLOAT as i64))]);
        mask = Some(match mask {
            Some(prev) => cx.b.op("Mul", &[&prev, &m], vec![]),
            None => m,
        });
    }
    let d = match mask {
        Some(m) => cx.b.op("Mul", &[&dy, &m], vec![]),
        None => dy,
    };
    cx.push(x, d);
    Ok(())
}

/// A one-number float constant of the forward graph (an initializer or a Constant node's value).
fn constant_f32(g: &GraphProto, name: &str) -> Option<f32> {
    let a = onnx::tensor_to_f32(onnx::constant(g, name)?).ok()?;
    (a.len() == 1).then(|| a.iter().copied().next()).flatten()
}

/// Pad (constant mode, pads ≥ 0): the gradient is the unpadded window of `dy`.
fn pad(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x = &n.input[0];
    let mode = attr(n, "mode").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(unsupported(n, &format!("Pad in {mode} mode")));
    }
    let pads = match n.input.get(1).filter(|t| !t.is_empty()) {
        Some(t) => cx.g.initializer.iter().find(|i| &i.name == t).map(onnx::tensor_to_i64),
        None => attr_ints(n, "pads"),
    }
    .ok_or_else(|| unsupported(n, "Pad needs constant pads"))?;
    let rank = cx.shapes[x].len();
    let batch_padded = pads.len() == 2 * rank && (pads[0] != 0 || pads[rank] != 0);
    if n.input.get(3).is_some_and(|t| !t.is_empty())
        || pads.len() != 2 * rank
        || pads.iter().any(|&p| p < 0)
        || batch_padded
    {
        return Err(unsupported(
            n,
            &format!("Pad with pads {pads:?} on rank {rank} (non-negative, all axes, not the batch)"),
        ));
    }
    let ys = &cx.shapes[&n.output[0]];
    let starts: Vec<i64> = pads[..rank].to_vec();
    // The batch axis (never padded) may differ from the probe's: sliced to its end.
    let ends: Vec<i64> = (0..rank).map(|a| if a == 0 { i64::MAX } else { ys[a] as i64 - pads[rank + a] }).collect();
    let axes: Vec<i64> = (0..rank as i64).collect();
    let (st, en, ax) =
        (cx.b.const_i64("starts", &starts), cx.b.const_i64("ends", &ends), cx.b.const_i64("axes", &axes));
    let d = cx.b.op("Slice", &[&dy, &st, &en, &ax], vec![]);
    cx.push(x, d);
    Ok(())
}

fn sigmoid(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let y = &n.output[0];
    let one = cx.b.const_f32("one", 1.0);
    let om = cx.b.op("Sub", &[&one, y], vec![]);
    let t = cx.b.op("Mul", &[y, &om], vec![]);
    let d = cx.b.op("Mul", &[&dy, &t], vec![]);
    cx.push(&n.input[0], d);
    Ok(())
}

fn softmax(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let y = &n.output[0];
    let axis = attr_i(n, "axis", -1);
    let dyy = cx.b.op("Mul", &[&dy, y], vec![]);
    let ax = cx.b.const_i64("axes", &[axis]);
    let s = cx.b.op("ReduceSum", &[&dyy, &ax], vec![("keepdims", A::I(1))]);
    let t = cx.b.op("Sub", &[&dy, &s], vec![]);
    let d = cx.b.op("Mul", &[y, &t], vec![]);
    cx.push(&n.input[0], d);
    Ok(())
}

fn dropout(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    // Forward became Mul(x, mask) (train) or Identity (eval).
    let mask = format!("mask/{}", n.output[0]);
    let d = if cx.b.graph.input.iter().any(|i| i.name == mask) { cx.b.op("Mul", &[&dy, &mask], vec![]) } else { dy };
    cx.push(&n.input[0], d);
    Ok(())
}

/// Flatten, Reshape, Squeeze, Unsqueeze: the gradient takes the input's shape back.
fn reshape(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x0 = &n.input[0];
    let shp = cx.b.op("Shape", &[x0], vec![]);
    let d = cx.b.op("Reshape", &[&dy, &shp], vec![]);
    cx.push(x0, d);
    Ok(())
}

fn transpose(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let perm = attr_ints(n, "perm").ok_or_else(|| unsupported(n, "Transpose without perm"))?;
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let d = cx.b.op("Transpose", &[&dy], vec![("perm", A::Ints(inv))]);
    cx.push(&n.input[0], d);
    Ok(())
}

fn reduce_mean(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let x0 = &n.input[0];
    let axes = reduce_axes(n, cx.g).ok_or_else(|| unsupported(n, "ReduceMean needs constant axes"))?;
    let xs = &cx.shapes[x0];
    let rank = xs.len() as i64;
    let axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
    let count: usize = axes.iter().map(|&a| xs[a as usize]).product();
    let d = if attr_i(n, "keepdims", 1) == 0 {
        let ax = cx.b.const_i64("axes", &axes);
        cx.b.op("Unsqueeze", &[&dy, &ax], vec![])
    } else {
        dy
    };
    let shp = cx.b.op("Shape", &[x0], vec![]);
    let e = cx.b.op("Expand", &[&d, &shp], vec![]);
    let c = cx.b.const_f32("count", 1.0 / count as f32);
    let d = cx.b.op("Mul", &[&e, &c], vec![]);
    cx.push(x0, d);
    Ok(())
}

fn reduce_axes(n: &NodeProto, g: &GraphProto) -> Option<Vec<i64>> {
    if let Some(a) = attr(n, "axes") {
        return Some(a.ints.clone());
    }
    let name = n.input.get(1)?;
    g.initializer.iter().find(|t| &t.name == name).map(onnx::tensor_to_i64)
}

fn add_sub(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    for i in 0..2 {
        if cx.wants(n, i) {
            let mut d = reduce_to(cx.b, &dy, &cx.shapes[&n.output[0]], &cx.shapes[&n.input[i]]);
            if i == 1 && n.op_type == "Sub" {
                d = cx.b.op("Neg", &[&d], vec![]);
            }
            cx.push(&n.input[i], d);
        }
    }
    Ok(())
}

fn max(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    // The gradient goes to the first input equal to the max (MaxPool's tie rule when the inputs
    // are a window's offsets, see poolconv.rs); same-shape inputs only.
    let y = &n.output[0];
    if n.input.iter().any(|t| cx.shapes[t] != cx.shapes[y]) {
        return Err(unsupported(n, "Max with broadcasting inputs"));
    }
    let mut taken: Option<String> = None;
    for (i, t) in n.input.iter().enumerate() {
        let eq = cx.b.op("Equal", &[t, y], vec![]);
        let first = match &taken {
            None => eq.clone(),
            Some(tk) => {
                let free = cx.b.op("Not", &[tk], vec![]);
                cx.b.op("And", &[&eq, &free], vec![])
            }
        };
        if cx.wants(n, i) {
            let f = cx.b.op("Cast", &[&first], vec![("to", A::I(dtype::FLOAT as i64))]);
            let d = cx.b.op("Mul", &[&dy, &f], vec![]);
            cx.push(t, d);
        }
        if i + 1 < n.input.len() {
            taken = Some(match &taken {
                None => eq,
                Some(tk) => cx.b.op("Or", &[tk, &eq], vec![]),
            });
        }
    }
    Ok(())
}

fn mul(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    for i in 0..2 {
        if cx.wants(n, i) {
            let p = cx.b.op("Mul", &[&dy, &n.input[1 - i]], vec![]);
            let d = reduce_to(cx.b, &p, &cx.shapes[&n.output[0]], &cx.shapes[&n.input[i]]);
            cx.push(&n.input[i], d);
        }
    }
    Ok(())
}

/// y = a / b: da = dy / b, db = −dy · y / b (each summed back to its operand's shape).
fn div(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let (a, b, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let out = &cx.shapes[y];
    if cx.wants(n, 0) {
        let p = cx.b.op("Div", &[&dy, b], vec![]);
        let d = reduce_to(cx.b, &p, out, &cx.shapes[a]);
        cx.push(a, d);
    }
    if cx.wants(n, 1) {
        let p = cx.b.op("Mul", &[&dy, y], vec![]);
        let q = cx.b.op("Div", &[&p, b], vec![]);
        let q = cx.b.op("Neg", &[&q], vec![]);
        let d = reduce_to(cx.b, &q, out, &cx.shapes[b]);
        cx.push(b, d);
    }
    Ok(())
}

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

/// Sum a broadcast gradient of shape `out` back to an operand of shape `target`.
fn reduce_to(b: &mut GraphBuilder, d: &str, out: &[usize], target: &[usize]) -> String {
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
