//! Feature preparation every head shares: the (h, w, c) feature map reduced to rows (flatten or
//! global pooling), standardised with the training set's statistics, optionally projected (PCA) —
//! computed in Rust for the classical libraries and emitted as ONNX nodes for the graph, the same
//! function both ways.

use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::GraphBuilder;
use ndarray::{Array1, Array2, ArrayD};

use super::ops::to16;
use super::spec::{bad, HeadSpec, Pool};

/// Constants of a head's graph that training never changes (statistics, projections, training
/// rows); the training-graph compiler keeps initializers under this name as constants.
pub const FROZEN: &str = crate::train::FROZEN;

/// Features flattened to rows: (N, h·w·c).
pub fn flatten(x: &ArrayD<f32>) -> ndarray::Array2<f32> {
    let n = x.shape()[0];
    let d: usize = x.shape()[1..].iter().product();
    x.to_shape((n, d)).expect("contiguous").to_owned()
}

/// The (N, width) matrix the dense layers see: features flattened or globally pooled.
pub fn pooled(x: &ArrayD<f32>, pool: Pool) -> ndarray::Array2<f32> {
    let n = x.shape()[0];
    match pool {
        Pool::Flatten => flatten(x),
        Pool::Avg | Pool::Max => {
            let c = *x.shape().last().expect("rank ≥ 2");
            let hw: usize = x.shape()[1..x.ndim() - 1].iter().product();
            let r = x.to_shape((n, hw, c)).expect("contiguous");
            match pool {
                Pool::Avg => r.mean_axis(ndarray::Axis(1)).expect("non-empty"),
                _ => r.fold_axis(ndarray::Axis(1), f32::MIN, |a, &b| a.max(b)),
            }
        }
    }
}

/// Nodes reducing `input` (N, h, w, c) to the (N, width) matrix of [`pooled`]; returns (name, width).
pub fn emit_pool(b: &mut GraphBuilder, input: &str, pool: Pool, feature_shape: &[usize]) -> Result<(String, usize)> {
    Ok(match pool {
        Pool::Flatten => (b.op("Flatten", &[input], vec![("axis", A::I(1))]), feature_shape.iter().product::<usize>()),
        Pool::Avg | Pool::Max => {
            if feature_shape.len() != 3 {
                return Err(Error::Shape {
                    what: "features for global pooling (h, w, c)".into(),
                    expected: vec![3],
                    got: vec![feature_shape.len()],
                });
            }
            let op = if pool == Pool::Avg { "ReduceMean" } else { "ReduceMax" };
            (b.op(op, &[input], vec![("axes", A::Ints(vec![1, 2])), ("keepdims", A::I(0))]), feature_shape[2])
        }
    })
}

/// Column means and standard deviations (population, +1e-6 inside the root) of an (N, width) matrix.
/// `Err` without rows: there are no statistics to take.
pub fn standardizer(x: &ndarray::Array2<f32>) -> Result<(ndarray::Array1<f32>, ndarray::Array1<f32>)> {
    let mean = x
        .mean_axis(ndarray::Axis(0))
        .ok_or_else(|| bad("standardize", "0 rows", "needs at least one training sample"))?;
    let std = x.var_axis(ndarray::Axis(0), 0.0).mapv(|v| (v + 1e-6).sqrt());
    Ok((mean, std))
}

/// `(x − mean) / std` with the statistics as frozen constants (never trained).
pub fn emit_standardize(
    b: &mut GraphBuilder,
    x: &str,
    mean: &ndarray::Array1<f32>,
    std: &ndarray::Array1<f32>,
) -> String {
    let m = b.init_f32(&format!("{FROZEN}mean"), &mean.clone().into_dyn());
    let s = b.init_f32(&format!("{FROZEN}std"), &std.clone().into_dyn());
    let x = b.op("Sub", &[x, &m], vec![]);
    b.op("Div", &[&x, &s], vec![])
}

/// Feature preparation shared by the classical heads: pool, standardise, project (PCA).
pub struct Prep {
    pub pool: Pool,
    pub scale: Option<(Array1<f32>, Array1<f32>)>,
    /// (mean (d), components (k × d)).
    pub pca: Option<(Array1<f32>, Array2<f32>)>,
}

impl Prep {
    pub fn fit(x: &ArrayD<f32>, spec: &HeadSpec, pca: Option<usize>) -> Result<Prep> {
        let mut prep = Prep { pool: spec.pool, scale: None, pca: None };
        let mut m = pooled(x, spec.pool);
        if spec.standardize {
            let (mean, std) = standardizer(&m)?;
            m = (m - &mean) / &std;
            prep.scale = Some((mean, std));
        }
        if let Some(k) = pca {
            let (n, d) = m.dim();
            if k > n.min(d) {
                return Err(bad("pca", k, &format!("at most min(samples, features) = {}", n.min(d))));
            }
            use linfa::traits::Fit as _;
            let ds = linfa::DatasetBase::from(to16(m.mapv(f64::from).view()));
            let p = linfa_reduction::Pca::params(k).fit(&ds).map_err(|e| Error::Other(format!("PCA: {e}")))?;
            let mean = Array1::from_iter(p.mean().iter().map(|&v| v as f32));
            let comps = p.components();
            let comps = Array2::from_shape_fn((comps.nrows(), comps.ncols()), |(i, j)| comps[[i, j]] as f32);
            prep.pca = Some((mean, comps));
        }
        Ok(prep)
    }

    /// The prepared (N, d) rows, as the emitted graph computes them (float32).
    pub fn apply(&self, x: &ArrayD<f32>) -> Array2<f32> {
        let mut m = pooled(x, self.pool);
        if let Some((mean, std)) = &self.scale {
            m = (m - mean) / std;
        }
        if let Some((mean, comps)) = &self.pca {
            m = (m - mean).dot(&comps.t());
        }
        m
    }

    pub fn emit(&self, b: &mut GraphBuilder, input: &str, feature_shape: &[usize]) -> Result<String> {
        let (mut x, _) = emit_pool(b, input, self.pool, feature_shape)?;
        if let Some((mean, std)) = &self.scale {
            x = emit_standardize(b, &x, mean, std);
        }
        if let Some((mean, comps)) = &self.pca {
            let m = b.const_arr_f32(&format!("{FROZEN}pca_mean"), &mean.clone().into_dyn());
            let w = b.const_arr_f32(&format!("{FROZEN}pca_components"), &comps.t().to_owned().into_dyn());
            x = b.op("Sub", &[&x, &m], vec![]);
            x = b.op("MatMul", &[&x, &w], vec![]);
        }
        Ok(x)
    }
}
