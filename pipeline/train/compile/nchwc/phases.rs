//! The input gradient of a stride-2 depthwise convolution (a grouped ConvTranspose) by phases.
//! onnxruntime runs a grouped ConvTranspose as a GEMM of inner dimension 1 and a col2im per image
//! and channel, at 2–3 GFLOP/s: EfficientNet-Lite0's four strided layers took 12 % of its step at
//! 300×300. Row y = 2r + a of dX takes the filter's taps u ≡ a + p (mod 2) (p: the forward's top
//! pad) at output-gradient rows r + (a + p − u)/2 — a stride-1 correlation of dY with those taps
//! in reverse order, which the depthwise kernel runs. The four phases are interleaved on the
//! blocked (N, C/B, h, w, B) memory, so the Concats move runs of B floats, not single floats
//! (interleaving the plain phases, or DepthToSpace, costs what the ConvTranspose does).

use super::filter::{reorder_depthwise, DOMAIN};
use crate::onnx::builder::A;
use crate::onnx::proto::NodeProto;
use crate::onnx::{attr, attr_i, attr_ints, GraphBuilder};
use std::collections::HashMap;

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
pub(super) fn strided_depthwise_grad(
    b: &mut GraphBuilder,
    n: &NodeProto,
    dims: &HashMap<String, Vec<i64>>,
    block: usize,
) -> bool {
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
