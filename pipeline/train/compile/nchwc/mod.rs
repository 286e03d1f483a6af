//! Pass (lowering, CPU sessions only; applied by `lower`): convolutions on onnxruntime's
//! NCHWc kernels.
//!
//! onnxruntime's CPU provider runs a convolution with *constant* weights on blocked "NCHWc"
//! kernels (its `NchwcTransformer` reorders the weights once at load). A training graph feeds
//! its weights as inputs, so it never gets them: its Conv and ConvTranspose nodes run as im2col +
//! GEMM, one GEMM per image — slow for small feature maps (the mnist net's 5×5 layer: 2.1 ms
//! against 0.75 ms). This pass, applied to the compiled graph of a CPU session only, rewrites
//!
//! - `Conv` (2-D, group 1, stride 1, dilation 1, channel counts multiples of 4, filled to whole
//!   blocks with zero filters where that adds at most half the work (`padded`); or
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

mod filter;
mod phases;

pub use filter::DOMAIN;
use filter::{reorder_depthwise, reorder_filter, zeros_after};
use phases::strided_depthwise_grad;

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
    skip_round_trips(g);
    if moved > 0 && !m.opset_import.iter().any(|o| o.domain == DOMAIN) {
        m.opset_import.push(OperatorSetIdProto { domain: DOMAIN.into(), version: 1 });
    }
    moved
}

/// A `ReorderInput` of a `ReorderOutput`'s plain tensor is the blocked tensor the latter read: its
/// readers take that one, and a `ReorderOutput` no node reads any more goes. One conv's output
/// feeding the next conv was blocked, unblocked and blocked again — 33 such pairs in
/// EfficientNet-Lite0's step. Where the channels do not fill whole blocks the two differ in the
/// last block's extra channels only (zeros against the activation of the added filters' zero
/// outputs, finite either way), which only group-1 convolutions read, through the zero columns
/// [`Blocked::filled`] gave them (a depthwise one needs whole blocks).
fn skip_round_trips(g: &mut GraphProto) {
    let unblocked: HashMap<String, String> = g
        .node
        .iter()
        .filter(|n| n.domain == DOMAIN && n.op_type == "ReorderOutput")
        .filter(|n| attr_i(n, "channels_last", 0) == 0)
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

/// The prefix of a dim's name in the value_info that says the dim, unknown when the graph is
/// built, is a multiple of the block: the images of a correlated weight gradient's kernels
/// (`rules::conv`), padded with zero images to whole blocks.
pub const BATCH_BLOCKS: &str = "batch_blocks";

/// A dim so declared ([`BATCH_BLOCKS`]) in [`known_dims`].
const WHOLE: i64 = -2;

/// Dims of the initializers and of the graph inputs whose dims are all known (a training graph's
/// weights are inputs); and those declared in the value_info, an unknown one as −1 (a stacked
/// depthwise weight gradient's kernels, whose rows follow the batch), or [`WHOLE`].
fn known_dims(g: &GraphProto) -> HashMap<String, Vec<i64>> {
    let mut dims: HashMap<String, Vec<i64>> = g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    for vi in &g.value_info {
        let declared = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.shape.as_ref());
        let d = declared.map_or(&[][..], |s| &s.dim[..]).iter().map(|d| match &d.value {
            Some(DimValue::DimValue(v)) if *v > 0 => *v,
            Some(DimValue::DimParam(p)) if p.starts_with(BATCH_BLOCKS) => WHOLE,
            _ => -1,
        });
        dims.insert(vi.name.clone(), d.collect());
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
    /// −1 when the weight's rows are not a constant (the kernel reads them from its shape); C
    /// [`WHOLE`] for a correlated weight gradient's kernels.
    k0: i64,
    k1: i64,
    kh: i64,
    kw: i64,
    geom: Geometry,
    /// 1, or a depthwise node's channel count (one input and one output channel per group).
    group: i64,
    block: usize,
    /// k0 and k1 as the kernels take them: group 1 filled to whole blocks ([`padded`]).
    p0: i64,
    p1: i64,
}

impl Blocked {
    /// Weight `w` (k0, k1, kh, kw) with zero filters up to (p0, p1) channels.
    fn filled(&self, b: &mut GraphBuilder, w: &str) -> String {
        zeros_after(b, w, &[self.p0 - self.k0, self.p1 - self.k1, 0, 0])
    }
}

/// `c` channels filled to whole blocks of `block`: the kernels take a group-1 convolution over
/// any multiple of 4 (`ReorderInput` fills the data's last block with zeros, the filter gets zero
/// filters), where that adds at most half the work on that side (EfficientNet's 24 and 40
/// channels: 32 and 48 with AVX-512). None where the channels are not so.
pub fn padded(c: i64, block: i64) -> Option<i64> {
    let p = (c + block - 1) / block * block;
    (c > 0 && c % 4 == 0 && 2 * p <= 3 * c).then_some(p)
}

/// `n` as [`Blocked`] when it is a standard-domain node with a known rank-4 weight, a geometry
/// (see [`geometry`]), and either group 1 with both weight channel counts [`padded`], stride 1
/// and dilation 1, or depthwise over a multiple of the block (a forward at any stride and
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
    let (p0, p1) = match group {
        1 if unit && known => (padded(k0, b_)?, if k1 == WHOLE { WHOLE } else { padded(k1, b_)? }),
        g if g == k0 && k1 == 1 && k0 % b_ == 0 && kw > 0 && ((known && unit) || n.op_type == "Conv") => (k0, k1),
        _ => return None,
    };
    Some(Blocked { k0, k1, kh, kw, geom, group, block, p0, p1 })
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
    let wr = match c.group {
        1 => {
            let w = c.filled(b, &n.input[1]);
            reorder_filter(b, &w, [c.p0, c.p1, c.kh, c.kw], c.block, false)
        }
        _ => reorder_depthwise(b, &n.input[1], [c.k0, c.k1, c.kh, c.kw]),
    };
    let xb = b.op_in(DOMAIN, "ReorderInput", &[&n.input[0]], vec![]);
    let bias = n.input.get(2).filter(|s| !s.is_empty()).map(|t| zeros_after(b, t, &[c.p0 - c.k0]));
    let mut inputs = vec![xb.as_str(), wr.as_str()];
    inputs.extend(bias.as_deref());
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
        1 => {
            let wf = c.filled(b, &wf);
            reorder_filter(b, &wf, [c.p1, c.p0, kh, kw], c.block, true)
        }
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
