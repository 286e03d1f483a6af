//! Pass (lowering, CPU sessions only; applied by `lower`): convolutions on onnxruntime's
//! NCHWc kernels.
//!
//! onnxruntime's CPU provider runs a convolution with *constant* weights on blocked "NCHWc"
//! kernels (its `NchwcTransformer` reorders the weights once at load). A training graph feeds
//! its weights as inputs, so it never gets them: its Conv and ConvTranspose nodes run as im2col +
//! GEMM, one GEMM per image — slow for small feature maps (the mnist net's 5×5 layer: 2.1 ms
//! against 0.75 ms). This pass, applied to the compiled graph of a CPU session only, rewrites
//!
//! - `Conv` (2-D, group 1, stride 1, dilation 1, channel counts multiples of the block; or
//!   depthwise over a multiple of the block, at any stride and dilation) into
//!   `ReorderInput → nchwc.Conv → ReorderOutput`, with the weights reordered in the graph
//!   (the layout `MlasReorderFilterOIHWBiBo` writes, or `…OIHWBo` for depthwise, by
//!   `ReorderInput`s) and a following `Relu` or constant-bound `Clip` fused as the kernel's
//!   activation. A depthwise weight gradient in the stacked form (`rules::conv`, compiled so for
//!   these sessions: `Forms::nchwc`) is such a Conv, its kernel's rows (the batch's) declared
//!   unknown in the graph's value_info;
//! - `ConvTranspose` with the same restrictions, stride 1 and dilation 1 (the input gradient of
//!   such a convolution) into a `nchwc.Conv` of the output gradient with the transposed, spatially
//!   flipped weights and padding `k − 1 − p`; a depthwise one at stride 2 (undilated) into four
//!   stride-1 `nchwc.Conv`s, one per phase of its output, interleaved blocked (`strided_depthwise_grad`).
//!
//! A `ReorderInput` of a `ReorderOutput` (one moved conv reading another's output) reads the
//! blocked tensor itself.
//!
//! A forward's pads may be explicit or SAME_UPPER/SAME_LOWER (passed to the kernel, which works
//! them out with the standard Conv's own code); an input gradient needs explicit pads to flip.
//!
//! Depthwise convolutions matter most: onnxruntime's grouped Conv and ConvTranspose run one
//! small GEMM per channel, 2–4× slower than the NCHWc depthwise kernel at EfficientNet's shapes.
//!
//! The standard-op graph stays the definition (CUDA sessions, exports, gradient checks of the
//! rules); tests compare both forms. The block (8 with AVX2, 16 with AVX-512) is probed once
//! from onnxruntime itself: a `ReorderInput` of 4 channels returns one block. `TLEARN_NCHWC=0`
//! turns the pass off.

use crate::error::Result;
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr, attr_i, attr_ints, Dim, GraphBuilder};
use crate::runtime::{self, Device, SessionOptions};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

/// onnxruntime's domain of the NCHWc kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";
/// `TLEARN_NCHWC=0`: leave training graphs in standard ops on the CPU too.
pub const ENV: &str = "TLEARN_NCHWC";

/// The NCHWc channel block of this CPU's onnxruntime, or None when the kernels are unavailable
/// (block 1, or the probe fails) or turned off by `TLEARN_NCHWC=0`.
pub fn block() -> Option<usize> {
    if std::env::var(ENV).is_ok_and(|v| v == "0") {
        return None;
    }
    static BLOCK: OnceLock<Option<usize>> = OnceLock::new();
    *BLOCK.get_or_init(|| match probe() {
        Ok(b) if b > 1 => Some(b),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("NCHWc kernels unavailable: {e}");
            None
        }
    })
}

fn probe() -> Result<usize> {
    let mut b = GraphBuilder::new("nchwc-probe");
    // ReorderInput needs a multiple of 4 channels; it pads them to a whole block.
    b.input("x", &[Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(1), Dim::Fixed(1)]);
    b.domain_node(DOMAIN, "ReorderInput", &["x"], &["y"], vec![]);
    b.output_any("y");
    let mut m = onnx::model(b.finish(), "tlearn-probe");
    m.opset_import.push(OperatorSetIdProto { domain: DOMAIN.into(), version: 1 });
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    let mut s = runtime::open(&onnx::encode_model(&m), Path::new("NCHWc probe"), &opts)?.session;
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 4, 1, 1]));
    let y = runtime::run_f32(&mut s, vec![("x", x.view())], &["y"])?;
    Ok(y[0].shape().get(1).copied().unwrap_or(1))
}

