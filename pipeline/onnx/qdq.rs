//! Static int8 quantization of a conv base in ONNX's QDQ form: QuantizeLinear → DequantizeLinear
//! pairs around float ops, which ORT's graph optimizer fuses into integer kernels (QLinearConv,
//! QLinearAdd; a Relu or Clip before a Q node is dropped). Weights: int8, symmetric, one scale per
//! output channel; biases: int32 at the input scale × the weight scale; activations: uint8, one
//! scale and zero point per tensor, from ranges measured on calibration images (which tensors need
//! one: [`Plan::calibrated`]).

use super::proto::{dtype, GraphProto, ModelProto, NodeProto, TensorProto};
use super::{attr, attr_i, constant, tensor_f32, tensor_to_f32};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

/// Ops whose output carries its input's quantization unchanged (integer kernels, or Q/DQ dropped).
const PASS_THROUGH: [&str; 6] = ["MaxPool", "Transpose", "Reshape", "Flatten", "Identity", "Squeeze"];
/// Ops a graph of opset < 13 may hold to be declared opset 13 (per-channel DequantizeLinear):
/// their meaning is the same in both.
const SAME_IN_13: [&str; 14] = [
    "Conv",
    "Relu",
    "MaxPool",
    "Add",
    "Transpose",
    "Identity",
    "Flatten",
    "Mul",
    "Sigmoid",
    "Concat",
    "GlobalAveragePool",
    "AveragePool",
    "Reshape",
    "Squeeze",
];

/// How much of int8's range the weights use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightRange {
    #[default]
    Full,
    // Without VNNI, ORT's u8s8 GEMM kernels sum pairs of uint8 × int8 products in 16 bits, which
    // 255 × 127 × 2 overflows and 255 × 63 × 2 does not. Depthwise Convs (one input and one
    // output channel a group) run on a kernel that widens to 16 bits first, and their few weights
    // a channel are where a lost bit costs the most: they keep the full range.
    Reduced,
}

impl crate::params::Choice for WeightRange {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (WeightRange::Full, "full", "−127…127"),
        (WeightRange::Reduced, "reduced", "−63…63 (7 bits), depthwise convolutions excepted"),
    ];
}

impl WeightRange {
    /// The largest weight magnitude for a Conv with weight `w` (M, C/group, kh, kw).
    fn limit(self, w: &TensorProto, group: i64) -> f32 {
        let depthwise = group > 1 && w.dims.get(1) == Some(&1) && w.dims.first() == Some(&group);
        match self {
            WeightRange::Reduced if !depthwise => 63.0,
            _ => 127.0,
        }
    }
}

impl std::fmt::Display for WeightRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightRange::Full => "full",
            WeightRange::Reduced => "reduced",
        })
    }
}

/// Which tensors of a model are quantized, and from which tensor each takes its range.
#[derive(Debug)]
pub struct Plan {
    /// Quantized activation tensors → the tensor whose measured range they use (themselves, or
    /// the input of a pass-through op, so ORT can drop the Q/DQ pair around it).
    pub range_of: BTreeMap<String, String>,
    /// Convs (by output tensor) that stay in float32, weights and all.
    pub float_convs: BTreeSet<String>,
}

/// How many of a model's convolutions, counted from each end in graph order, stay in float32:
/// the first sees the raw image's range, the last ones write the features a head reads, and
/// those are where 8 bits cost the most accuracy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloatEnds {
    pub first: usize,
    pub last: usize,
}

impl Plan {
    /// The tensors whose ranges calibration must measure.
    pub fn calibrated(&self) -> Vec<String> {
        let set: HashSet<&String> = self.range_of.values().collect();
        let mut v: Vec<String> = set.into_iter().cloned().collect();
        v.sort();
        v
    }
}

/// A Conv's weight, if it is a float initializer of rank 4.
fn conv_weight<'g>(g: &'g GraphProto, n: &NodeProto) -> Option<&'g TensorProto> {
    let w = g.initializer.iter().find(|t| Some(&t.name) == n.input.get(1))?;
    (w.data_type == dtype::FLOAT && w.dims.len() == 4).then_some(w)
}

