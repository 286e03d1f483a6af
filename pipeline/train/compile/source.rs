//! What the compiler reads from the source model before it emits anything: the tensors the
//! training graph is built around (`ends`), the parameters ([`select_params`]), which tensors
//! need a gradient (`needs_grad`), and every float tensor's shape (`probe_shapes`).

use super::graph::Loss;
use crate::error::{Error, Result};
use crate::onnx::proto::*;
use crate::onnx::{self};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The tensors a training graph is built around, and the loss the final activation implies.
pub(super) struct Ends {
    pub input: String,
    pub output: String,
    /// The final activation's input.
    pub logits: String,
    pub loss: Loss,
}

pub(super) fn ends(g: &GraphProto, what: &Path) -> Result<Ends> {
    let inputs = onnx::real_inputs(g);
    let [input] = inputs.as_slice() else {
        return Err(Error::BadModel {
            path: what.into(),
            reason: format!("expected one data input, found {}", inputs.len()),
        });
    };
    let input = input.name.clone();
    let [output] = g.output.as_slice() else {
        let names: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        return Err(Error::BadModel {
            path: what.into(),
            reason: format!(
                "{} outputs ({}); tlearn trains a model with one, the class probabilities (ending in Softmax \
                 or Sigmoid): export it with that output alone",
                names.len(),
                names.join(", ")
            ),
        });
    };
    let output = output.name.clone();
    let producer = |t: &String| g.node.iter().find(|n| n.output.first() == Some(t));
    let mut last = producer(&output)
        .ok_or_else(|| Error::BadModel { path: what.into(), reason: format!("no node produces `{output}`") })?;
    // An Identity that only names the probabilities (classical heads' graphs end so).
    for _ in 0..g.node.len() {
        match last.input.first().filter(|_| last.op_type == "Identity").and_then(producer) {
            Some(n) => last = n,
            None => break,
        }
    }
    let loss = match last.op_type.as_str() {
        "Sigmoid" => Loss::BinaryCrossEntropy,
        "Softmax" => Loss::CategoricalCrossEntropy,
        op => {
            return Err(Error::UnsupportedOp {
                node: last.name.clone(),
                op: op.into(),
                why: "the model must end in Sigmoid (binary) or Softmax (multi-class)".into(),
            })
        }
    };
    let logits = last.input.first().cloned().ok_or_else(|| Error::BadModel {
        path: what.into(),
        reason: format!("its last node `{}` ({}) has no input", last.name, last.op_type),
    })?;
    Ok(Ends { input, output, logits, loss })
}

/// The constant operands of the elementwise and layout ops between the image input and the first
/// other op (a Conv, a Gemm): a model's own input normalisation (a Keras `Rescaling` or
/// `Normalization` layer, a deployable model's channel order, scale, mean and std — a Gather of
/// the image's channels passes, a Gather of a table by the input would not), which training
/// leaves alone.
fn input_constants(g: &GraphProto) -> HashSet<String> {
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut found = HashSet::new();
    let mut frontier: Vec<String> = onnx::real_inputs(g).iter().map(|i| i.name.clone()).collect();
    let mut seen: HashSet<String> = frontier.iter().cloned().collect();
    while let Some(x) = frontier.pop() {
        for n in g.node.iter().filter(|n| n.input.contains(&x)) {
            let passes = matches!(
                n.op_type.as_str(),
                "Transpose"
                    | "Identity"
                    | "Cast"
                    | "Mul"
                    | "Div"
                    | "Sub"
                    | "Add"
                    | "Round"
                    | "Reshape"
                    | "Squeeze"
                    | "Unsqueeze"
            ) || (n.op_type == "Gather" && n.input.first() == Some(&x));
            if !passes {
                continue;
            }
            found.extend(n.input.iter().filter(|t| inits.contains(t.as_str())).cloned());
            frontier.extend(n.output.iter().filter(|o| seen.insert((*o).clone())).cloned());
        }
    }
    found
}

/// The float initializers of rank ≥ 1 that `trainable` selects, in the model's order.
pub fn select_params(g: &GraphProto, trainable: &dyn Fn(&str) -> bool) -> Vec<String> {
    let leading = input_constants(g);
    // BatchNormalization running statistics are never trained (Keras' frozen-BN fine-tuning).
    let bn_stats: HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .flat_map(|n| n.input.iter().skip(3).map(|s| s.as_str()))
        .collect();
    g.initializer
        .iter()
        .filter(|t| {
            t.data_type == dtype::FLOAT
                && !t.dims.is_empty()
                && !bn_stats.contains(t.name.as_str())
                && !leading.contains(&t.name)
                && trainable(&t.name)
        })
        .map(|t| t.name.clone())
        .collect()
}

/// Shapes of every float tensor for a batch of 2 (2, not 1, so broadcasting is visible).
pub(super) fn probe_shapes(
    m: &ModelProto,
    what: &Path,
    (input, output): (&str, &str),
    feature_shape: &[usize],
    float_inits: &HashMap<&str, &TensorProto>,
) -> Result<HashMap<String, Vec<usize>>> {
    let mut names = onnx::float_outputs(onnx::graph(m));
    names.retain(|n| n != output);
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[&[2usize][..], feature_shape].concat()));
    let mut shapes = onnx::probe::shapes(m, what, vec![(input, x.view())], &names)?;
    shapes.insert(input.to_string(), x.shape().to_vec());
    for (k, t) in float_inits {
        shapes.insert(k.to_string(), t.dims.iter().map(|&d| d as usize).collect());
    }
    Ok(shapes)
}

/// Tensors that lead from a parameter to the loss (only those need gradients).
pub(super) fn needs_grad(g: &GraphProto, params: &HashSet<&str>) -> HashSet<String> {
    let mut needs: HashSet<String> = params.iter().map(|s| s.to_string()).collect();
    for n in &g.node {
        if n.input.iter().any(|i| needs.contains(i)) {
            needs.extend(n.output.iter().cloned());
        }
    }
    needs
}

pub(super) fn opset_of(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(onnx::OPSET)
}