/// The channel block a session on `device` runs its convolutions on the kernels with: the CPU's
/// [`block`], None elsewhere. The compiler's forms and the lowering both ask here, so they agree.
pub fn block_for(device: Device) -> Option<usize> {
    (device.expected() == Device::Cpu).then(block).flatten()
}

/// `m` as a session on `device` should run it: rewritten (see the module docs) when that is the
/// CPU and the kernels are available, else unchanged.
pub(super) fn for_device(m: &ModelProto, device: Device) -> ModelProto {
    let mut m = m.clone();
    if let Some(block) = block_for(device) {
        let n = rewrite(&mut m, block);
        tracing::debug!("{n} convolutions on NCHWc kernels (block {block})");
    }
    m
}

/// A node's 2-D geometry as the kernels take it: its pads, strides and dilations; None for an
/// `output_shape`, an `output_padding`, an unknown `auto_pad`, or pads, strides or dilations
/// that are not 2-D.
fn geometry(n: &NodeProto) -> Option<Geometry> {
    let zeros = |name: &str| attr_ints(n, name).is_none_or(|v| v.iter().all(|&x| x == 0));
    if !zeros("output_padding") || attr(n, "output_shape").is_some() {
        return None;
    }
    let pair = |name: &str| match attr_ints(n, name).as_deref() {
        None => Some([1, 1]),
        Some(&[a, b]) => Some([a, b]),
        Some(_) => None,
    };
    let pads = match attr(n, "auto_pad").map(|a| a.s.as_slice()).unwrap_or(b"NOTSET") {
        b"VALID" => Pads::Explicit([(0, 0); 2]),
        b"NOTSET" => match attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4])[..] {
            [a, b, c, d] => Pads::Explicit([(a, c), (b, d)]),
            _ => return None,
        },
        b"SAME_UPPER" => Pads::Same("SAME_UPPER"),
        b"SAME_LOWER" => Pads::Same("SAME_LOWER"),
        _ => return None,
    };
    Some(Geometry { pads, strides: pair("strides")?, dilations: pair("dilations")? })
}

/// Where a convolution's window goes: its pads, and its strides and dilations per axis.
struct Geometry {
    pads: Pads,
    strides: [i64; 2],
    dilations: [i64; 2],
}