/// The tensors to quantize: every int8 Conv's input and output (after the Relu/Clip that alone
/// reads it), and the output (after its Relu) of every Add whose inputs are both quantized. The
/// Convs at the `float` ends (in node order) keep float weights; the tensors they read and write
/// are still quantized where an int8 Conv or such an Add writes or reads them.
pub fn plan(m: &ModelProto, float: FloatEnds) -> Plan {
    let g = super::graph(m);
    let readers = readers(g);
    let after_activation = |t: &str| -> String {
        match readers.get(t).map(Vec::as_slice) {
            Some(&[j]) if matches!(g.node[j].op_type.as_str(), "Relu" | "Clip") => g.node[j].output[0].clone(),
            _ => t.to_string(),
        }
    };
    let convs: Vec<&NodeProto> = g.node.iter().filter(|n| n.op_type == "Conv" && conv_weight(g, n).is_some()).collect();
    let kept = convs.len().saturating_sub(float.last).max(float.first.min(convs.len()));
    let float_convs: BTreeSet<String> =
        convs[..float.first.min(convs.len())].iter().chain(&convs[kept..]).map(|n| n.output[0].clone()).collect();
    let mut marked: Vec<String> = vec![];
    for n in convs.iter().filter(|n| !float_convs.contains(&n.output[0])) {
        marked.push(n.input[0].clone());
        marked.push(after_activation(&n.output[0]));
    }
    let quantized: HashSet<String> = marked.iter().cloned().collect();
    for n in g.node.iter().filter(|n| n.op_type == "Add" && n.input.len() == 2) {
        if n.input.iter().all(|i| quantized.contains(i)) {
            marked.push(after_activation(&n.output[0]));
        }
    }
    let marked: HashSet<String> = marked.into_iter().collect();
    let producer: HashMap<&str, &NodeProto> =
        g.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let mut range_of = BTreeMap::new();
    for t in &marked {
        let mut src = t.as_str();
        while let Some(p) = producer.get(src).filter(|p| PASS_THROUGH.contains(&p.op_type.as_str())) {
            if !marked.contains(&p.input[0]) {
                break;
            }
            src = &p.input[0];
        }
        range_of.insert(t.clone(), src.to_string());
    }
    Plan { range_of, float_convs }
}

fn readers(g: &GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut r: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for t in &n.input {
            r.entry(t.as_str()).or_default().push(i);
        }
    }
    r
}

/// uint8 scale and zero point of an activation range (widened to hold 0, as ORT does).
pub fn activation_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if !(hi - lo > 0.0 && (hi - lo).is_finite()) {
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    (scale, (-lo / scale).round().clamp(0.0, 255.0) as u8)
}

fn tensor_raw(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type, raw_data: raw, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{output}/{op}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: axis.map(|a| super::builder::attribute("axis", super::builder::A::I(a))).into_iter().collect(),
        ..Default::default()
    }
}

/// The model with `plan`'s tensors quantized at the measured `ranges` (min, max per calibrated
/// tensor) and every int8 Conv's weight (and bias) in integers, the weights within `weights`.
/// Errors name `path`.
pub fn quantize(
    m: &ModelProto,
    plan: &Plan,
    ranges: &BTreeMap<String, (f32, f32)>,
    weights: WeightRange,
    path: &Path,
) -> Result<ModelProto> {
    let mut m = m.clone();
    declare_opset_13(&mut m, path)?;
    let g = m.graph.as_mut().expect("a model has a graph");
    let mut params: HashMap<String, (f32, u8)> = HashMap::new();
    for (t, src) in &plan.range_of {
        let &(lo, hi) = ranges.get(src).ok_or_else(|| Error::BadModel {
            path: path.into(),
            reason: format!("no calibrated range for tensor `{src}`"),
        })?;
        params.insert(t.clone(), activation_params(lo, hi));
    }
    quantize_activations(g, plan, &params);
    quantize_convs(g, &params, &plan.float_convs, weights, path)?;
    Ok(m)
}

