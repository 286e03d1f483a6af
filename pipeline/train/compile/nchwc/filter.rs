//! Filters in the blocked layouts the NCHWc kernels read, built in the graph (a training graph's
//! weights are inputs, so onnxruntime cannot reorder them once at load).

use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;

/// onnxruntime's domain of the NCHWc kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";

/// A depthwise filter (C, 1, kh, kw) in the layout of `MlasReorderFilterOIHWBo` —
/// [C/B][kh][kw][B] — which is a `ReorderInput` of it as one (1, C, kh·kw, 1) image (kh −1:
/// as many rows as it has).
pub(super) fn reorder_depthwise(b: &mut GraphBuilder, w: &str, [c, _, kh, kw]: [i64; 4]) -> String {
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
pub(super) fn reorder_filter(b: &mut GraphBuilder, w: &str, dims: [i64; 4], block: usize, swap: bool) -> String {
    let [out, inp, kh, kw] = dims;
    let (m, c) = if swap { (inp, out) } else { (out, inp) };
    let (bl, k) = (block as i64, kh * kw);
    // Input channels unknown when the graph is built (whole blocks of them): read from the shape.
    let (c, ck, inp) = if c > 0 { (c, c * k, inp) } else { (-1, -1, -1) };
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
            let r = b.reshape(&cols, "shape", &[m / bl, bl, ck, 1]);
            b.op_in(DOMAIN, "ReorderInput", &[&r], vec![])
        }
    };
    b.reshape(&blocked, "shape", &[out, inp, kh, kw])
}

/// `t` with `after[i]` zeros appended along axis i (nothing when all are 0): a filter's zero filters
/// (the added outputs are zeros, with a zero bias, and the fused activations keep 0; the added
/// inputs read the zeros `ReorderInput` fills a last block with), or a bias's zeros.
pub(super) fn zeros_after(b: &mut GraphBuilder, t: &str, after: &[i64]) -> String {
    if after.iter().all(|&a| a == 0) {
        return t.to_string();
    }
    let pads: Vec<i64> = after.iter().map(|_| 0).chain(after.iter().copied()).collect();
    let pads = b.const_i64("pads", &pads);
    b.op("Pad", &[t, &pads], vec![])
}