/// A node's padding: explicit (begin, end) per axis, or SAME_UPPER/SAME_LOWER, which the kernels
/// work out from the input's shape as the standard Conv does (a forward only: the flipped-filter
/// form of an input gradient needs the pads).
#[derive(Clone, Copy)]
enum Pads {
    Explicit([(i64, i64); 2]),
    Same(&'static str),
}

/// Rewrite `m` for NCHWc kernels with channel block `block`; returns how many nodes moved.
pub fn rewrite(m: &mut ModelProto, block: usize) -> usize {
    let Some(g) = m.graph.as_mut() else { return 0 };
    let dims = known_dims(g);
    let consumers = onnx::Consumers::of(g);
    let mut b = GraphBuilder::new("").with_prefix("nchwc/");
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut fused: HashSet<usize> = HashSet::new();
    let mut moved = 0;
    for (i, n) in g.node.iter().enumerate() {
        if fused.contains(&i) {
            continue;
        }
        let done = match blockable(n, &dims, block) {
            Some(c) if n.op_type == "Conv" => {
                // A Relu or Clip that is the output's only consumer becomes the kernel's activation.
                let act = activation(g, &consumers, &n.output[0]);
                let out = act.as_ref().map_or(&n.output[0], |(j, _)| &g.node[*j].output[0]);
                conv(&mut b, n, &c, out, act.as_ref().map(|(_, a)| a));
                fused.extend(act.map(|(j, _)| j));
                true
            }
            Some(c) if n.op_type == "ConvTranspose" && n.input.len() == 2 => conv_transpose(&mut b, n, &c),
            _ if n.op_type == "ConvTranspose" => strided_depthwise_grad(&mut b, n, &dims, block),
            _ => false,
        };
        if done {
            nodes.append(&mut b.graph.node);
            moved += 1;
        } else {
            nodes.push(n.clone());
        }
    }
    // A fused Clip's bounds are read by no node now: onnxruntime would warn of each.
    let bounds: HashSet<String> = fused.iter().flat_map(|&j| g.node[j].input.iter().skip(1).cloned()).collect();
    g.node = nodes;
    let read: HashSet<&String> = g.node.iter().flat_map(|n| &n.input).chain(g.output.iter().map(|o| &o.name)).collect();
    let unread: HashSet<String> = bounds.iter().filter(|t| !read.contains(t)).cloned().collect();
    g.initializer.retain(|t| !unread.contains(&t.name));
    g.node.retain(|n| !(n.op_type == "Constant" && n.output.iter().any(|o| unread.contains(o))));
    g.initializer.append(&mut b.graph.initializer);
    skip_round_trips(g, block);
    if moved > 0 && !m.opset_import.iter().any(|o| o.domain == DOMAIN) {
        m.opset_import.push(OperatorSetIdProto { domain: DOMAIN.into(), version: 1 });
    }
    moved
}

/// A `ReorderInput` of a `ReorderOutput`'s plain tensor is the blocked tensor the latter read
/// (when the channels fill whole blocks: no padding to drop and restore): its readers take that
/// one, and a `ReorderOutput` no node reads any more goes. One conv's output feeding the next
/// conv was blocked, unblocked and blocked again — 33 such pairs in EfficientNet-Lite0's step.
fn skip_round_trips(g: &mut GraphProto, block: usize) {
    let unblocked: HashMap<String, String> = g
        .node
        .iter()
        .filter(|n| n.domain == DOMAIN && n.op_type == "ReorderOutput")
        .filter(|n| attr_i(n, "channels", 0) % block as i64 == 0 && attr_i(n, "channels_last", 0) == 0)
        .map(|n| (n.output[0].clone(), n.input[0].clone()))
        .collect();
    let mut blocked: HashMap<String, String> = HashMap::new();
    g.node.retain(|n| {
        let trip = n.domain == DOMAIN && n.op_type == "ReorderInput" && attr_i(n, "channels_last", 0) == 0;
        match unblocked.get(&n.input[0]).filter(|_| trip) {
            Some(yb) => {
                blocked.insert(n.output[0].clone(), yb.clone());
                false
            }
            None => true,
        }
    });
    for t in g.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if let Some(yb) = blocked.get(t) {
            t.clone_from(yb);
        }
    }
    let read: HashSet<String> =
        g.node.iter().flat_map(|n| n.input.iter()).chain(g.output.iter().map(|o| &o.name)).cloned().collect();
    g.node.retain(|n| !(n.domain == DOMAIN && n.op_type == "ReorderOutput" && !read.contains(&n.output[0])));
}

/// Dims of the initializers and of the graph inputs whose dims are all known (a training graph's
/// weights are inputs); and those declared in the value_info, an unknown one as −1 (a stacked
/// depthwise weight gradient's kernels, whose rows follow the batch).
fn known_dims(g: &GraphProto) -> HashMap<String, Vec<i64>> {
    let mut dims: HashMap<String, Vec<i64>> = g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    for vi in &g.value_info {
        let (_, d) = onnx::vi_shape(vi);
        dims.insert(vi.name.clone(), d.into_iter().map(|d| d.unwrap_or(-1)).collect());
    }
    for vi in &g.input {
        let (_, d) = onnx::vi_shape(vi);
        if d.iter().all(Option::is_some) {
            dims.insert(vi.name.clone(), d.into_iter().flatten().collect());
        }
    }
    dims
}

/// A node the kernels can run: its weight dims, geometry and group, and the channel block.
struct Blocked {
    /// Conv: (M, C, kh, kw); ConvTranspose: (C_in, C_out, kh, kw); depthwise: (C, 1, kh, kw), kh
    /// −1 when the weight's rows are not a constant (the kernel reads them from its shape).
    k0: i64,
    k1: i64,
    kh: i64,
    kw: i64,
    geom: Geometry,
    /// 1, or a depthwise node's channel count (one input and one output channel per group).
    group: i64,
    block: usize,
}

