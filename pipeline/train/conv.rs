//! Backward rules of the convolutional ops (NCHW, 2-D), as standard ONNX ops:
//!
//! - Conv: dB = ReduceSum(dY); dX = ConvTranspose(dY, W) with the forward's strides, pads and
//!   dilations (output_padding restores the rows a stride dropped); dW by *unfold*: one grouped Conv
//!   with a constant one-hot kernel gives the im2col columns (N, C·kh·kw, h, w), then a batched MatMul
//!   with dY and a ReduceSum over N (the fastest formulation measured, see DESIGN-NOTES).
//! - MaxPool: the forward also returns `Indices`; dX = MaxUnpool(dY, Indices) when windows do not
//!   overlap, else ScatterElements(add) over the flattened input — always for CUDA sessions, whose
//!   provider has no MaxUnpool kernel.
//! - GlobalAveragePool, BatchNormalization (inference form: running mean/var stay constants),
//!   Concat.

use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr, attr_f, attr_i, attr_ints, GraphBuilder};
use std::collections::HashMap;

/// Gradients produced by one rule: (input tensor, gradient tensor).
pub type Grads = Vec<(String, String)>;

/// Name of the `Indices` output the training forward adds to a MaxPool producing `y`.
pub fn pool_indices(y: &str) -> String {
    format!("{y}/indices")
}

/// Ops whose backward lives here.
pub fn handles(op: &str) -> bool {
    matches!(op, "Conv" | "MaxPool" | "GlobalAveragePool" | "BatchNormalization" | "Concat")
}

/// True when a MaxPool's windows overlap or are padded (MaxUnpool cannot invert it then).
pub fn pool_needs_scatter(n: &NodeProto) -> bool {
    let k = attr_ints(n, "kernel_shape").unwrap_or_default();
    let s = attr_ints(n, "strides").unwrap_or_else(|| vec![1; k.len()]);
    let pads = attr_ints(n, "pads").unwrap_or_default();
    k != s || pads.iter().any(|&p| p != 0) || attr(n, "auto_pad").is_some_and(|a| a.s != b"NOTSET" && a.s != b"VALID")
}

/// Explicit (begin, end) pads per spatial axis, resolving `auto_pad`.
fn explicit_pads(n: &NodeProto, x: &[usize], y: &[usize], k: &[usize], s: &[usize], d: &[usize]) -> Vec<(i64, i64)> {
    let sp = k.len();
    let auto = attr(n, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default();
    (0..sp)
        .map(|i| {
            let (xin, yout) = (x[2 + i] as i64, y[2 + i] as i64);
            let span = (k[i] as i64 - 1) * d[i] as i64 + 1;
            match auto.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let total = ((yout - 1) * s[i] as i64 + span - xin).max(0);
                    let small = total / 2;
                    if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                }
                "VALID" => (0, 0),
                _ => {
                    let p = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 2 * sp]);
                    (p[i], p[i + sp])
                }
            }
        })
        .collect()
}

fn ints(n: &NodeProto, name: &str, len: usize, default: i64) -> Vec<usize> {
    attr_ints(n, name).unwrap_or_else(|| vec![default; len]).iter().map(|&v| v as usize).collect()
}

/// Sum of `p` (N, …) over its first axis, reshaped to `shape`: a MatMul of a row of N ones with
/// `p` as (N, rest). onnxruntime's ReduceSum over the leading axis runs on one thread; the MatMul
/// is ~25× faster on v1's weight gradients (6.2 → 0.2 ms for (32, 1152, 128), `make bench-train`).
fn batch_sum(b: &mut GraphBuilder, p: &str, shape: &[i64]) -> String {
    let flat = b.const_i64("rows", &[0, -1]);
    let p2 = b.op("Reshape", &[p, &flat], vec![]);
    let shp = b.op("Shape", &[p], vec![]);
    let first = b.const_i64("first", &[0]);
    let dims = b.op("Gather", &[&shp, &first], vec![]);
    let one = b.const_i64("one", &[1]);
    let row_shape = b.op("Concat", &[&one, &dims], vec![("axis", A::I(0))]);
    let one_f = b.const_f32("one", 1.0);
    let ones = b.op("Expand", &[&one_f, &row_shape], vec![]);
    let s = b.op("MatMul", &[&ones, &p2], vec![]);
    let to = b.const_i64("shape", shape);
    b.op("Reshape", &[&s, &to], vec![])
}

