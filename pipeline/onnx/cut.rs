//! Cut a classifier down to its convolutional base and make it a feature extractor:
//! keep the subgraph from the image input to one tensor, free the batch and spatial dims,
//! and emit channels-last features under the output name [`FEATURES`].

use super::proto::*;
use super::{builder::attribute, builder::A, graph, vi_shape, Dim};
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Output name of every tlearn backbone.
pub const FEATURES: &str = "features";
/// Input name of every tlearn backbone (always NHWC float32).
pub const IMAGE: &str = "image";

/// A catalog's `cut` that asks for the cut rule ([`conv_base_end`]) instead of naming a tensor.
pub const AUTO: &str = "auto";

/// Memory layout of a 4-D image tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nhwc,
    Nchw,
}

impl crate::params::Choice for Layout {
    const ALL: &'static [(Self, &'static str, &'static str)] =
        &[(Layout::Nhwc, "nhwc", ""), (Layout::Nchw, "nchw", "")];
}

/// The largest image side (and batch) a model's declared input may have; larger declarations are
/// refused before anything is allocated from them.
pub const MAX_SIDE: i64 = 16_384;

/// A square input side (`--size`) within 1..=[`MAX_SIDE`].
pub fn check_size(size: u32) -> Result<()> {
    if !(1..=MAX_SIDE as u32).contains(&size) {
        return Err(Error::Param {
            name: "size",
            value: size.to_string(),
            reason: format!("must be in 1..={MAX_SIDE}"),
        });
    }
    Ok(())
}

/// The image input of a model: its name and layout. Errors name the model file.
pub fn image_input(m: &ModelProto, path: &Path) -> Result<(String, Layout)> {
    let g = graph(m);
    let inputs = super::real_inputs(g);
    let [inp] = inputs.as_slice() else {
        return Err(Error::NotImageInput {
            path: path.into(),
            input: inputs.iter().map(|i| i.name.clone()).collect::<Vec<_>>().join(","),
            got: format!("{} inputs, expected exactly one", inputs.len()),
        });
    };
    let (et, dims) = vi_shape(inp);
    let bad = |got: String| Error::NotImageInput { path: path.into(), input: inp.name.clone(), got };
    if et != dtype::FLOAT {
        return Err(bad(format!("element type {et}")));
    }
    if dims.len() != 4 {
        return Err(bad(format!("rank {} {:?}", dims.len(), dims)));
    }
    if dims.iter().flatten().any(|&d| !(1..=MAX_SIDE).contains(&d)) {
        return Err(bad(format!("absurd shape {dims:?} (sizes must be 1..={MAX_SIDE} or dynamic)")));
    }
    let is_ch = |d: Option<i64>| matches!(d, Some(1) | Some(3));
    let layout = if is_ch(dims[3]) {
        Layout::Nhwc
    } else if is_ch(dims[1]) {
        Layout::Nchw
    } else {
        return Err(bad(format!("shape {:?} has no 1- or 3-channel axis", dims)));
    };
    Ok((inp.name.clone(), layout))
}

/// Keep the part of `m` that computes `cut` from the image input.
///
/// The result has one input [`IMAGE`] `(N,H,W,C)` and one output [`FEATURES`] `(N,h,w,c)`;
/// `cut_layout` says whether `cut` itself is NCHW (a Transpose is appended) or NHWC.
pub fn cut_model(m: &ModelProto, path: &Path, cut: &str, cut_layout: Layout) -> Result<ModelProto> {
    cut_model_pooled(m, path, &[cut.to_string()], cut_layout, None)
}

