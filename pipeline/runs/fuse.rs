//! The deployable model: preprocessing + backbone + head fused into ONE ONNX graph (input: RGB
//! 0..255 images (N,H,W,3); output: class probabilities), or a whole net wrapped with its input
//! conversion; the metadata `score` reads back.

use crate::error::{Error, Result};
use crate::imageio::{Interpolation, Preprocess, View};
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, cut, Dim, GraphBuilder};
use std::collections::HashMap;
use std::path::Path;

/// The deployable model's file in a run folder.
pub const MODEL: &str = "model.onnx";

/// The deployable model's input (RGB 0..255 images, N×H×W×3) and output (class probabilities).
pub const INPUT: &str = "image";
pub const OUTPUT: &str = "probs";

/// Rename every tensor of `g` with `prefix`, except those in `keep` (mapped as given).
pub(super) fn rename(g: &GraphProto, prefix: &str, keep: &HashMap<String, String>) -> GraphProto {
    let map = |s: &String| -> String {
        if s.is_empty() {
            return s.clone();
        }
        keep.get(s).cloned().unwrap_or_else(|| format!("{prefix}{s}"))
    };
    let mut out = g.clone();
    // The fused graph runs at tlearn's opset, where Clip and Pad take inputs.
    onnx::upgrade_attribute_forms(&mut out);
    for n in out.node.iter_mut() {
        n.input = n.input.iter().map(map).collect();
        n.output = n.output.iter().map(map).collect();
        n.name = format!("{prefix}{}", n.name);
    }
    for t in out.initializer.iter_mut() {
        t.name = map(&t.name);
    }
    out
}

/// A deployable model's graph so far: its name and its input, RGB images of `size`².
pub(super) fn classifier_builder(size: u32) -> GraphBuilder {
    let mut b = GraphBuilder::new("tlearn_classifier").with_prefix("pre/");
    b.input(INPUT, &[Dim::named("N"), Dim::Fixed(size as i64), Dim::Fixed(size as i64), Dim::Fixed(3)]);
    b
}

/// One graph: raw RGB → preprocessing → backbone → head. `classes` and the input settings are
/// recorded in the model's metadata. With `tta` views the graph also runs those flips of every
/// image and returns the mean probability over the plain image and its views (as `tlearn-evaluate`
/// does with the cached views).
pub fn fuse(
    backbone: &ModelProto,
    head: &ModelProto,
    pre: &Preprocess,
    size: u32,
    interpolation: Interpolation,
    classes: &[String],
    tta: &[View],
) -> Result<ModelProto> {
    let mut b = classifier_builder(size);
    let x = emit_preprocess(&mut b, INPUT, pre);
    let views: Vec<View> = tta.iter().copied().filter(|v| *v != View::Identity).collect();
    let x = if views.is_empty() { x } else { emit_views(&mut b, &x, &views) };
    let bg = onnx::graph(backbone);
    let hg = onnx::graph(head);
    let head_in = onnx::real_inputs(hg)
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::Other("head has no input".into()))?;
    let head_out =
        hg.output.first().map(|o| o.name.clone()).ok_or_else(|| Error::Other("head has no output".into()))?;
    let k = crate::metrics::output_width(classes.len());
    if let Some(Some(got)) = hg.output.first().and_then(|o| onnx::vi_shape(o).1.last().copied()) {
        if got != k as i64 {
            return Err(Error::Shape {
                what: format!(
                    "head outputs per image for {} classes (the head does not match its class list)",
                    classes.len()
                ),
                expected: vec![k],
                got: vec![got.max(0) as usize],
            });
        }
    }
    let head_probs = if views.is_empty() { OUTPUT.to_string() } else { PROBS_ALL.to_string() };
    let bb = rename(bg, "backbone/", &HashMap::from([(cut::IMAGE.to_string(), x.clone())]));
    let hh = rename(
        hg,
        "head/",
        &HashMap::from([(head_in, format!("backbone/{}", cut::FEATURES)), (head_out, head_probs.clone())]),
    );
    for g in [bb, hh] {
        b.graph.node.extend(g.node);
        b.graph.initializer.extend(g.initializer);
    }
    if !views.is_empty() {
        emit_view_mean(&mut b, &head_probs, views.len() + 1, k);
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(k as i64)]);
    finish(b, &[backbone, head], size, interpolation, classes, &views)
}

/// [`OUTPUT`] as the mean over the `nv` views of `probs` (V·N, k), view-major: (V, N·k) → mean
/// over V as a (1, V) MatMul → (N, k).
fn emit_view_mean(b: &mut GraphBuilder, probs: &str, nv: usize, k: usize) {
    let r = b.reshape(probs, "tta_shape", &[nv as i64, -1]);
    let w = b.init_f32("tta/mean", &ndarray::Array2::from_elem((1, nv), 1.0 / nv as f32).into_dyn());
    let m = b.op("MatMul", &[&w, &r], vec![]);
    let s2 = b.const_i64("tta_rows", &[-1, k as i64]);
    b.node("Reshape", &[&m, &s2], &[OUTPUT], vec![]);
}