/// Backward of `n` given the summed output gradient `dy`. `wants(i)`: input i needs a gradient.
pub fn backward(
    b: &mut GraphBuilder,
    n: &NodeProto,
    dy: &str,
    shapes: &HashMap<String, Vec<usize>>,
    wants: &dyn Fn(usize) -> bool,
    always_scatter: bool,
) -> Result<Grads> {
    let unsupported = |why: String| Error::UnsupportedOp { node: n.name.clone(), op: n.op_type.clone(), why };
    let x0 = &n.input[0];
    let xs = &shapes[x0];
    let ys = &shapes[&n.output[0]];
    let mut out = Grads::new();
    match n.op_type.as_str() {
        "Conv" => {
            if xs.len() != 4 {
                return Err(unsupported(format!("only 2-D convolutions (rank-4 input), got rank {}", xs.len())));
            }
            let ws = &shapes[&n.input[1]];
            let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
            let group = attr_i(n, "group", 1) as usize;
            let k = [kh, kw];
            let s = ints(n, "strides", 2, 1);
            let d = ints(n, "dilations", 2, 1);
            let pads = explicit_pads(n, xs, ys, &k, &s, &d);
            let pads_attr: Vec<i64> = pads.iter().map(|p| p.0).chain(pads.iter().map(|p| p.1)).collect();
            let strides: Vec<i64> = s.iter().map(|&v| v as i64).collect();
            let dil: Vec<i64> = d.iter().map(|&v| v as i64).collect();
            if n.input.len() > 2 && !n.input[2].is_empty() && wants(2) {
                let ax = b.const_i64("axes", &[0, 2, 3]);
                let db = b.op("ReduceSum", &[dy, &ax], vec![("keepdims", A::I(0))]);
                out.push((n.input[2].clone(), db));
            }
            if wants(0) {
                let opad: Vec<i64> = (0..2)
                    .map(|i| {
                        let full = (ys[2 + i] as i64 - 1) * s[i] as i64 + (k[i] as i64 - 1) * d[i] as i64 + 1;
                        xs[2 + i] as i64 - (full - pads[i].0 - pads[i].1)
                    })
                    .collect();
                let dx = b.op(
                    "ConvTranspose",
                    &[dy, &n.input[1]],
                    vec![
                        ("strides", A::Ints(strides.clone())),
                        ("dilations", A::Ints(dil.clone())),
                        ("pads", A::Ints(pads_attr.clone())),
                        ("group", A::I(group as i64)),
                        ("output_padding", A::Ints(opad)),
                    ],
                );
                out.push((x0.clone(), dx));
            }
            if wants(1) {
                if group != 1 {
                    return Err(unsupported(format!("weight gradient of a grouped convolution (group {group})")));
                }
                let c = cg;
                let kk = kh * kw;
                // One-hot unfold kernel: output channel c·kk + (i·kw + j) picks input channel c at (i, j).
                let onehot = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[c * kk, 1, kh, kw]), |ix| {
                    (ix[0] % kk == ix[2] * kw + ix[3]) as u8 as f32
                });
                let name = b.fresh("unfold_kernel");
                let kernel = b.init_f32(&name, &onehot);
                let cols = b.op(
                    "Conv",
                    &[x0, &kernel],
                    vec![
                        ("group", A::I(c as i64)),
                        ("kernel_shape", A::Ints(vec![kh as i64, kw as i64])),
                        ("strides", A::Ints(strides)),
                        ("dilations", A::Ints(dil)),
                        ("pads", A::Ints(pads_attr)),
                    ],
                );
                let cshape = b.const_i64("cols_shape", &[0, (c * kk) as i64, -1]);
                let cols = b.op("Reshape", &[&cols, &cshape], vec![]);
                let yshape = b.const_i64("dy_shape", &[0, m as i64, -1]);
                let dyr = b.op("Reshape", &[dy, &yshape], vec![]);
                // (N, M, hw) × (N, hw, CK) — transpose whichever operand is smaller — then the sum
                // over N.
                let per_sample = if m <= c * kk {
                    let dyt = b.op("Transpose", &[&dyr], vec![("perm", A::Ints(vec![0, 2, 1]))]);
                    let p = b.op("MatMul", &[&cols, &dyt], vec![]); // (N, CK, M)
                    let s = batch_sum(b, &p, &[(c * kk) as i64, m as i64]);
                    b.op("Transpose", &[&s], vec![("perm", A::Ints(vec![1, 0]))])
                } else {
                    let ct = b.op("Transpose", &[&cols], vec![("perm", A::Ints(vec![0, 2, 1]))]);
                    let p = b.op("MatMul", &[&dyr, &ct], vec![]); // (N, M, CK)
                    batch_sum(b, &p, &[m as i64, (c * kk) as i64])
                };
                let wshape = b.const_i64("w_shape", &[m as i64, c as i64, kh as i64, kw as i64]);
                let dw = b.op("Reshape", &[&per_sample, &wshape], vec![]);
                out.push((n.input[1].clone(), dw));
            }
        }
        "MaxPool" => {
            if attr_i(n, "storage_order", 0) != 0 || ints(n, "dilations", 2, 1).iter().any(|&v| v != 1) {
                return Err(unsupported("MaxPool with storage_order or dilations".into()));
            }
            let idx = pool_indices(&n.output[0]);
            let shp = b.op("Shape", &[x0], vec![]);
            let dx = if always_scatter || pool_needs_scatter(n) {
                let zero = b.const_f32("zero", 0.0);
                let z = b.op("Mul", &[x0, &zero], vec![]);
                let flat = b.const_i64("flat", &[-1]);
                let zf = b.op("Reshape", &[&z, &flat], vec![]);
                let i_f = b.op("Reshape", &[&idx, &flat], vec![]);
                let d_f = b.op("Reshape", &[dy, &flat], vec![]);
                let sc =
                    b.op("ScatterElements", &[&zf, &i_f, &d_f], vec![("axis", A::I(0)), ("reduction", A::S("add"))]);
                b.op("Reshape", &[&sc, &shp], vec![])
            } else {
                let k = attr_ints(n, "kernel_shape").unwrap_or_default();
                b.op(
                    "MaxUnpool",
                    &[dy, &idx, &shp],
                    vec![("kernel_shape", A::Ints(k.clone())), ("strides", A::Ints(k))],
                )
            };
            out.push((x0.clone(), dx));
        }
        "GlobalAveragePool" => {
            let shp = b.op("Shape", &[x0], vec![]);
            let e = b.op("Expand", &[dy, &shp], vec![]);
            let count: usize = xs[2..].iter().product();
            let c = b.const_f32("inv_count", 1.0 / count as f32);
            out.push((x0.clone(), b.op("Mul", &[&e, &c], vec![])));
        }
        "BatchNormalization" => {
            if attr_i(n, "training_mode", 0) != 0 {
                return Err(unsupported("BatchNormalization in training mode (export in inference form)".into()));
            }
            let (scale, bias, mean, var) = (&n.input[1], &n.input[2], &n.input[3], &n.input[4]);
            let rank = xs.len();
            let eps = b.const_f32("eps", attr_f(n, "epsilon", 1e-5));
            let ve = b.op("Add", &[var, &eps], vec![]);
            let sd = b.op("Sqrt", &[&ve], vec![]);
            let inv = b.op("Reciprocal", &[&sd], vec![]);
            // Per-channel vectors (C) broadcast as (C, 1, …, 1) against (N, C, …).
            let ax: Vec<i64> = (1..rank as i64 - 1).collect();
            let bcast = |b: &mut GraphBuilder, t: &str| -> String {
                if ax.is_empty() {
                    return t.to_string();
                }
                let a = b.const_i64("axes", &ax);
                b.op("Unsqueeze", &[t, &a], vec![])
            };
            let reduce: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
            if wants(0) {
                let si = b.op("Mul", &[scale, &inv], vec![]);
                let si = bcast(b, &si);
                out.push((x0.clone(), b.op("Mul", &[dy, &si], vec![])));
            }
            if wants(1) {
                let m = bcast(b, mean);
                let i = bcast(b, &inv);
                let xc = b.op("Sub", &[x0, &m], vec![]);
                let xh = b.op("Mul", &[&xc, &i], vec![]);
                let p = b.op("Mul", &[dy, &xh], vec![]);
                let a = b.const_i64("axes", &reduce);
                out.push((scale.clone(), b.op("ReduceSum", &[&p, &a], vec![("keepdims", A::I(0))])));
            }
            if wants(2) {
                let a = b.const_i64("axes", &reduce);
                out.push((bias.clone(), b.op("ReduceSum", &[dy, &a], vec![("keepdims", A::I(0))])));
            }
        }
        "Concat" => {
            let rank = ys.len() as i64;
            let mut axis = attr_i(n, "axis", 0);
            if axis < 0 {
                axis += rank;
            }
            let mut off = 0i64;
            for (i, t) in n.input.iter().enumerate() {
                let len = shapes[t][axis as usize] as i64;
                if wants(i) {
                    let st = b.const_i64("starts", &[off]);
                    let en = b.const_i64("ends", &[off + len]);
                    let ax = b.const_i64("axes", &[axis]);
                    out.push((t.clone(), b.op("Slice", &[dy, &st, &en, &ax], vec![])));
                }
                off += len;
            }
        }
        other => return Err(unsupported(format!("no backward rule for {other}"))),
    }
    Ok(out)
}