/// The cut rule: the last 4-D tensor with a spatial extent (two axes after the batch longer than
/// one) before the classifier. It walks back from the model's first output along each node's data
/// input (its first input that no initializer or constant gives) past the classifier — the first
/// Conv, Gemm or MatMul met, so a 1×1 class-score convolution (SqueezeNet) is not taken for
/// features — to the first spatial tensor, with shapes from one run on a zero image of `size`. Its
/// layout is NHWC when layout-keeping ops lead back to an NCHW→NHWC Transpose (TF exports), else
/// NCHW.
pub fn conv_base_end(m: &ModelProto, path: &Path, size: u32) -> Result<(String, Layout)> {
    check_size(size)?;
    let g = graph(m);
    let (input, layout) = image_input(m, path)?;
    let producer: HashMap<&str, &NodeProto> =
        g.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let op = |t: &str| producer.get(t).map(|n| n.op_type.as_str()).unwrap_or("");
    let chain: Vec<String> = data_chain(g, &producer, &input).into_iter().filter(|t| *t != input).collect();
    let n = size as usize;
    let shape = match layout {
        Layout::Nchw => [1, 3, n, n],
        Layout::Nhwc => [1, n, n, 3],
    };
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&shape));
    let shapes = super::probe::shapes(m, path, vec![(input.as_str(), x.view())], &chain)?;
    let spatial =
        |t: &String| shapes.get(t).is_some_and(|s| s.len() == 4 && s[1..].iter().filter(|&&d| d > 1).count() >= 2);
    let classifier = chain.iter().position(|t| matches!(op(t), "Conv" | "Gemm" | "MatMul")).map_or(0, |i| i + 1);
    let Some(at) = (classifier..chain.len()).find(|&i| spatial(&chain[i])) else {
        return Err(Error::BadModel {
            path: path.into(),
            reason: format!(
                "no 4-D tensor with a spatial extent before the classifier, walking back from the output `{}` \
                 at {size}×{size}; give the cut tensor by name (`tlearn-backbone add --output`)",
                g.output.first().map(|o| o.name.as_str()).unwrap_or("")
            ),
        });
    };
    let keeps_layout = |o: &str| {
        matches!(
            o,
            "Relu" | "Clip" | "Sigmoid" | "Tanh" | "LeakyRelu" | "HardSigmoid" | "Identity" | "Dropout" | "Mul" | "Add"
        )
    };
    let nhwc = chain[at..]
        .iter()
        .find(|t| !keeps_layout(op(t)))
        .and_then(|t| producer.get(t.as_str()))
        .is_some_and(|n| n.op_type == "Transpose" && super::attr_ints(n, "perm").as_deref() == Some(&[0, 2, 3, 1]));
    Ok((chain[at].clone(), if nhwc { Layout::Nhwc } else { Layout::Nchw }))
}

/// Tensors from the first graph output back to the input, one data input per node.
fn data_chain(g: &GraphProto, producer: &HashMap<&str, &NodeProto>, input: &str) -> Vec<String> {
    let constant: HashSet<&str> = g
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .chain(g.node.iter().filter(|n| n.op_type == "Constant").flat_map(|n| n.output.iter().map(String::as_str)))
        .collect();
    let mut chain = vec![];
    let mut t = g.output.first().map(|o| o.name.clone());
    // A graph is acyclic; the bound only guards against a malformed one.
    while let Some(name) = t.take().filter(|_| chain.len() <= g.node.len()) {
        let node = producer.get(name.as_str()).copied();
        chain.push(name);
        if chain.last().is_some_and(|n| n == input) {
            break;
        }
        t = node.and_then(|n| n.input.iter().find(|i| !i.is_empty() && !constant.contains(i.as_str())).cloned());
    }
    chain
}

/// Global pooling applied to each cut tensor before concatenation (multi-scale features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalPool {
    Avg,
    Max,
    /// Average and max side by side (2× the channels).
    AvgMax,
}

impl crate::params::Choice for GlobalPool {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (GlobalPool::Avg, "avg", ""),
        (GlobalPool::Max, "max", ""),
        (GlobalPool::AvgMax, "avg-max", "Average and max side by side (2× the channels)"),
    ];
}

