//! Numeric helpers the classical heads share, each with its graph counterpart.

use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use ndarray::{Array2, ArrayView2, Axis};

/// ndarray 0.17 (ours, ort's) → 0.16 (linfa's).
pub(crate) fn to16(a: ArrayView2<f64>) -> ndarray16::Array2<f64> {
    ndarray16::Array2::from_shape_vec(a.dim(), a.iter().copied().collect()).expect("shape of a view")
}

/// `p` (N, C) → column 1 as (N, 1) when two classes (the sigmoid heads' convention), else itself.
pub(crate) fn binary_column(p: Array2<f64>, classes: usize) -> Array2<f64> {
    if classes == 2 {
        p.slice(ndarray::s![.., 1..2]).to_owned()
    } else {
        p
    }
}

/// The graph's counterpart of [`binary_column`].
pub(crate) fn emit_binary_column(b: &mut GraphBuilder, p: &str, classes: usize) -> String {
    if classes != 2 {
        return p.into();
    }
    let st = b.const_i64("col_start", &[1]);
    let en = b.const_i64("col_end", &[2]);
    let ax = b.const_i64("col_axis", &[1]);
    b.op("Slice", &[p, &st, &en, &ax], vec![])
}

/// Squared Euclidean distances (N, M) from rows `x` (graph, (N, d)) to the constant rows `t` (M × d):
/// ‖x‖² + ‖t‖² − 2·x·tᵀ, clamped at 0.
pub(crate) fn emit_sq_distances(b: &mut GraphBuilder, x: &str, t: &Array2<f32>) -> String {
    let tt = t.map_axis(Axis(1), |r| r.dot(&r)).insert_axis(Axis(0));
    let tt = b.const_arr_f32(&format!("{}sq_norms", crate::train::FROZEN), &tt.into_dyn());
    let tm = b.const_arr_f32(&format!("{}rows_t", crate::train::FROZEN), &(t.t().mapv(|v| -2.0 * v)).into_dyn());
    let xx = b.op("ReduceSumSquare", &[x], vec![("axes", A::Ints(vec![1])), ("keepdims", A::I(1))]);
    let xt = b.op("MatMul", &[x, &tm], vec![]);
    let d = b.op("Add", &[&xt, &xx], vec![]);
    let d = b.op("Add", &[&d, &tt], vec![]);
    let zero = b.const_f32("zero", 0.0);
    b.op("Max", &[&d, &zero], vec![])
}
