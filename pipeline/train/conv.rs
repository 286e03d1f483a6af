//! Backward rules of the convolutional ops (NCHW, 2-D), as standard ONNX ops:
//!
//! - Conv: dB = ReduceSum(dY); dX = ConvTranspose(dY, W) with the forward's strides, pads and
//!   dilations (output_padding restores the rows a stride dropped); dW by *unfold*: one grouped Conv
//!   with a constant one-hot kernel gives the im2col columns (N, C·kh·kw, h, w), then a batched MatMul
//!   with dY and a sum over N (the fastest formulation measured, see DESIGN-NOTES); grouped and
//!   depthwise convolutions do the same per group (a MatMul batched over N and the groups).
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
    let p2 = b.reshape(p, "rows", &[0, -1]);
    let shp = b.op("Shape", &[p], vec![]);
    let first = b.const_i64("first", &[0]);
    let dims = b.op("Gather", &[&shp, &first], vec![]);
    let one = b.const_i64("one", &[1]);
    let row_shape = b.op("Concat", &[&one, &dims], vec![("axis", A::I(0))]);
    let one_f = b.const_f32("one", 1.0);
    let ones = b.op("Expand", &[&one_f, &row_shape], vec![]);
    let s = b.op("MatMul", &[&ones, &p2], vec![]);
    b.reshape(&s, "shape", shape)
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
    let r = Rule { n, dy, shapes, xs: &shapes[&n.input[0]], ys: &shapes[&n.output[0]], wants };
    match n.op_type.as_str() {
        "Conv" => conv(b, &r),
        "MaxPool" => max_pool(b, &r, always_scatter),
        "GlobalAveragePool" => Ok(global_average_pool(b, &r)),
        "BatchNormalization" => batch_normalization(b, &r),
        "Concat" => Ok(concat(b, &r)),
        other => Err(unsupported(n, format!("no backward rule for {other}"))),
    }
}

/// What every rule reads about its node.
struct Rule<'a> {
    n: &'a NodeProto,
    /// The summed output gradient.
    dy: &'a str,
    shapes: &'a HashMap<String, Vec<usize>>,
    /// Shapes of the first input and of the output.
    xs: &'a [usize],
    ys: &'a [usize],
    wants: &'a dyn Fn(usize) -> bool,
}

fn unsupported(n: &NodeProto, why: String) -> Error {
    Error::UnsupportedOp { node: n.name.clone(), op: n.op_type.clone(), why }
}

/// A 2-D convolution's geometry: its weight (M, C/group, kh, kw) and attributes, the pads made
/// explicit.
struct ConvGeom {
    m: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    group: usize,
    s: Vec<usize>,
    d: Vec<usize>,
    pads: Vec<(i64, i64)>,
    /// The forward's attributes as ONNX writes them (pads: all begins, then all ends).
    pads_attr: Vec<i64>,
    strides: Vec<i64>,
    dil: Vec<i64>,
}

impl ConvGeom {
    fn of(r: &Rule) -> ConvGeom {
        let n = r.n;
        let ws = &r.shapes[&n.input[1]];
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let group = attr_i(n, "group", 1) as usize;
        let s = ints(n, "strides", 2, 1);
        let d = ints(n, "dilations", 2, 1);
        let pads = explicit_pads(n, r.xs, r.ys, &[kh, kw], &s, &d);
        let pads_attr: Vec<i64> = pads.iter().map(|p| p.0).chain(pads.iter().map(|p| p.1)).collect();
        let strides: Vec<i64> = s.iter().map(|&v| v as i64).collect();
        let dil: Vec<i64> = d.iter().map(|&v| v as i64).collect();
        ConvGeom { m, cg, kh, kw, group, s, d, pads, pads_attr, strides, dil }
    }
}

fn conv(b: &mut GraphBuilder, r: &Rule) -> Result<Grads> {
    let n = r.n;
    if r.xs.len() != 4 {
        return Err(unsupported(n, format!("only 2-D convolutions (rank-4 input), got rank {}", r.xs.len())));
    }
    let geom = ConvGeom::of(r);
    let mut out = Grads::new();
    if n.input.len() > 2 && !n.input[2].is_empty() && (r.wants)(2) {
        let ax = b.const_i64("axes", &[0, 2, 3]);
        let db = b.op("ReduceSum", &[r.dy, &ax], vec![("keepdims", A::I(0))]);
        out.push((n.input[2].clone(), db));
    }
    if (r.wants)(0) {
        out.push((n.input[0].clone(), conv_input_grad(b, r, &geom)));
    }
    if (r.wants)(1) {
        let dw = if geom.group == 1 { conv_weight_grad(b, r, &geom) } else { grouped_weight_grad(b, r, &geom) };
        out.push((n.input[1].clone(), dw));
    }
    Ok(out)
}