/// Like [`cut_model`], but with several cut tensors (all in `cut_layout`): with `pool`, each is
/// globally pooled and the results are concatenated into features (N, 1, 1, Σc).
pub fn cut_model_pooled(
    m: &ModelProto,
    path: &Path,
    cuts: &[String],
    cut_layout: Layout,
    pool: Option<GlobalPool>,
) -> Result<ModelProto> {
    if cuts.is_empty() || (pool.is_none() && cuts.len() != 1) {
        return Err(Error::Param {
            name: "cut",
            value: cuts.join(", "),
            reason: format!("{}: give one cut tensor, or several with a global pooling", path.display()),
        });
    }
    let (input, in_layout) = image_input(m, path)?;
    // The cut graph's own input and output are named `image` and `features`: a source tensor
    // that already bears one of those names is renamed first.
    let renamed;
    let (m, input, cuts) = if uses_reserved_names(m, &input) {
        renamed = rename_reserved(m);
        let r = |t: &str| reserved_name(t).unwrap_or_else(|| t.to_string());
        (&renamed, r(&input), cuts.iter().map(|c| r(c)).collect::<Vec<_>>())
    } else {
        (m, input, cuts.to_vec())
    };
    let cuts = cuts.as_slice();
    let g = graph(m);
    let (keep, used_inits) = needed(g, path, cuts, &input)?;
    let mut b = super::GraphBuilder::new("tlearn_backbone").with_prefix("tl_cut_");
    image_adapter(&mut b, g, &input, in_layout);
    for (i, n) in g.node.iter().enumerate() {
        if keep.contains(&i) {
            b.graph.node.push(n.clone());
        }
    }
    for t in &g.initializer {
        if used_inits.contains(&t.name) {
            b.graph.initializer.push(t.clone());
        }
    }
    let last = match pool {
        None => cuts[0].clone(),
        Some(p) => pool_cuts(&mut b, cuts, cut_layout, p),
    };
    match cut_layout {
        Layout::Nchw => b.node("Transpose", &[&last], &[FEATURES], vec![("perm", A::Ints(vec![0, 2, 3, 1]))]),
        Layout::Nhwc => b.node("Identity", &[&last], &[FEATURES], vec![]),
    }
    b.output(FEATURES, &[Dim::named("N"), Dim::named("h"), Dim::named("w"), Dim::named("c")]);
    let mut out = m.clone();
    out.graph = Some(b.finish());
    out.producer_name = format!("tlearn (cut of {})", m.producer_name);
    // Legacy ONNX (IR < 4) required initializers to be listed as inputs; ours are not.
    out.ir_version = out.ir_version.max(4);
    Ok(out)
}

/// Whether a tensor of `m` (or its input) is named like the cut graph's own input or output.
fn uses_reserved_names(m: &ModelProto, input: &str) -> bool {
    graph(m).node.iter().flat_map(|n| n.input.iter().chain(&n.output)).any(|t| t == IMAGE || t == FEATURES)
        || input == FEATURES
}

/// The initializers of `m`'s conv base ([`conv_base_end`] at `size`): what a lower learning rate
/// for a pretrained base applies to; the rest is the classifier head.
pub fn base_initializers(m: &ModelProto, path: &Path, size: u32) -> Result<HashSet<String>> {
    let (end, _) = conv_base_end(m, path, size)?;
    initializers_feeding(m, path, &[end])
}

/// The initializers of every node that `tensors` are computed from (from `m`'s image input).
pub fn initializers_feeding(m: &ModelProto, path: &Path, tensors: &[String]) -> Result<HashSet<String>> {
    let (input, _) = image_input(m, path)?;
    Ok(needed(graph(m), path, tensors, &input)?.1)
}

/// The nodes (by index) and initializers that compute `cuts` from `input`.
fn needed(g: &GraphProto, path: &Path, cuts: &[String], input: &str) -> Result<(HashSet<usize>, HashSet<String>)> {
    let producer: HashMap<&str, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let inits: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    check_cuts(&producer, path, cuts, input)?;
    // Walk back from the cut tensor.
    let mut keep = HashSet::new();
    let mut used_inits = HashSet::new();
    let mut stack = cuts.to_vec();
    let mut seen = HashSet::new();
    let mut reaches_input = cuts.iter().any(|c| c == input);
    while let Some(t) = stack.pop() {
        if !seen.insert(t.clone()) {
            continue;
        }
        if t == input {
            reaches_input = true;
        } else if let Some(&i) = producer.get(t.as_str()) {
            keep.insert(i);
            stack.extend(g.node[i].input.iter().filter(|s| !s.is_empty()).cloned());
        } else if inits.contains_key(t.as_str()) {
            used_inits.insert(t);
        } else {
            return Err(Error::BadModel { path: path.into(), reason: format!("tensor `{t}` has no producer") });
        }
    }
    if !reaches_input {
        return Err(Error::BadModel {
            path: path.into(),
            reason: format!("tensor(s) `{}` do not depend on the input `{input}`", cuts.join("`, `")),
        });
    }
    Ok((keep, used_inits))
}