/// `n` as [`Blocked`] when it is a standard-domain node with a known rank-4 weight, a geometry
/// (see [`geometry`]), and either group 1 with both weight channel counts multiples of the block,
/// stride 1 and dilation 1, or depthwise over a multiple of the block (a forward at any stride and
/// dilation; an input gradient, stride 1 and dilation 1: only then is a ConvTranspose the
/// convolution with flipped weights).
fn blockable(n: &NodeProto, dims: &HashMap<String, Vec<i64>>, block: usize) -> Option<Blocked> {
    let standard = n.domain.is_empty() || n.domain == "ai.onnx";
    let w = n.input.get(1).and_then(|w| dims.get(w)).filter(|d| d.len() == 4)?;
    let geom = geometry(n).filter(|_| standard)?;
    let (b_, group) = (block as i64, attr_i(n, "group", 1));
    let (k0, k1, kh, kw) = (w[0], w[1], w[2], w[3]);
    let unit = geom.strides == [1, 1] && geom.dilations == [1, 1];
    let known = kh > 0 && kw > 0;
    let fits = match group {
        1 => unit && known && k0 % b_ == 0 && k1 % b_ == 0,
        g => g == k0 && k1 == 1 && k0 % b_ == 0 && kw > 0 && ((known && unit) || n.op_type == "Conv"),
    };
    fits.then_some(Blocked { k0, k1, kh, kw, geom, group, block })
}

/// An activation the kernels apply to a convolution's output.
enum Activation {
    Relu,
    /// Clip's bounds (the lowest and highest float where it has none).
    Clip(f32, f32),
}

/// The node reading `t` that the kernels can fuse as their activation — a Relu or a Clip with
/// constant bounds, `t`'s only reader — and what it does.
fn activation(g: &GraphProto, consumers: &onnx::Consumers, t: &str) -> Option<(usize, Activation)> {
    if let Some(j) = consumers.only(t, "Relu") {
        return Some((j, Activation::Relu));
    }
    let j = consumers.only(t, "Clip")?;
    let [lo, hi] = onnx::clip_bounds(g, &g.node[j])?;
    Some((j, Activation::Clip(lo.unwrap_or(f32::MIN), hi.unwrap_or(f32::MAX))))
}

/// `ReorderInput → nchwc.Conv → ReorderOutput` into `out`: the Conv's own output, or with `act`
/// the output of the Relu or Clip fused as the kernel's activation.
fn conv(b: &mut GraphBuilder, n: &NodeProto, c: &Blocked, out: &str, act: Option<&Activation>) {
    let dims = [c.k0, c.k1, c.kh, c.kw];
    let wr = match c.group {
        1 => reorder_filter(b, &n.input[1], dims, c.block, false),
        _ => reorder_depthwise(b, &n.input[1], dims),
    };
    let xb = b.op_in(DOMAIN, "ReorderInput", &[&n.input[0]], vec![]);
    let mut inputs = vec![xb.as_str(), wr.as_str()];
    if let Some(bias) = n.input.get(2).filter(|s| !s.is_empty()) {
        inputs.push(bias);
    }
    let mut attrs = conv_attrs(c, c.geom.pads);
    match act {
        Some(Activation::Relu) => attrs.push(("activation", A::S("Relu"))),
        Some(&Activation::Clip(lo, hi)) => {
            attrs.extend([("activation", A::S("Clip")), ("activation_params", A::Floats(vec![lo, hi]))])
        }
        None => {}
    }
    let yb = b.op_in(DOMAIN, "Conv", &inputs, attrs);
    b.domain_node(DOMAIN, "ReorderOutput", &[&yb], &[out], vec![("channels", A::I(c.k0))]);
}

/// A ConvTranspose as an `nchwc.Conv` of the flipped weights; false (nothing emitted) when its
/// pads are SAME (the flip needs them explicit) or exceed `k − 1`.
fn conv_transpose(b: &mut GraphBuilder, n: &NodeProto, c: &Blocked) -> bool {
    let (kh, kw) = (c.kh, c.kw);
    let Pads::Explicit(pads) = c.geom.pads else { return false };
    let flip_pads = [(kh - 1 - pads[0].0, kh - 1 - pads[0].1), (kw - 1 - pads[1].0, kw - 1 - pads[1].1)];
    if flip_pads.iter().any(|&(a, c)| a < 0 || c < 0) {
        return false;
    }
    // dX = Conv(dY, W') with W'[c, m, i, j] = W[m, c, kh−1−i, kw−1−j]: the spatial flip (none
    // for 1×1), then the swap of M and C folded into `reorder_filter`'s blocking (`swap`); a
    // depthwise filter, one channel per group, has nothing to swap.
    let wf = if kh * kw > 1 {
        let st = b.const_i64("starts", &[-1, -1]);
        let en = b.const_i64("ends", &[i64::MIN, i64::MIN]);
        let ax = b.const_i64("axes", &[2, 3]);
        let sp = b.const_i64("steps", &[-1, -1]);
        b.op("Slice", &[&n.input[1], &st, &en, &ax, &sp], vec![])
    } else {
        n.input[1].clone()
    };
    let wr = match c.group {
        1 => reorder_filter(b, &wf, [c.k1, c.k0, kh, kw], c.block, true),
        _ => reorder_depthwise(b, &wf, [c.k0, c.k1, kh, kw]),
    };
    let xb = b.op_in(DOMAIN, "ReorderInput", &[&n.input[0]], vec![]);
    let yb = b.op_in(DOMAIN, "Conv", &[&xb, &wr], conv_attrs(c, Pads::Explicit(flip_pads)));
    let channels = c.k1 * c.group;
    b.domain_node(DOMAIN, "ReorderOutput", &[&yb], &[&n.output[0]], vec![("channels", A::I(channels))]);
    true
}