/// The backbone's preprocessing on raw RGB 0..255 (N, H, W, 3): channel order, scale, mean, std.
fn emit_preprocess(b: &mut GraphBuilder, input: &str, pre: &Preprocess) -> String {
    let mut x = input.to_string();
    if pre.bgr {
        let idx = b.const_i64("bgr", &[2, 1, 0]);
        x = b.op("Gather", &[&x, &idx], vec![("axis", A::I(3))]);
    }
    if pre.scale != 1.0 {
        let s = b.const_f32("scale", pre.scale);
        x = b.op("Mul", &[&x, &s], vec![]);
    }
    if pre.mean != [0.0; 3] {
        let m = b.const_vec_f32("mean", &pre.mean);
        x = b.op("Sub", &[&x, &m], vec![]);
    }
    if pre.std != [1.0; 3] {
        let s = b.const_vec_f32("std", &pre.std);
        x = b.op("Div", &[&x, &s], vec![]);
    }
    x
}

/// The plain images and their flipped `views` stacked along the batch axis: (V·N, H, W, 3),
/// view-major.
fn emit_views(b: &mut GraphBuilder, x: &str, views: &[View]) -> String {
    let mut parts = vec![x.to_string()];
    for v in views {
        let (rows, cols) = v.flips();
        let axes: Vec<i64> = [(rows, 1), (cols, 2)].iter().filter(|f| f.0).map(|f| f.1).collect();
        let k = axes.len();
        let st = b.const_i64("flip_starts", &vec![-1; k]);
        let en = b.const_i64("flip_ends", &vec![i64::MIN; k]);
        let ax = b.const_i64("flip_axes", &axes);
        let sp = b.const_i64("flip_steps", &vec![-1; k]);
        parts.push(b.op("Slice", &[x, &st, &en, &ax, &sp], vec![]));
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    b.node("Concat", &refs, &[VIEWS], vec![("axis", A::I(0))]);
    VIEWS.to_string()
}

/// The stacked views of a TTA model (`emit_views`) and their probabilities before the mean.
const VIEWS: &str = "tta/views";
const PROBS_ALL: &str = "tta/probs_all";

/// A deployable model without its TTA views: the plain image's probabilities straight from the
/// net's Sigmoid/Softmax (what Grad-CAM differentiates). A model without views comes back as is.
pub fn plain(m: &ModelProto, path: &Path) -> Result<ModelProto> {
    if meta_views(m, path)?.is_empty() {
        return Ok(m.clone());
    }
    let mut p = m.clone();
    let g = p.graph.as_mut().expect("graph");
    let Some(stack) = g.node.iter().position(|n| n.output.iter().any(|o| o == VIEWS)) else {
        return Err(Error::BadModel {
            path: path.into(),
            reason: "its TTA views have no `tta/views` tensor (made by an older tlearn): rebuild it".into(),
        });
    };
    let plain_input = g.node[stack].input[0].clone();
    g.node.remove(stack);
    // The mean over the views goes; the net's own output becomes the model's.
    let mean_start = g.node.iter().position(|n| n.input.iter().any(|i| i == PROBS_ALL)).unwrap_or(g.node.len());
    g.node.truncate(mean_start);
    for n in g.node.iter_mut() {
        for t in n.input.iter_mut().chain(n.output.iter_mut()) {
            if t == VIEWS {
                *t = plain_input.clone();
            } else if t == PROBS_ALL {
                *t = OUTPUT.into();
            }
        }
    }
    // The flips that fed the stack, and the mean's constants, are read by nothing now.
    let reads = |g: &onnx::proto::GraphProto| -> std::collections::HashSet<String> {
        g.node.iter().flat_map(|n| n.input.iter().cloned()).collect()
    };
    loop {
        let (read, before) = (reads(g), g.node.len());
        g.node.retain(|n| n.output.iter().any(|o| read.contains(o) || o == OUTPUT));
        if g.node.len() == before {
            break;
        }
    }
    let read = reads(g);
    g.initializer.retain(|t| read.contains(&t.name));
    for e in p.metadata_props.iter_mut().filter(|e| e.key == "tlearn.tta") {
        e.value = "[]".into();
    }
    Ok(p)
}

/// The TTA views a model's metadata names (none when it names none).
fn meta_views(m: &ModelProto, path: &Path) -> Result<Vec<View>> {
    let Some(tta) = m.metadata_props.iter().find(|p| p.key == "tlearn.tta") else { return Ok(vec![]) };
    serde_json::from_str(&tta.value).map_err(|e| Error::BadModel {
        path: path.into(),
        reason: format!("metadata tlearn.tta `{}` is not a list of views: {e}", tta.value),
    })
}

/// The graph `b` as a deployable model: opset of the parts, metadata that `score` reads.
pub(super) fn finish(
    b: GraphBuilder,
    parts: &[&ModelProto],
    size: u32,
    interpolation: Interpolation,
    classes: &[String],
    tta: &[View],
) -> Result<ModelProto> {
    let mut m = onnx::model(b.finish(), "tlearn");
    let opset = parts
        .iter()
        .flat_map(|m| m.opset_import.iter())
        .filter(|o| o.domain.is_empty())
        .map(|o| o.version)
        .max()
        .unwrap_or(onnx::OPSET);
    for o in m.opset_import.iter_mut().filter(|o| o.domain.is_empty()) {
        o.version = opset;
    }
    m.metadata_props = vec![
        StringStringEntryProto { key: "tlearn.classes".into(), value: serde_json::to_string(classes).expect("json") },
        StringStringEntryProto { key: "tlearn.size".into(), value: size.to_string() },
        StringStringEntryProto {
            key: "tlearn.interpolation".into(),
            value: serde_json::to_string(&interpolation).expect("json"),
        },
        StringStringEntryProto { key: "tlearn.tta".into(), value: serde_json::to_string(tta).expect("json") },
        StringStringEntryProto {
            key: "tlearn.input".into(),
            value: "RGB 0..255 float32 (N,H,W,3); preprocessing is in the graph".into(),
        },
    ];
    Ok(m)
}

/// A deployable model from a whole classifier `net` that takes (N,H,W,C) images scaled by
/// `scale` (C = 1: gray, ITU-R 601 luma): raw RGB 0..255 in, probabilities out — with `tta`
/// views, the mean over the plain image and those flips of it.
pub fn deployable(
    net: &ModelProto,
    size: u32,
    channels: usize,
    scale: f32,
    interpolation: Interpolation,
    classes: &[String],
    tta: &[View],
) -> Result<ModelProto> {
    let mut b = classifier_builder(size);
    let mut x = INPUT.to_string();
    if channels == 1 {
        let w = b.init_f32(
            "pre/luma",
            &ndarray::Array2::from_shape_vec((3, 1), crate::imageio::LUMA.to_vec()).expect("3×1").into_dyn(),
        );
        let l = b.op("MatMul", &[&x, &w], vec![]);
        // Rounded like the 8-bit gray images training saw (PIL "L").
        x = b.op("Round", &[&l], vec![]);
    }
    if scale != 1.0 {
        let s = b.const_f32("scale", scale);
        x = b.op("Mul", &[&x, &s], vec![]);
    }
    let g = onnx::graph(net);
    let net_in = onnx::real_inputs(g)
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::Other("model has no input".into()))?;
    let net_out = g.output.first().map(|o| o.name.clone()).ok_or_else(|| Error::Other("model has no output".into()))?;
    let k = crate::metrics::output_width(classes.len());
    let views: Vec<View> = tta.iter().copied().filter(|v| *v != View::Identity).collect();
    if !views.is_empty() {
        x = emit_views(&mut b, &x, &views);
    }
    let probs = if views.is_empty() { OUTPUT.to_string() } else { PROBS_ALL.to_string() };
    let r = rename(g, "net/", &HashMap::from([(net_in, x), (net_out, probs.clone())]));
    b.graph.node.extend(r.node);
    b.graph.initializer.extend(r.initializer);
    if !views.is_empty() {
        emit_view_mean(&mut b, &probs, views.len() + 1, k);
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(k as i64)]);
    finish(b, &[net], size, interpolation, classes, &views)
}

/// What a deployable model needs to be fed.
#[derive(Clone, Debug)]
pub struct ModelMeta {
    pub classes: Vec<String>,
    pub size: u32,
    pub interpolation: Interpolation,
}

pub fn meta(m: &ModelProto, path: &Path) -> Result<ModelMeta> {
    let get = |k: &str| m.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let bad = |what: &str| Error::BadData {
        path: path.into(),
        reason: format!(
            "not a deployable tlearn classifier (metadata {what} missing or invalid): give a run's model.onnx \
             (`tlearn-score --run NAME --export-only` writes a head run's)"
        ),
    };
    let classes: Vec<String> =
        get("tlearn.classes").and_then(|v| serde_json::from_str(&v).ok()).ok_or_else(|| bad("tlearn.classes"))?;
    let size: u32 = get("tlearn.size")
        .and_then(|v| v.parse().ok())
        .filter(|s| (1..=cut::MAX_SIDE as u32).contains(s))
        .ok_or_else(|| bad("tlearn.size"))?;
    if classes.is_empty() {
        return Err(bad("tlearn.classes"));
    }
    let interpolation = get("tlearn.interpolation").and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
    Ok(ModelMeta { classes, size, interpolation })
}