/// Every cut tensor is the input or some node's output; the error lists a few candidates.
fn check_cuts(producer: &HashMap<&str, usize>, path: &Path, cuts: &[String], input: &str) -> Result<()> {
    for cut in cuts {
        let cut = cut.as_str();
        if !producer.contains_key(cut) && cut != input {
            let mut near: Vec<&str> =
                producer.keys().copied().filter(|k| k.contains("pool") || k.contains("Relu")).collect();
            near.sort();
            near.truncate(8);
            return Err(Error::NoSuchTensor {
                name: cut.into(),
                hint: format!(" of {} (candidates: {})", path.display(), near.join(", ")),
            });
        }
    }
    Ok(())
}

/// The new input [`IMAGE`], always NHWC, fed to the source graph's input `input` (transposed
/// when that is NCHW).
fn image_adapter(b: &mut super::GraphBuilder, g: &GraphProto, input: &str, in_layout: Layout) {
    b.input(IMAGE, &[Dim::named("N"), Dim::named("H"), Dim::named("W"), channel_dim(g, input, in_layout)]);
    b.node("Identity", &[IMAGE], &[input], vec![]);
    if in_layout == Layout::Nchw {
        b.graph.node.pop();
        b.graph.node.push(NodeProto {
            name: "tl_cut_to_nchw".into(),
            op_type: "Transpose".into(),
            input: vec![IMAGE.into()],
            output: vec![input.into()],
            attribute: vec![attribute("perm", A::Ints(vec![0, 3, 1, 2]))],
            ..Default::default()
        });
    }
}

/// Each cut tensor globally pooled, concatenated along the channels.
fn pool_cuts(b: &mut super::GraphBuilder, cuts: &[String], cut_layout: Layout, p: GlobalPool) -> String {
    let (axes, ch) = match cut_layout {
        Layout::Nchw => (vec![2, 3], 1),
        Layout::Nhwc => (vec![1, 2], 3),
    };
    let mut parts = vec![];
    for c in cuts {
        if matches!(p, GlobalPool::Avg | GlobalPool::AvgMax) {
            parts.push(b.op("ReduceMean", &[c], vec![("axes", A::Ints(axes.clone())), ("keepdims", A::I(1))]));
        }
        if matches!(p, GlobalPool::Max | GlobalPool::AvgMax) {
            parts.push(b.op("ReduceMax", &[c], vec![("axes", A::Ints(axes.clone())), ("keepdims", A::I(1))]));
        }
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    b.op("Concat", &refs, vec![("axis", A::I(ch))])
}

/// The name a source tensor called `image` or `features` gets inside a cut graph.
fn reserved_name(t: &str) -> Option<String> {
    (t == IMAGE || t == FEATURES).then(|| format!("tl_src_{t}"))
}

/// `m` with its tensors named [`IMAGE`] or [`FEATURES`] renamed (nodes, initializers, graph
/// inputs and outputs).
fn rename_reserved(m: &ModelProto) -> ModelProto {
    let mut out = m.clone();
    let g = out.graph.as_mut().expect("graph");
    let fix = |t: &mut String| {
        if let Some(n) = reserved_name(t) {
            *t = n;
        }
    };
    for n in g.node.iter_mut() {
        n.input.iter_mut().for_each(fix);
        n.output.iter_mut().for_each(fix);
    }
    g.initializer.iter_mut().for_each(|t| fix(&mut t.name));
    g.input.iter_mut().chain(g.output.iter_mut()).for_each(|v| fix(&mut v.name));
    out
}

fn channel_dim(g: &GraphProto, input: &str, layout: Layout) -> Dim {
    let vi = g.input.iter().find(|i| i.name == input).expect("input exists");
    let (_, dims) = vi_shape(vi);
    let c = match layout {
        Layout::Nhwc => dims[3],
        Layout::Nchw => dims[1],
    };
    c.map(Dim::Fixed).unwrap_or_else(|| Dim::named("C"))
}

/// Sum of the element counts of all float initializers of rank ≥ 1 (scalars are hyper-parameters).
pub fn param_count(m: &ModelProto) -> usize {
    graph(m)
        .initializer
        .iter()
        .filter(|t| t.data_type == dtype::FLOAT && !t.dims.is_empty())
        .map(super::numel)
        .fold(0usize, usize::saturating_add)
}
