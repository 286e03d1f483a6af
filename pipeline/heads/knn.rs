//! k-nearest neighbours (Euclidean): the training rows are the model. In Rust the neighbours come
//! from linfa-nn's exact linear search; the ONNX graph computes the same distances and takes `TopK`.

use super::ops::{binary_column, emit_binary_column, emit_sq_distances, to16};
use super::spec::{Fit, Fitted};
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use linfa_nn::distance::L2Dist;
use linfa_nn::{LinearSearchIndex, NearestNeighbourIndex};
use ndarray::{Array2, ArrayView2};

pub struct Knn {
    pub k: usize,
}

struct FittedKnn {
    rows: Array2<f64>,
    labels: Vec<usize>,
    k: usize,
    classes: usize,
}

impl Fit for Knn {
    fn fit(&self, x: ArrayView2<f64>, y: &[usize], classes: usize, _seed: u64) -> Result<Box<dyn Fitted>> {
        if self.k > x.nrows() {
            return Err(Error::Param {
                name: "k",
                value: self.k.to_string(),
                reason: format!("more neighbours than the {} training samples", x.nrows()),
            });
        }
        Ok(Box::new(FittedKnn { rows: x.to_owned(), labels: y.to_vec(), k: self.k, classes }))
    }
}

impl Fitted for FittedKnn {
    fn predict_proba(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let rows = to16(self.rows.view());
        let index = LinearSearchIndex::new(&rows, L2Dist).expect("rows have ≥ 1 column");
        let x = to16(x);
        let mut p = Array2::zeros((x.nrows(), self.classes));
        for (i, r) in x.rows().into_iter().enumerate() {
            for (_, j) in index.k_nearest(r, self.k).expect("same width") {
                p[[i, self.labels[j]]] += 1.0 / self.k as f64;
            }
        }
        binary_column(p, self.classes)
    }

    fn emit(&self, b: &mut GraphBuilder, x: &str) -> Result<String> {
        let d2 = emit_sq_distances(b, x, &self.rows.mapv(|v| v as f32));
        let k = b.const_i64("k", &[self.k as i64]);
        let (vals, idx) = (b.fresh("knn_dist"), b.fresh("knn_index"));
        b.node("TopK", &[&d2, &k], &[&vals, &idx], vec![("axis", A::I(1)), ("largest", A::I(0)), ("sorted", A::I(1))]);
        let mut onehot = Array2::<f32>::zeros((self.labels.len(), self.classes));
        for (j, &l) in self.labels.iter().enumerate() {
            onehot[[j, l]] = 1.0;
        }
        let onehot = b.const_arr_f32(&format!("{}onehot", super::prep::FROZEN), &onehot.into_dyn());
        let votes = b.op("Gather", &[&onehot, &idx], vec![("axis", A::I(0))]);
        let p = b.op("ReduceMean", &[&votes], vec![("axes", A::Ints(vec![1])), ("keepdims", A::I(0))]);
        Ok(emit_binary_column(b, &p, self.classes))
    }

    fn describe(&self) -> String {
        format!("kNN(k={}, {} training rows)", self.k, self.rows.nrows())
    }

    fn params(&self) -> usize {
        self.rows.len()
    }
}