/// dX as ConvTranspose with the forward's geometry; output_padding gives back the rows and
/// columns a stride dropped.
fn conv_input_grad(b: &mut GraphBuilder, r: &Rule, g: &ConvGeom) -> String {
    let k = [g.kh, g.kw];
    let opad: Vec<i64> = (0..2)
        .map(|i| {
            let full = (r.ys[2 + i] as i64 - 1) * g.s[i] as i64 + (k[i] as i64 - 1) * g.d[i] as i64 + 1;
            r.xs[2 + i] as i64 - (full - g.pads[i].0 - g.pads[i].1)
        })
        .collect();
    b.op(
        "ConvTranspose",
        &[r.dy, &r.n.input[1]],
        vec![
            ("strides", A::Ints(g.strides.clone())),
            ("dilations", A::Ints(g.dil.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
            ("group", A::I(g.group as i64)),
            ("output_padding", A::Ints(opad)),
        ],
    )
}

/// The im2col columns of the forward's input: one grouped Conv with a constant one-hot kernel,
/// (N, C·kh·kw, h, w) where channel c·kh·kw + (i·kw + j) is input channel c at kernel offset (i, j).
fn unfold(b: &mut GraphBuilder, r: &Rule, g: &ConvGeom, c: usize) -> String {
    let (kh, kw) = (g.kh, g.kw);
    let kk = kh * kw;
    let onehot = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[c * kk, 1, kh, kw]), |ix| {
        (ix[0] % kk == ix[2] * kw + ix[3]) as u8 as f32
    });
    let name = b.fresh("unfold_kernel");
    let kernel = b.init_f32(&name, &onehot);
    b.op(
        "Conv",
        &[&r.n.input[0], &kernel],
        vec![
            ("group", A::I(c as i64)),
            ("kernel_shape", A::Ints(vec![kh as i64, kw as i64])),
            ("strides", A::Ints(g.strides.clone())),
            ("dilations", A::Ints(g.dil.clone())),
            ("pads", A::Ints(g.pads_attr.clone())),
        ],
    )
}

/// dW by unfold (group 1).
fn conv_weight_grad(b: &mut GraphBuilder, r: &Rule, g: &ConvGeom) -> String {
    let (m, c, kh, kw) = (g.m, g.cg, g.kh, g.kw);
    let kk = kh * kw;
    let cols = unfold(b, r, g, c);
    let cols = b.reshape(&cols, "cols_shape", &[0, (c * kk) as i64, -1]);
    let dyr = b.reshape(r.dy, "dy_shape", &[0, m as i64, -1]);
    // (N, M, hw) × (N, hw, CK) — transpose whichever operand is smaller — then the sum over N.
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
    b.reshape(&per_sample, "w_shape", &[m as i64, c as i64, kh as i64, kw as i64])
}

/// dW of a grouped convolution (depthwise included): per group G, the columns of its cg input
/// channels (N, G, cg·kk, hw) times its mg output gradients (N, G, hw, mg), summed over N.
fn grouped_weight_grad(b: &mut GraphBuilder, r: &Rule, g: &ConvGeom) -> String {
    let (gr, cg, kh, kw) = (g.group, g.cg, g.kh, g.kw);
    let (ck, mg) = ((cg * kh * kw) as i64, (g.m / gr) as i64);
    let cols = unfold(b, r, g, cg * gr);
    let cols = b.reshape(&cols, "cols_shape", &[0, gr as i64, ck, -1]);
    // (N, G, mg, hw) → (N, G, hw, mg): a plain reshape for depthwise (mg = 1).
    let dyt = if mg == 1 {
        b.reshape(r.dy, "dy_shape", &[0, gr as i64, -1, 1])
    } else {
        let dyr = b.reshape(r.dy, "dy_shape", &[0, gr as i64, mg, -1]);
        b.op("Transpose", &[&dyr], vec![("perm", A::Ints(vec![0, 1, 3, 2]))])
    };
    let p = b.op("MatMul", &[&cols, &dyt], vec![]); // (N, G, cg·kk, mg)
    let s = batch_sum(b, &p, &[gr as i64, ck, mg]);
    let t = b.op("Transpose", &[&s], vec![("perm", A::Ints(vec![0, 2, 1]))]); // (G, mg, cg·kk)
    b.reshape(&t, "w_shape", &[g.m as i64, cg as i64, kh as i64, kw as i64])
}

