//! The training-graph compiler (graph → graph): turn an ONNX classifier into ONE graph of
//! standard ONNX ops that computes the forward pass, the loss and the gradient of every trainable
//! parameter, so that a stock onnxruntime `InferenceSession` trains it. It opens no session but
//! the shape probe, and knows no fit, file or device buffer.
//!
//! The passes, in order: [`prepare`] (node names, attribute forms, [`input_layout`]) → [`poolconv`] (train mode:
//! the first Conv→Relu→MaxPool block without pool indices) → the forward and loss
//! ([`forward`]) → reverse-mode differentiation ([`backward`]: one rule per op in the registry
//! [`rules`], the [`relupool`] fusion marking what the walk sees) → at [`lower()`]: the optimizer's
//! [`update`] → [`nchwc`] (CPU sessions).
//!
//! Trainable initializers become graph inputs `<name>`, gradients come out as `grad/<name>`.
//! Dropout becomes `Mul(x, mask)` with the mask fed per step (seeded in Rust, already scaled by
//! 1/(1−p)), so a step is a pure function of its inputs. The loss is fused with the final
//! Sigmoid (binary cross-entropy) or Softmax (categorical cross-entropy): dz = (p − y) / N.

pub mod backward;
pub mod ctx;
pub mod forward;
pub mod graph;
pub mod input_layout;
pub mod lower;
pub mod nchwc;
pub mod poolconv;
pub mod prepare;
pub mod relupool;
pub mod rules;
pub mod source;
pub mod update;

pub use graph::{
    grad_name, is_frozen, Forms, Loss, MaskInput, Mode, PoolGrad, TrainGraph, FROZEN, LABELS, LOSS, WEIGHTS,
};
pub use lower::{lower, with_batch, Update};
pub use source::select_params;

use crate::error::Result;
use crate::onnx::proto::*;
use crate::onnx::{self, GraphBuilder};
use backward::Forward;
use source::Ends;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Compile `m` (one data input, one output) for `mode`. `trainable` selects the initializers
/// that get gradients; the others stay frozen constants. `feature_shape` is one sample's input
/// shape (used to measure intermediate shapes once).
pub fn compile(
    m: &ModelProto,
    what: &Path,
    trainable: &dyn Fn(&str) -> bool,
    feature_shape: &[usize],
    mode: Mode,
) -> Result<TrainGraph> {
    compile_with(m, what, trainable, feature_shape, mode, Forms::default())
}

/// [`compile`] with the gradient forms chosen for the session (see [`Forms::for_device`]).
pub fn compile_with(
    m: &ModelProto,
    what: &Path,
    trainable: &dyn Fn(&str) -> bool,
    feature_shape: &[usize],
    mode: Mode,
    forms: Forms,
) -> Result<TrainGraph> {
    let prepared = prepare::prepare(m);
    let m = prepared.as_ref();
    let g = onnx::graph(m);
    let Ends { input, output, logits, loss } = source::ends(g, what)?;
    let float_inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().filter(|t| t.data_type == dtype::FLOAT).map(|t| (t.name.as_str(), t)).collect();
    let params = select_params(g, trainable);
    let param_set: HashSet<&str> = params.iter().map(|s| s.as_str()).collect();
    let needs = source::needs_grad(g, &param_set);
    let mut shapes = source::probe_shapes(m, what, (&input, &output), feature_shape, &float_inits)?;

    // The first Conv→Relu→MaxPool block as four strided convolutions and a Max (poolconv.rs).
    let split = if mode == Mode::Train && forms.pools != PoolGrad::Argmax {
        poolconv::rewrite(g, &param_set, &needs, &mut shapes)
    } else {
        None
    };
    let (g, needs) = match &split {
        Some(g2) => (g2, source::needs_grad(g2, &param_set)),
        None => (g, needs),
    };

    let mut b = GraphBuilder::new("tlearn_train").with_prefix("tl/");
    b.graph.initializer = g.initializer.iter().filter(|t| !param_set.contains(t.name.as_str())).cloned().collect();
    forward::declare_inputs(&mut b, &input, feature_shape, &params, &float_inits);
    let (masks, scatter) = forward::forward(&mut b, g, mode, forms.pools, &needs, &shapes)?;
    b.output_any(&output);
    let n_f = forward::loss_nodes(&mut b, loss, &logits, &shapes, mode);
    if mode == Mode::Train {
        let diff = b.op("Sub", &[&output, LABELS], vec![]);
        let diff = b.op("Mul", &[&diff, WEIGHTS], vec![]);
        let dz = b.op("Div", &[&diff, &n_f], vec![]);
        let f = Forward { g, logits: &logits, params: &params, needs: &needs, shapes: &shapes };
        backward::backward(&mut b, &f, dz, forms)?;
        for p in &params {
            b.output_any(&grad_name(p));
        }
    }
    let mut model = onnx::model(b.finish(), "tlearn-train");
    // ScatterElements with reduction needs opset 16.
    let opset = source::opset_of(m).max(if scatter { 16 } else { 13 });
    model.opset_import = vec![OperatorSetIdProto { domain: String::new(), version: opset }];
    if onnx::graph(&model).node.iter().any(|n| n.domain == crate::kernels::DOMAIN) {
        model.opset_import.push(OperatorSetIdProto { domain: crate::kernels::DOMAIN.into(), version: 1 });
    }
    Ok(TrainGraph { model, input, output, loss, params, masks })
}

#[cfg(test)]
mod tests;