/// A Q → DQ pair after every planned tensor; its readers read the DQ's output instead.
fn quantize_activations(g: &mut GraphProto, plan: &Plan, params: &HashMap<String, (f32, u8)>) {
    let mut pairs: BTreeMap<String, Vec<NodeProto>> = BTreeMap::new();
    for t in plan.range_of.keys() {
        let (scale, zp) = params[t];
        let (s, z, q, dq) = (format!("{t}/qdq/scale"), format!("{t}/qdq/zero"), format!("{t}/qdq/q"), dq_name(t));
        for n in g.node.iter_mut() {
            n.input.iter_mut().filter(|i| *i == t).for_each(|i| *i = dq.clone());
        }
        g.initializer.push(tensor_raw(&s, &[], dtype::FLOAT, scale.to_le_bytes().to_vec()));
        g.initializer.push(tensor_raw(&z, &[], dtype::UINT8, vec![zp]));
        pairs.insert(
            t.clone(),
            vec![node("QuantizeLinear", &[t, &s, &z], &q, None), node("DequantizeLinear", &[&q, &s, &z], &dq, None)],
        );
    }
    // Nodes stay in topological order: a pair goes right after its tensor's producer (first,
    // for a graph input).
    let old = std::mem::take(&mut g.node);
    let produced: HashSet<&String> = old.iter().flat_map(|n| n.output.iter()).collect();
    let inputs: Vec<String> = pairs.keys().filter(|t| !produced.contains(t)).cloned().collect();
    let mut nodes: Vec<NodeProto> = inputs.iter().flat_map(|t| pairs.remove(t).unwrap_or_default()).collect();
    for n in old {
        let after: Vec<NodeProto> = n.output.iter().flat_map(|o| pairs.remove(o).unwrap_or_default()).collect();
        nodes.push(n);
        nodes.extend(after);
    }
    g.node = nodes;
}

const DQ_SUFFIX: &str = "/qdq/dq";

fn dq_name(t: &str) -> String {
    format!("{t}{DQ_SUFFIX}")
}

/// Every Conv with a float weight and a quantized input: int8 weight per output channel, int32
/// bias, each through a DequantizeLinear (axis 0) placed just before the Conv.
fn quantize_convs(
    g: &mut GraphProto,
    params: &HashMap<String, (f32, u8)>,
    float_convs: &BTreeSet<String>,
    weights: WeightRange,
    path: &Path,
) -> Result<()> {
    let mut rewrites: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut inits = vec![];
    let mut dropped: HashSet<String> = HashSet::new();
    let bad = |reason: String| Error::BadModel { path: path.into(), reason };
    for (i, n) in g.node.iter().enumerate().filter(|(_, n)| n.op_type == "Conv" && !float_convs.contains(&n.output[0]))
    {
        let Some(w) = conv_weight(g, n) else { continue };
        let x = n.input[0].strip_suffix(DQ_SUFFIX).unwrap_or(&n.input[0]);
        let Some(&(x_scale, _)) = params.get(x) else { continue };
        let at = format!("{}/qdq", n.output[0]);
        let wa = tensor_to_f32(w).map_err(|e| bad(e.to_string()))?;
        let bias = match n.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => {
                let bt =
                    constant(g, b).ok_or_else(|| bad(format!("Conv `{}`: bias `{b}` is not a constant", n.name)))?;
                Some((b.clone(), tensor_to_f32(bt).map_err(|e| bad(e.to_string()))?))
            }
            None => None,
        };
        // A channel whose weights are near zero but whose bias is not (common after BatchNorm
        // folding) would need an int32 bias past 2^31 at its weight scale: its weight scale is
        // raised until the bias fits (its weights round to what they nearly are, zero).
        let floor: Vec<f32> = match &bias {
            Some((_, ba)) => ba.iter().map(|v| v.abs() / (x_scale * 2.0e9)).collect(),
            None => vec![0.0; wa.shape()[0]],
        };
        let (q, scales) = int8_per_channel(&wa, &floor, weights.limit(w, attr_i(n, "group", 1)));
        let m_out = scales.len();
        let (wq, ws, wz, wdq) =
            (format!("{at}/w_int8"), format!("{at}/w_scale"), format!("{at}/w_zero"), format!("{at}/w"));
        inits.push(tensor_raw(&wq, &w.dims, dtype::INT8, q));
        inits.push(tensor_f32(&ws, &ndarray::Array1::from(scales.clone()).into_dyn()));
        inits.push(tensor_raw(&wz, &[m_out as i64], dtype::INT8, vec![0; m_out]));
        let mut nodes = vec![node("DequantizeLinear", &[&wq, &ws, &wz], &wdq, Some(0))];
        dropped.insert(w.name.clone());
        let mut conv = n.clone();
        conv.input[1] = wdq;
        if let Some((b, ba)) = bias {
            let bs: Vec<f32> = scales.iter().map(|s| x_scale * s).collect();
            let bq: Vec<u8> = ba
                .iter()
                .zip(&bs)
                .flat_map(|(v, s)| ((v / s).round().clamp(-2.0e9, 2.0e9) as i32).to_le_bytes())
                .collect();
            let (bqn, bsn, bzn, bdq) =
                (format!("{at}/b_int32"), format!("{at}/b_scale"), format!("{at}/b_zero"), format!("{at}/b"));
            inits.push(tensor_raw(&bqn, &[m_out as i64], dtype::INT32, bq));
            inits.push(tensor_f32(&bsn, &ndarray::Array1::from(bs).into_dyn()));
            inits.push(tensor_raw(&bzn, &[m_out as i64], dtype::INT32, vec![0; 4 * m_out]));
            nodes.push(node("DequantizeLinear", &[&bqn, &bsn, &bzn], &bdq, Some(0)));
            dropped.insert(b);
            conv.input[2] = bdq;
        }
        nodes.push(conv);
        rewrites.insert(i, nodes);
    }
    splice(g, rewrites, dropped, inits);
    Ok(())
}