fn conv_attrs(c: &Blocked, pads: Pads) -> Vec<(&'static str, A)> {
    let pads = match pads {
        Pads::Explicit(p) => ("pads", A::Ints(vec![p[0].0, p[1].0, p[0].1, p[1].1])),
        Pads::Same(how) => ("auto_pad", A::S(how)),
    };
    let mut attrs =
        vec![pads, ("strides", A::Ints(c.geom.strides.to_vec())), ("dilations", A::Ints(c.geom.dilations.to_vec()))];
    if c.kh > 0 {
        attrs.push(("kernel_shape", A::Ints(vec![c.kh, c.kw])));
    }
    if c.group > 1 {
        attrs.push(("group", A::I(c.group)));
    }
    attrs
}

/// A depthwise filter (C, 1, kh, kw) in the layout of `MlasReorderFilterOIHWBo` —
/// [C/B][kh][kw][B] — which is a `ReorderInput` of it as one (1, C, kh·kw, 1) image (kh −1:
/// as many rows as it has).
fn reorder_depthwise(b: &mut GraphBuilder, w: &str, [c, _, kh, kw]: [i64; 4]) -> String {
    let r = b.reshape(w, "shape", &[1, c, if kh > 0 { kh * kw } else { -1 }, 1]);
    let ri = b.op_in(DOMAIN, "ReorderInput", &[&r], vec![]);
    b.reshape(&ri, "shape", &[c, 1, kh, kw])
}

/// Filter `w` (M, C, kh, kw) in the blocked layout of `MlasReorderFilterOIHWBiBo` —
/// [out/B][in/B][kh][kw][B (input)][B (output)] — as a filter of M outputs from C inputs, or, with
/// `swap`, of C outputs from M inputs (the input gradient's); `dims` are the filter's as the
/// kernel reads it: (out, in, kh, kw). Built from `ReorderInput`s, which move a block of channels
/// innermost with MLAS's vectorised copy: onnxruntime's general Transpose of the same data is
/// 3–7× slower (a ResNet-50 step reorders 94 MB of weights twice).
fn reorder_filter(b: &mut GraphBuilder, w: &str, dims: [i64; 4], block: usize, swap: bool) -> String {
    let [out, inp, kh, kw] = dims;
    let (m, c) = if swap { (inp, out) } else { (out, inp) };
    let (bl, k) = (block as i64, kh * kw);
    let blocked = match (swap, k) {
        // (M, C/B, B) → (C/B, M, B) is already [C/B][M/B][B_M][B_C].
        (true, 1) => {
            let r = b.reshape(w, "shape", &[m, c / bl, bl]);
            b.op("Transpose", &[&r], vec![("perm", A::Ints(vec![1, 0, 2]))])
        }
        // (M, C/B, B·K) → (C/B, M, B·K): rows of B·K move whole; then, per (C/B, M/B) pair,
        // (B_M·B_C, K) → (B_M, K, B_C) → (K, B_M, B_C).
        (true, _) => {
            let r = b.reshape(w, "shape", &[m, c / bl, bl * k]);
            let t = b.op("Transpose", &[&r], vec![("perm", A::Ints(vec![1, 0, 2]))]);
            let r = b.reshape(&t, "shape", &[(c / bl) * (m / bl), bl * bl, k, 1]);
            let ri = b.op_in(DOMAIN, "ReorderInput", &[&r], vec![]);
            let r = b.reshape(&ri, "shape", &[(c / bl) * (m / bl), bl, k, bl]);
            b.op("Transpose", &[&r], vec![("perm", A::Ints(vec![0, 2, 1, 3]))])
        }
        // (M, C, K) → (M, C/B, K, B_C) (nothing to move for 1×1), then (M/B, B_M, C·K) →
        // (M/B, C·K, B_M).
        (false, _) => {
            let cols = if k == 1 {
                w.to_string()
            } else {
                let r = b.reshape(w, "shape", &[m, c, k, 1]);
                b.op_in(DOMAIN, "ReorderInput", &[&r], vec![])
            };
            let r = b.reshape(&cols, "shape", &[m / bl, bl, c * k, 1]);
            b.op_in(DOMAIN, "ReorderInput", &[&r], vec![])
        }
    };
    b.reshape(&blocked, "shape", &[out, inp, kh, kw])
}

