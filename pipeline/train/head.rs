//! The dense classifier head (the classic: Flatten → Dense(256, relu) → Dropout(0.5) →
//! Dense(1, sigmoid)), defined as an ONNX graph with Keras' default initialisers.

use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self, Dim, GraphBuilder};
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub const INPUT: &str = "features";
pub const OUTPUT: &str = "probs";

/// How the (h, w, c) feature map is reduced before the dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Flatten h·w·c (the classic head).
    #[default]
    Flatten,
    /// Global average pooling over h and w.
    Avg,
    /// Global max pooling over h and w.
    Max,
}

/// Head hyper-parameters; defaults are the classic head.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeadSpec {
    pub units: usize,
    pub layers: usize,
    pub dropout: f32,
    pub pool: Pool,
    /// Standardise the (pooled) features with the training set's mean and std, baked into the
    /// graph as frozen constants.
    #[serde(default)]
    pub standardize: bool,
}

impl Default for HeadSpec {
    fn default() -> Self {
        HeadSpec { units: 256, layers: 1, dropout: 0.5, pool: Pool::Flatten, standardize: false }
    }
}

impl HeadSpec {
    pub fn validate(&self) -> Result<()> {
        if self.layers > 0 && self.units == 0 {
            return Err(Error::Param { name: "units", value: "0".into(), reason: "must be ≥ 1".into() });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Param {
                name: "dropout",
                value: self.dropout.to_string(),
                reason: "must be in [0, 1)".into(),
            });
        }
        Ok(())
    }
}

/// Keras' `glorot_uniform`: U(−l, l), l = √(6 / (fan_in + fan_out)).
pub fn glorot_uniform(rng: &mut impl Rng, fan_in: usize, fan_out: usize) -> ArrayD<f32> {
    let l = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
    ArrayD::from_shape_simple_fn(ndarray::IxDyn(&[fan_in, fan_out]), || rng.gen_range(-l..l))
}

/// The (N, width) matrix the dense layers see: features flattened or globally pooled.
pub fn pooled(x: &ArrayD<f32>, pool: Pool) -> ndarray::Array2<f32> {
    let n = x.shape()[0];
    match pool {
        Pool::Flatten => crate::features::flatten(x),
        Pool::Avg | Pool::Max => {
            let c = *x.shape().last().expect("rank ≥ 2");
            let r = x.to_shape((n, x.len() / n / c, c)).expect("contiguous");
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
pub fn standardizer(x: &ndarray::Array2<f32>) -> (ndarray::Array1<f32>, ndarray::Array1<f32>) {
    let mean = x.mean_axis(ndarray::Axis(0)).expect("non-empty");
    let std = x.var_axis(ndarray::Axis(0), 0.0).mapv(|v| (v + 1e-6).sqrt());
    (mean, std)
}

/// `(x − mean) / std` with the statistics as frozen constants (never trained).
pub fn emit_standardize(
    b: &mut GraphBuilder,
    x: &str,
    mean: &ndarray::Array1<f32>,
    std: &ndarray::Array1<f32>,
) -> String {
    let m = b.init_f32(&format!("{}mean", crate::train::graph::FROZEN), &mean.clone().into_dyn());
    let s = b.init_f32(&format!("{}std", crate::train::graph::FROZEN), &std.clone().into_dyn());
    let x = b.op("Sub", &[x, &m], vec![]);
    b.op("Div", &[&x, &s], vec![])
}

/// Build the head for features of shape (h, w, c) and `classes` classes (1 sigmoid output when 2).
/// `train_x` supplies the statistics when `spec.standardize`.
pub fn build(
    feature_shape: &[usize],
    classes: usize,
    spec: &HeadSpec,
    seed: u64,
    train_x: Option<&ArrayD<f32>>,
) -> Result<ModelProto> {
    spec.validate()?;
    if classes < 2 {
        return Err(Error::Param {
            name: "classes",
            value: classes.to_string(),
            reason: "need at least 2 classes".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = GraphBuilder::new("tlearn_head").with_prefix("head/");
    let mut dims = vec![Dim::named("N")];
    dims.extend(feature_shape.iter().map(|&d| Dim::Fixed(d as i64)));
    b.input(INPUT, &dims);
    let (mut x, mut width) = emit_pool(&mut b, INPUT, spec.pool, feature_shape)?;
    if spec.standardize {
        let tx = train_x.ok_or_else(|| Error::Other("standardize needs the training features".into()))?;
        let (mean, std) = standardizer(&pooled(tx, spec.pool));
        x = emit_standardize(&mut b, &x, &mean, &std);
    }
    let out_units = if classes == 2 { 1 } else { classes };
    for layer in 0..=spec.layers {
        let last = layer == spec.layers;
        let units = if last { out_units } else { spec.units };
        let w = b.init_f32(&format!("dense_{layer}/kernel"), &glorot_uniform(&mut rng, width, units));
        let bias = b.init_f32(&format!("dense_{layer}/bias"), &ArrayD::zeros(ndarray::IxDyn(&[units])));
        x = b.op("Gemm", &[&x, &w, &bias], vec![]);
        if last {
            let act = if classes == 2 { "Sigmoid" } else { "Softmax" };
            let attrs = if classes == 2 { vec![] } else { vec![("axis", A::I(-1))] };
            b.node(act, &[&x], &[OUTPUT], attrs);
        } else {
            x = b.op("Relu", &[&x], vec![]);
            if spec.dropout > 0.0 {
                x = b.op("Dropout", &[&x], vec![("seed", A::I(seed as i64))]);
                let ratio = b.const_f32("ratio", spec.dropout);
                let node = b.graph.node.last_mut().expect("dropout");
                node.input.push(ratio);
            }
        }
        width = units;
    }
    b.output(OUTPUT, &[Dim::named("N"), Dim::Fixed(out_units as i64)]);
    Ok(onnx::model(b.finish(), "tlearn-head"))
}
