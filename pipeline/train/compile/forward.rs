//! The forward half of a training graph: its inputs (the data, each trained parameter, dropout
//! masks, labels, sample weights), the model's nodes (Dropout as a fed mask, MaxPool with its
//! argmax indices where a gradient goes through it) and the loss.

use super::graph::{Loss, MaskInput, Mode, PoolGrad, BATCH, LABELS, LOSS, WEIGHTS};
use super::rules::pool;
use crate::error::{Error, Result};
use crate::kernels;
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr_f, Dim, GraphBuilder};
use std::collections::{HashMap, HashSet};

/// The data input (batch dimension `N`), then each trainable parameter.
pub(super) fn declare_inputs(
    b: &mut GraphBuilder,
    input: &str,
    feature_shape: &[usize],
    params: &[String],
    float_inits: &HashMap<&str, &TensorProto>,
) {
    let mut feature_dims = vec![Dim::named(BATCH)];
    feature_dims.extend(feature_shape.iter().map(|&d| Dim::Fixed(d as i64)));
    b.input(input, &feature_dims);
    for p in params {
        let t = float_inits[p.as_str()];
        b.input(p, &t.dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>());
    }
}

/// Forward: copy nodes, replacing Dropout; MaxPool also returns its argmax indices (on tlearn's CPU
/// kernels, [`PoolGrad::Argmax`], as a byte per output). Returns the
/// dropout masks to feed and whether a MaxPool gradient needs ScatterElements.
pub(super) fn forward(
    b: &mut GraphBuilder,
    g: &GraphProto,
    mode: Mode,
    pools: PoolGrad,
    needs: &HashSet<String>,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<(Vec<MaskInput>, bool)> {
    let mut masks = vec![];
    let mut scatter = false;
    for n in &g.node {
        match n.op_type.as_str() {
            "Dropout" => {
                let ratio = dropout_ratio(n, g)?;
                if mode == Mode::Train && ratio > 0.0 {
                    masks.push(dropout_mask(b, n, ratio, &shapes[&n.input[0]]));
                } else {
                    b.node("Identity", &[&n.input[0]], &[&n.output[0]], vec![]);
                }
            }
            "MaxPool" if mode == Mode::Train && needs.contains(&n.input[0]) => {
                let (x, y) = (&n.input[0], &n.output[0]);
                let indices = pool::pool_indices(y);
                if let Some(window) = pool::argmax_window(n, pools) {
                    b.domain_node(kernels::DOMAIN, kernels::MAX_POOL, &[x], &[y, &indices], window);
                    continue;
                }
                let mut n = n.clone();
                n.output.truncate(1);
                n.output.push(indices);
                scatter |= pools == PoolGrad::Scatter || pool::pool_needs_scatter(&n);
                b.graph.node.push(n);
            }
            _ => b.graph.node.push(n.clone()),
        }
    }
    Ok((masks, scatter))
}

/// A training Dropout as `Mul(x, mask)`, the mask a graph input of `x`'s shape `s`.
fn dropout_mask(b: &mut GraphBuilder, n: &NodeProto, ratio: f32, s: &[usize]) -> MaskInput {
    let mask = format!("mask/{}", n.output[0]);
    b.input(
        &mask,
        &[&[Dim::named(BATCH)][..], &s[1..].iter().map(|&d| Dim::Fixed(d as i64)).collect::<Vec<_>>()].concat(),
    );
    b.node("Mul", &[&n.input[0], &mask], &[&n.output[0]], vec![]);
    MaskInput { name: mask, ratio, shape: s[1..].to_vec() }
}

/// Loss from the logits: stable forms of BCE / CE, averaged over the batch (training: each
/// sample's weighted by [`WEIGHTS`], Keras' `sample_weight` with its mean over the batch size).
/// Returns the batch size as a float tensor (dz is divided by it too).
pub(super) fn loss_nodes(
    b: &mut GraphBuilder,
    loss: Loss,
    logits: &str,
    shapes: &HashMap<String, Vec<usize>>,
    mode: Mode,
) -> String {
    b.input(LABELS, &[Dim::named(BATCH), Dim::Fixed(*shapes[logits].last().unwrap_or(&1) as i64)]);
    let n_f = {
        let shp = b.op("Shape", &[logits], vec![]);
        let zero = b.const_i64("zero", &[0]);
        let n = b.op("Gather", &[&shp, &zero], vec![("axis", A::I(0))]);
        b.op("Cast", &[&n], vec![("to", A::I(dtype::FLOAT as i64))])
    };
    let per_sample = match loss {
        Loss::BinaryCrossEntropy => {
            // max(z,0) − z·y + log(1 + exp(−|z|))
            let r = b.op("Relu", &[logits], vec![]);
            let zy = b.op("Mul", &[logits, LABELS], vec![]);
            let a = b.op("Abs", &[logits], vec![]);
            let na = b.op("Neg", &[&a], vec![]);
            let sp = b.op("Softplus", &[&na], vec![]);
            let t = b.op("Sub", &[&r, &zy], vec![]);
            b.op("Add", &[&t, &sp], vec![])
        }
        Loss::CategoricalCrossEntropy => {
            let ls = b.op("LogSoftmax", &[logits], vec![("axis", A::I(-1))]);
            let m = b.op("Mul", &[&ls, LABELS], vec![]);
            let axes = b.const_i64("axes", &[-1]);
            let s = b.op("ReduceSum", &[&m, &axes], vec![("keepdims", A::I(1))]);
            b.op("Neg", &[&s], vec![])
        }
    };
    let per_sample = if mode == Mode::Train {
        b.input(WEIGHTS, &[Dim::named(BATCH), Dim::Fixed(1)]);
        b.op("Mul", &[&per_sample, WEIGHTS], vec![])
    } else {
        per_sample
    };
    let total = b.op("ReduceSum", &[&per_sample], vec![("keepdims", A::I(0))]);
    b.node("Div", &[&total, &n_f], &[LOSS], vec![]);
    b.output_any(LOSS);
    n_f
}

fn dropout_ratio(n: &NodeProto, g: &GraphProto) -> Result<f32> {
    if let Some(r) = n.input.get(1).filter(|s| !s.is_empty()) {
        let t = g.initializer.iter().find(|t| &t.name == r).ok_or_else(|| Error::UnsupportedOp {
            node: n.name.clone(),
            op: "Dropout".into(),
            why: "ratio must be a constant initializer".into(),
        })?;
        return Ok(*onnx::tensor_to_f32(t)?.iter().next().unwrap_or(&0.5));
    }
    Ok(attr_f(n, "ratio", 0.5))
}