// The input gradient of a stride-2 depthwise convolution (a grouped ConvTranspose) by phases.
// onnxruntime runs a grouped ConvTranspose as a GEMM of inner dimension 1 and a col2im per image
// and channel, at 2–3 GFLOP/s: EfficientNet-Lite0's four strided layers took 12 % of its step at
// 300×300. Row y = 2r + a of dX takes the filter's taps u ≡ a + p (mod 2) (p: the forward's top
// pad) at output-gradient rows r + (a + p − u)/2 — a stride-1 correlation of dY with those taps
// in reverse order, which the depthwise kernel runs. The four phases are interleaved on the
// blocked (N, C/B, h, w, B) memory, so the Concats move runs of B floats, not single floats
// (interleaving the plain phases, or DepthToSpace, costs what the ConvTranspose does).

/// One axis of the gradient: how each of its two phases is computed.
#[derive(Clone, Copy)]
struct Axis {
    /// Rows of each phase (the odd phase's last one is cropped when the axis is odd).
    half: i64,
    /// The axis' length in dX.
    full: i64,
    /// Per phase: the first tap (the highest index: taps go in reverse), how many, and the
    /// correlation's pads (begin, end).
    phase: [(i64, i64, (i64, i64)); 2],
}

/// Where the taps of a stride-2 axis go: kernel `k`, the forward's pads, `output_padding`, and
/// dX's length along it; None where a phase would need a negative pad.
fn axis(k: i64, (begin, end): (i64, i64), out_pad: i64, full: i64) -> Option<Axis> {
    let twice = full - out_pad + begin + end - k;
    if k < 2 || twice < 0 || twice % 2 != 0 {
        return None;
    }
    let (dy, half) = (twice / 2 + 1, (full + 1) / 2);
    let mut phase = [(0, 0, (0, 0)); 2];
    for (a, p) in phase.iter_mut().enumerate() {
        let taps: Vec<i64> = (0..k).filter(|u| (u - a as i64 - begin).rem_euclid(2) == 0).collect();
        let (first, count) = (*taps.last()?, taps.len() as i64);
        // The reversed taps' first (the highest u) reads dY row r + (a + begin − u)/2.
        let before = (first - a as i64 - begin) / 2;
        let after = half - dy - before + count - 1;
        if before < 0 || after < 0 {
            return None;
        }
        *p = (first, count, (before, after));
    }
    Some(Axis { half, full, phase })
}

