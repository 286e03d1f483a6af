//! EfficientNet-Lite (0, 1, 2) as an ONNX classifier, built from a PyTorch state dict
//! ([`crate::pth`]). Lite is EfficientNet-B0's layout without squeeze-excite, with ReLU6, TF "SAME"
//! padding and the stem (32) and head (1280) widths fixed; the variants differ in depth and width,
//! which the weights' names and shapes give, and in input size. BatchNormalization is folded into
//! the convolutions (inference form).

use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use crate::pth::StateDict;
use ndarray::{ArrayD, Axis};
use std::collections::HashMap;
use std::path::Path;

pub const INPUT: &str = "input";
/// The conv base's output: the head convolution after its ReLU6, (N, 1280, h, w).
pub const FEATURES: &str = "head/relu6";
pub const OUTPUT: &str = "probs";
/// BatchNormalization epsilon of the TF models these weights come from.
const BN_EPS: f32 = 1e-3;
/// Stride of the first block of each of the seven stages (EfficientNet-B0).
const STAGE_STRIDES: [i64; 7] = [1, 2, 2, 2, 1, 2, 1];

/// The state dict by name; every lookup names the file and the key it wanted.
struct Weights<'a> {
    map: HashMap<&'a str, &'a ArrayD<f32>>,
    /// Entries the reader left out as integers, by name: their storage type.
    integers: HashMap<&'a str, &'a str>,
    path: &'a Path,
}

impl Weights<'_> {
    fn get(&self, key: &str, rank: usize) -> Result<&ArrayD<f32>> {
        let Some(a) = self.map.get(key) else {
            let reason = match self.integers.get(key) {
                Some(ty) => format!("`{key}` holds integers ({ty}), not float32 weights (not an EfficientNet-Lite)"),
                None => format!("the state dict has no `{key}` (not an EfficientNet-Lite)"),
            };
            return Err(self.bad(reason));
        };
        if a.ndim() != rank {
            let (shape, r) = (a.shape(), a.ndim());
            return Err(self.bad(format!(
                "`{key}` has shape {shape:?} (rank {r}); an EfficientNet-Lite has a rank-{rank} tensor there"
            )));
        }
        Ok(a)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadData { path: self.path.into(), reason }
    }

    fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Conv `conv` with BatchNorm `bn` folded in: (weight, bias).
    fn folded(&self, conv: &str, bn: &str) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let w = self.get(&format!("{conv}.weight"), 4)?;
        let [gamma, beta, mean, var] =
            ["weight", "bias", "running_mean", "running_var"].map(|p| self.get(&format!("{bn}.{p}"), 1));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let c = w.shape()[0];
        if let Some(a) = [gamma, beta, mean, var].into_iter().find(|a| a.len() != c) {
            let what = format!("{}: `{bn}` vs the {c} channels of `{conv}`", self.path.display());
            return Err(Error::Shape { what, expected: vec![c], got: vec![a.len()] });
        }
        if var.iter().any(|&v| v + BN_EPS <= 0.0 || v.is_nan()) {
            return Err(self.bad(format!("`{bn}.running_var` holds a negative or NaN variance")));
        }
        let scale: Vec<f32> = gamma.iter().zip(var.iter()).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let mut wf = w.clone();
        for (o, mut row) in wf.axis_iter_mut(Axis(0)).enumerate() {
            row.mapv_inplace(|x| x * scale[o]);
        }
        let bias = ArrayD::from_shape_fn(ndarray::IxDyn(&[c]), |i| beta[i[0]] - mean[i[0]] * scale[i[0]]);
        Ok((wf, bias))
    }
}

/// One inverted-residual block as the weights describe it.
struct Block {
    prefix: String,
    expand: bool,
    stride: i64,
    inputs: usize,
    outputs: usize,
}

/// The blocks `_blocks.0 …` in order, with their stage's stride on a stage's first block (a stage
/// starts where the output width changes).
fn blocks(w: &Weights) -> Result<Vec<Block>> {
    let mut out: Vec<Block> = vec![];
    let mut stage = 0usize;
    while w.has(&format!("_blocks.{}._depthwise_conv.weight", out.len())) {
        let prefix = format!("_blocks.{}", out.len());
        let dw = w.get(&format!("{prefix}._depthwise_conv.weight"), 4)?;
        let project = w.get(&format!("{prefix}._project_conv.weight"), 4)?;
        let expand = w.has(&format!("{prefix}._expand_conv.weight"));
        let inputs =
            if expand { w.get(&format!("{prefix}._expand_conv.weight"), 4)?.shape()[1] } else { dw.shape()[0] };
        let outputs = project.shape()[0];
        let first = out.last().is_none_or(|b| b.outputs != outputs);
        if first && !out.is_empty() {
            stage += 1;
        }
        let stride = match (first, STAGE_STRIDES.get(stage)) {
            (true, Some(&s)) => s,
            (false, Some(_)) => 1,
            (_, None) => return Err(w.bad(format!("more than 7 stages at `{prefix}` (not an EfficientNet-Lite)"))),
        };
        out.push(Block { prefix, expand, stride, inputs, outputs });
    }
    if out.is_empty() {
        return Err(w.bad("the state dict has no `_blocks.0._depthwise_conv.weight` (not an EfficientNet-Lite)".into()));
    }
    Ok(out)
}