fn max_pool(b: &mut GraphBuilder, r: &Rule, always_scatter: bool) -> Result<Grads> {
    let (n, x0, dy) = (r.n, &r.n.input[0], r.dy);
    if attr_i(n, "storage_order", 0) != 0 || ints(n, "dilations", 2, 1).iter().any(|&v| v != 1) {
        return Err(unsupported(n, "MaxPool with storage_order or dilations".into()));
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
        let sc = b.op("ScatterElements", &[&zf, &i_f, &d_f], vec![("axis", A::I(0)), ("reduction", A::S("add"))]);
        b.op("Reshape", &[&sc, &shp], vec![])
    } else {
        let k = attr_ints(n, "kernel_shape").unwrap_or_default();
        b.op("MaxUnpool", &[dy, &idx, &shp], vec![("kernel_shape", A::Ints(k.clone())), ("strides", A::Ints(k))])
    };
    Ok(vec![(x0.clone(), dx)])
}

fn global_average_pool(b: &mut GraphBuilder, r: &Rule) -> Grads {
    let x0 = &r.n.input[0];
    let shp = b.op("Shape", &[x0], vec![]);
    let e = b.op("Expand", &[r.dy, &shp], vec![]);
    let count: usize = r.xs[2..].iter().product();
    let c = b.const_f32("inv_count", 1.0 / count as f32);
    vec![(x0.clone(), b.op("Mul", &[&e, &c], vec![]))]
}

fn batch_normalization(b: &mut GraphBuilder, r: &Rule) -> Result<Grads> {
    let (n, x0, dy) = (r.n, &r.n.input[0], r.dy);
    if attr_i(n, "training_mode", 0) != 0 {
        return Err(unsupported(n, "BatchNormalization in training mode (export in inference form)".into()));
    }
    let (scale, bias, mean, var) = (&n.input[1], &n.input[2], &n.input[3], &n.input[4]);
    let rank = r.xs.len();
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
    let mut out = Grads::new();
    if (r.wants)(0) {
        let si = b.op("Mul", &[scale, &inv], vec![]);
        let si = bcast(b, &si);
        out.push((x0.clone(), b.op("Mul", &[dy, &si], vec![])));
    }
    if (r.wants)(1) {
        let m = bcast(b, mean);
        let i = bcast(b, &inv);
        let xc = b.op("Sub", &[x0, &m], vec![]);
        let xh = b.op("Mul", &[&xc, &i], vec![]);
        let p = b.op("Mul", &[dy, &xh], vec![]);
        let a = b.const_i64("axes", &reduce);
        out.push((scale.clone(), b.op("ReduceSum", &[&p, &a], vec![("keepdims", A::I(0))])));
    }
    if (r.wants)(2) {
        let a = b.const_i64("axes", &reduce);
        out.push((bias.clone(), b.op("ReduceSum", &[dy, &a], vec![("keepdims", A::I(0))])));
    }
    Ok(out)
}

fn concat(b: &mut GraphBuilder, r: &Rule) -> Grads {
    let n = r.n;
    let rank = r.ys.len() as i64;
    let mut axis = attr_i(n, "axis", 0);
    if axis < 0 {
        axis += rank;
    }
    let mut out = Grads::new();
    let mut off = 0i64;
    for (i, t) in n.input.iter().enumerate() {
        let len = r.shapes[t][axis as usize] as i64;
        if (r.wants)(i) {
            let st = b.const_i64("starts", &[off]);
            let en = b.const_i64("ends", &[off + len]);
            let ax = b.const_i64("axes", &[axis]);
            out.push((t.clone(), b.op("Slice", &[r.dy, &st, &en, &ax], vec![])));
        }
        off += len;
    }
    out
}