/// Rewrite `n` into the phase form (emitted into `b`) when it is the input gradient of a
/// stride-2, undilated depthwise convolution over whole blocks whose dX dims `dims` declares
/// (`rules::conv` does); false (nothing emitted) otherwise.
fn strided_depthwise_grad(b: &mut GraphBuilder, n: &NodeProto, dims: &HashMap<String, Vec<i64>>, block: usize) -> bool {
    let standard = n.domain.is_empty() || n.domain == "ai.onnx";
    let (Some(w), Some(out)) = (n.input.get(1).and_then(|w| dims.get(w)), dims.get(&n.output[0])) else {
        return false;
    };
    let (&[c, 1, kh, kw], &[_, oc, oh, ow]) = (w.as_slice(), out.as_slice()) else { return false };
    let pair = |name: &str, default: i64| attr_ints(n, name).unwrap_or_else(|| vec![default; 2]);
    let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
    let fits = standard
        && n.input.len() == 2
        && attr_i(n, "group", 1) == c
        && oc == c
        && c % block as i64 == 0
        && pair("strides", 1) == [2, 2]
        && pair("dilations", 1) == [1, 1]
        && attr(n, "output_shape").is_none()
        && attr(n, "auto_pad").is_none_or(|a| a.s == b"NOTSET")
        && pads.len() == 4;
    let out_pad = pair("output_padding", 0);
    let axes = fits
        .then(|| Some([axis(kh, (pads[0], pads[2]), out_pad[0], oh)?, axis(kw, (pads[1], pads[3]), out_pad[1], ow)?]))
        .flatten();
    let Some([rows, cols]) = axes else { return false };
    let bl = block as i64;
    let dyb = b.op_in(DOMAIN, "ReorderInput", &[&n.input[0]], vec![]);
    let mut lines = vec![];
    for (first_r, count_r, pads_r) in rows.phase {
        let mut line = vec![];
        for (first_c, count_c, pads_c) in cols.phase {
            let st = b.const_i64("starts", &[first_r, first_c]);
            let en = b.const_i64("ends", &[i64::MIN, i64::MIN]);
            let ax = b.const_i64("axes", &[2, 3]);
            let sp = b.const_i64("steps", &[-2, -2]);
            let taps = b.op("Slice", &[&n.input[1], &st, &en, &ax, &sp], vec![]);
            let wr = reorder_depthwise(b, &taps, [c, 1, count_r, count_c]);
            let attrs = vec![
                ("pads", A::Ints(vec![pads_r.0, pads_c.0, pads_r.1, pads_c.1])),
                ("strides", A::Ints(vec![1, 1])),
                ("dilations", A::Ints(vec![1, 1])),
                ("kernel_shape", A::Ints(vec![count_r, count_c])),
                ("group", A::I(c)),
            ];
            let p = b.op_in(DOMAIN, "Conv", &[&dyb, &wr], attrs);
            // The blocked memory as it lies: (N, C/B, h, w, B); a phase column next to it.
            let p = b.reshape(&p, "blocked", &[0, c / bl, 0, 0, bl]);
            let ax = b.const_i64("axes", &[4]);
            line.push(b.op("Unsqueeze", &[&p, &ax], vec![]));
        }
        let both = b.op("Concat", &[&line[0], &line[1]], vec![("axis", A::I(4))]);
        let line = b.reshape(&both, "rows", &[0, 0, 0, -1, bl]);
        let ax = b.const_i64("axes", &[3]);
        lines.push(b.op("Unsqueeze", &[&line, &ax], vec![]));
    }
    let both = b.op("Concat", &[&lines[0], &lines[1]], vec![("axis", A::I(3))]);
    let full = b.reshape(&both, "interleaved", &[0, c, 2 * rows.half, 2 * cols.half]);
    let exact = 2 * rows.half == rows.full && 2 * cols.half == cols.full;
    let dx = if exact { n.output[0].clone() } else { b.fresh("uncropped") };
    b.domain_node(DOMAIN, "ReorderOutput", &[&full], &[&dx], vec![("channels", A::I(c))]);
    if !exact {
        let st = b.const_i64("starts", &[0, 0]);
        let en = b.const_i64("ends", &[rows.full, cols.full]);
        let ax = b.const_i64("axes", &[2, 3]);
        b.node("Slice", &[&dx, &st, &en, &ax], &[&n.output[0]], vec![]);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::axis;

    /// EfficientNet-Lite0's strided layers (SAME_UPPER): 3×3 from 150 (pads 0, 1) and 5×5 from 75
    /// (pads 2, 2), whose odd gradient crops the odd phase's extra row.
    #[test]
    fn each_phase_takes_the_taps_of_its_parity_in_reverse() {
        let a = axis(3, (0, 1), 0, 150).unwrap();
        assert_eq!((a.half, a.full), (75, 150));
        // Even rows: taps 2, 0 at dY rows r − 1, r; odd rows: tap 1 at row r.
        assert_eq!(a.phase, [(2, 2, (1, 0)), (1, 1, (0, 0))]);
        let a = axis(5, (2, 2), 0, 75).unwrap();
        assert_eq!((a.half, a.full), (38, 75));
        assert_eq!(a.phase, [(4, 3, (1, 1)), (3, 2, (0, 1))]);
        assert!(axis(1, (0, 0), 1, 20).is_none(), "a 1×1 filter leaves a phase without taps");
        assert!(axis(3, (0, 1), 0, 151).is_none(), "no dY of that length");
    }
}