/// One convolution of the net: its weights' and BatchNorm's names, stride, groups, and the name of
/// its ReLU6 output (none after a projection).
struct Conv<'s> {
    conv: &'s str,
    bn: &'s str,
    stride: i64,
    group: i64,
    relu6: Option<&'s str>,
}

/// Conv (+ folded BN) → optional ReLU6 (Clip 0..6), TF "SAME" padding.
fn conv(b: &mut GraphBuilder, w: &Weights, x: &str, c: Conv) -> Result<String> {
    let Conv { conv, bn, stride, group, relu6 } = c;
    let (wf, bias) = w.folded(conv, bn)?;
    let (kh, kw) = (wf.shape()[2] as i64, wf.shape()[3] as i64);
    let wn = b.init_f32(&format!("{conv}.weight"), &wf);
    let bn_ = b.init_f32(&format!("{conv}.bias"), &bias);
    let attrs = vec![
        ("kernel_shape", A::Ints(vec![kh, kw])),
        ("strides", A::Ints(vec![stride, stride])),
        ("group", A::I(group)),
        ("auto_pad", A::S("SAME_UPPER")),
    ];
    let y = b.op("Conv", &[x, &wn, &bn_], attrs);
    Ok(match relu6 {
        Some(name) => {
            let (lo, hi) = (b.const_f32("relu6_min", 0.0), b.const_f32("relu6_max", 6.0));
            b.node("Clip", &[&y, &lo, &hi], &[name], vec![]);
            name.to_string()
        }
        None => y,
    })
}

/// The ImageNet classifier (N, 3, H, W) → (N, 1000) softmax of the state dict `sd` read from
/// `path`; its conv base ends at [`FEATURES`].
pub fn lite(sd: &StateDict, path: &Path) -> Result<ModelProto> {
    let w = Weights {
        map: sd.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        integers: sd.integers.iter().map(|(k, ty)| (k.as_str(), ty.as_str())).collect(),
        path,
    };
    let mut b = GraphBuilder::new("efficientnet_lite").with_prefix("n/");
    b.input(INPUT, &[Dim::named("N"), Dim::Fixed(3), Dim::named("H"), Dim::named("W")]);
    let stem = Conv { conv: "_conv_stem", bn: "_bn0", stride: 2, group: 1, relu6: Some("stem/relu6") };
    let mut x = conv(&mut b, &w, INPUT, stem)?;
    for blk in blocks(&w)? {
        let p = &blk.prefix;
        let mut h = x.clone();
        let names = |a: &str, bn: &str, out: &str| (format!("{p}.{a}"), format!("{p}.{bn}"), format!("{p}/{out}"));
        if blk.expand {
            let (c, bn, out) = names("_expand_conv", "_bn0", "expand");
            h = conv(&mut b, &w, &h, Conv { conv: &c, bn: &bn, stride: 1, group: 1, relu6: Some(&out) })?;
        }
        let width = w.get(&format!("{p}._depthwise_conv.weight"), 4)?.shape()[0] as i64;
        let (c, bn, out) = names("_depthwise_conv", "_bn1", "depthwise");
        h = conv(&mut b, &w, &h, Conv { conv: &c, bn: &bn, stride: blk.stride, group: width, relu6: Some(&out) })?;
        let (c, bn, _) = names("_project_conv", "_bn2", "");
        h = conv(&mut b, &w, &h, Conv { conv: &c, bn: &bn, stride: 1, group: 1, relu6: None })?;
        if blk.stride == 1 && blk.inputs == blk.outputs {
            h = b.op("Add", &[&h, &x], vec![]);
        }
        x = h;
    }
    x = conv(&mut b, &w, &x, Conv { conv: "_conv_head", bn: "_bn1", stride: 1, group: 1, relu6: Some(FEATURES) })?;
    let pooled = b.op("GlobalAveragePool", &[&x], vec![]);
    let flat = b.op("Flatten", &[&pooled], vec![("axis", A::I(1))]);
    let fc_w = w.get("_fc.weight", 2)?;
    let fc = b.init_f32("_fc.weight", fc_w);
    let fc_b = b.init_f32("_fc.bias", w.get("_fc.bias", 1)?);
    let logits = b.op("Gemm", &[&flat, &fc, &fc_b], vec![("transB", A::I(1))]);
    b.node("Softmax", &[&logits], &[OUTPUT], vec![("axis", A::I(-1))]);
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(fc_w.shape()[0] as i64)]);
    Ok(onnx::model(b.finish(), "tlearn-efficientnet-lite"))
}