/// Node `i` replaced by `rewrites[i]`; the `dropped` initializers no node reads any more removed
/// (from the graph's inputs too), `inits` added.
fn splice(
    g: &mut GraphProto,
    mut rewrites: HashMap<usize, Vec<NodeProto>>,
    dropped: HashSet<String>,
    inits: Vec<TensorProto>,
) {
    let old = std::mem::take(&mut g.node);
    for (i, n) in old.into_iter().enumerate() {
        match rewrites.remove(&i) {
            Some(v) => g.node.extend(v),
            None => g.node.push(n),
        }
    }
    let still_read: HashSet<&String> = g.node.iter().flat_map(|n| n.input.iter()).collect();
    let keep: Vec<bool> =
        g.initializer.iter().map(|t| !dropped.contains(&t.name) || still_read.contains(&t.name)).collect();
    let mut k = keep.iter();
    g.initializer.retain(|_| *k.next().expect("one flag per initializer"));
    // Older models list initializers among the graph inputs too: a dropped one must go there as well.
    let present: HashSet<&String> = g.initializer.iter().map(|t| &t.name).collect();
    let gone: HashSet<String> = dropped.into_iter().filter(|d| !present.contains(d)).collect();
    g.input.retain(|i| !gone.contains(&i.name));
    g.initializer.extend(inits);
}

/// Symmetric int8 per output channel (axis 0) within ±`max`, each scale at least `floor`: the
/// values as bytes, and each channel's scale.
fn int8_per_channel(w: &ndarray::ArrayD<f32>, floor: &[f32], max: f32) -> (Vec<u8>, Vec<f32>) {
    let m = w.shape()[0].max(1);
    let per = w.len() / m;
    let flat: Vec<f32> = w.iter().copied().collect();
    let scales: Vec<f32> = flat
        .chunks(per.max(1))
        .zip(floor)
        .map(|(c, &f)| (c.iter().fold(0f32, |a, v| a.max(v.abs())) / max).max(f))
        .map(|s| if s > 0.0 { s } else { 1.0 })
        .collect();
    let q = flat.iter().enumerate().map(|(k, v)| (v / scales[k / per]).round().clamp(-max, max) as i8 as u8).collect();
    (q, scales)
}

/// Per-channel DequantizeLinear needs opset 13: a graph declared older is declared 13 when every
/// op it holds means the same there.
fn declare_opset_13(m: &mut ModelProto, path: &Path) -> Result<()> {
    let g = super::graph(m);
    let mut odd: Vec<String> =
        g.node.iter().map(|n| n.op_type.clone()).filter(|op| !SAME_IN_13.contains(&op.as_str())).collect();
    odd.sort();
    odd.dedup();
    let clip_attrs = g.node.iter().any(|n| n.op_type == "Clip" && attr(n, "min").is_some());
    for o in m.opset_import.iter_mut().filter(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
        if o.version < 13 {
            if !odd.is_empty() || clip_attrs || o.version < 7 {
                return Err(Error::BadModel {
                    path: path.into(),
                    reason: format!(
                        "opset {} is too old for per-channel int8 weights (13), and its ops {odd:?} may differ there; \
                         export the model at opset 13 or later",
                        o.version
                    ),
                });
            }
            o.version = 13;
        }
    }
    Ok(())
}
