//! Backward rules of the elementwise ops: activations (Relu, Clip, Sigmoid, Softmax, Log), Dropout
//! (a fed mask), the arithmetic of two operands (Add/Sub, Mul, Div, broadcast gradients summed back
//! to each operand's shape) and Max (the gradient to the first maximal input).

use crate::error::Result;
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr_i, GraphBuilder};
use crate::train::compile::ctx::{reduce_to, unsupported, Ctx, Rule};

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[
    ("Identity", identity),
    ("Relu", relu),
    ("Clip", clip),
    ("Sigmoid", sigmoid),
    ("Softmax", softmax),
    ("Dropout", dropout),
    ("Add", add_sub),
    ("Sub", add_sub),
    ("Max", max),
    ("Mul", mul),
    ("Div", div),
    ("Log", log),
];

/// dy · relu'(x) from the ReLU's output y: dy · \[y > 0\] as Greater + Cast + Mul (≈ 2× faster
/// than Sign + Mul on onnxruntime's CPU provider, whose Sign is not vectorised), or one pass of
/// tlearn's CPU kernels when the session has them (`kernels`).
pub fn relu_backward(b: &mut GraphBuilder, dy: &str, y: &str, kernels: bool) -> String {
    if kernels {
        return clip_grad(b, dy, y, Some(0.0), None);
    }
    let zero = b.const_f32("zero", 0.0);
    let pos = b.op("Greater", &[y, &zero], vec![]);
    let mask = b.op("Cast", &[&pos], vec![("to", A::I(dtype::FLOAT as i64))]);
    b.op("Mul", &[dy, &mask], vec![])
}

/// dy where lo < y < hi (a bound None: no test on that side), on tlearn's CPU kernels.
fn clip_grad(b: &mut GraphBuilder, dy: &str, y: &str, lo: Option<f32>, hi: Option<f32>) -> String {
    let mut attrs = vec![("min", A::F(lo.unwrap_or(f32::NEG_INFINITY)))];
    attrs.extend(hi.map(|h| ("max", A::F(h))));
    b.op_in(crate::kernels::DOMAIN, crate::kernels::CLIP_GRAD, &[dy, y], attrs)
}

fn identity(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    cx.push(&n.input[0], dy);
    Ok(())
}

fn relu(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let d = relu_backward(cx.b, &dy, &n.output[0], cx.forms.kernels());
    cx.push(&n.input[0], d);
    Ok(())
}

/// Clip (ReLU6 and friends): the gradient passes where the input lies strictly inside the bounds
/// (PyTorch's hardtanh rule), bounds as attributes (opset < 11) or constant inputs. The test is
/// made on the output y — inside the bounds y = x, outside y is a bound, so the mask is the same —
/// so the forward's pre-activation need not be kept, and the NCHWc pass can fuse the Clip into the
/// convolution before it. The comparisons are joined as booleans (And), then one Cast and one
/// Mul: 1.6× faster than a Cast and a Mul per bound on onnxruntime's CPU provider
/// (EfficientNet-Lite0's 96×150×150 maps at batch 16; Where is slower still); one pass of tlearn's
/// CPU kernels when the session has them.
fn clip(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let (x, y) = (&n.input[0], &n.output[0]);
    let [lo, hi] = onnx::clip_bounds(cx.g, n).ok_or_else(|| unsupported(n, "Clip needs constant bounds"))?;
    if cx.forms.kernels() {
        let d = clip_grad(cx.b, &dy, y, lo, hi);
        cx.push(x, d);
        return Ok(());
    }
    let mut inside: Option<String> = None;
    for (v, op) in [(lo, "Greater"), (hi, "Less")] {
        let Some(v) = v else { continue };
        let c = cx.b.const_f32("bound", v);
        let within = cx.b.op(op, &[y, &c], vec![]);
        inside = Some(match inside {
            Some(prev) => cx.b.op("And", &[&prev, &within], vec![]),
            None => within,
        });
    }
    let d = match inside {
        Some(m) => {
            let mask = cx.b.op("Cast", &[&m], vec![("to", A::I(dtype::FLOAT as i64))]);
            cx.b.op("Mul", &[&dy, &mask], vec![])
        }
        None => dy,
    };
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

/// y = ln x: dx = dy / x.
fn log(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let d = cx.b.op("Div", &[&dy, &n.input[0]], vec![]);
    cx.push(&n.input[0], d);
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
