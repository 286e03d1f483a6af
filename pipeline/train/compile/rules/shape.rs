//! Backward rules of the layout and reduction ops: Pad (constant mode), Flatten, Reshape,
//! Squeeze, Unsqueeze, Transpose, ReduceMean and Concat — each gradient is the output gradient
//! moved back into the input's layout.

use crate::error::Result;
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr, attr_i, attr_ints};
use crate::train::compile::ctx::{unsupported, Ctx, Rule};

/// This family's entries in the registry (`rules::rule`).
pub const RULES: &[(&str, Rule)] = &[
    ("Pad", pad),
    ("Flatten", reshape),
    ("Reshape", reshape),
    ("Squeeze", reshape),
    ("Unsqueeze", reshape),
    ("Transpose", transpose),
    ("ReduceMean", reduce_mean),
    ("Concat", concat),
];

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

/// Concat: each input's gradient is its slice of the output gradient along the axis.
fn concat(cx: &mut Ctx, n: &NodeProto, dy: String) -> Result<()> {
    let shapes = cx.shapes;
    let rank = shapes[&n.output[0]].len() as i64;
    let mut axis = attr_i(n, "axis", 0);
    if axis < 0 {
        axis += rank;
    }
    let mut off = 0i64;
    for (i, t) in n.input.iter().enumerate() {
        let len = shapes[t][axis as usize] as i64;
        if cx.wants(n, i) {
            let st = cx.b.const_i64("starts", &[off]);
            let en = cx.b.const_i64("ends", &[off + len]);
            let ax = cx.b.const_i64("axes", &[axis]);
            let d = cx.b.op("Slice", &[&dy, &st, &en, &ax], vec![]);
            cx.push(t, d);
        }
        off += len;
    }
    Ok(())
}
