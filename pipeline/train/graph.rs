//! The training-graph compiler: turn an ONNX classifier into ONE graph of standard ONNX ops that
//! computes the forward pass, the loss and the gradient of every trainable parameter, so that a
//! stock onnxruntime `InferenceSession` trains it.
//!
//! Reverse-mode differentiation over the node list, one rule per op (see [`backward`]; the rules
//! are in `rules.rs` and `conv.rs`).
//! Trainable initializers become graph inputs `<name>`, gradients come out as `grad/<name>`.
//! Dropout becomes `Mul(x, mask)` with the mask fed per step (seeded in Rust, already scaled by
//! 1/(1−p)), so a step is a pure function of its inputs. The loss is fused with the final
//! Sigmoid (binary cross-entropy) or Softmax (categorical cross-entropy): dz = (p − y) / N.

use super::{conv, rules};
use crate::error::{Error, Result};
use crate::onnx::builder::A;
use crate::onnx::proto::*;
use crate::onnx::{self, attr_f, Dim, GraphBuilder};
use std::collections::{HashMap, HashSet};
use std::path::Path;

pub const LABELS: &str = "labels";
/// Training graphs' per-sample loss weights (N,1) (Keras' `sample_weight`; ones for none).
pub const WEIGHTS: &str = "sample_weights";
pub const LOSS: &str = "loss";
/// Initializers whose names start with this are never trained.
pub const FROZEN: &str = "frozen/";

/// The loss, chosen from the model's final activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Sigmoid output (N,1), labels (N,1) in {0,1}.
    BinaryCrossEntropy,
    /// Softmax output (N,K), labels one-hot (N,K).
    CategoricalCrossEntropy,
}

impl Loss {
    /// The loss of a classifier of `classes` classes: one sigmoid output for two, softmax else.
    pub fn for_classes(classes: usize) -> Loss {
        if classes == 2 {
            Loss::BinaryCrossEntropy
        } else {
            Loss::CategoricalCrossEntropy
        }
    }
}

/// Train (forward + loss + gradients, dropout active) or evaluate (forward + loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// How MaxPool's gradient is routed back to the argmax positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolGrad {
    /// MaxUnpool where windows neither overlap nor pad (fastest on CPU), else ScatterElements.
    Unpool,
    /// Always ScatterElements(add): ORT's CUDA provider has a kernel for it but none for
    /// MaxUnpool (its OperatorKernels list), which would fall back to the CPU every step.
    Scatter,
}

impl PoolGrad {
    /// The form for a session on `device`.
    pub fn for_device(device: crate::runtime::Device) -> PoolGrad {
        match device.expected() {
            crate::runtime::Device::Cuda => PoolGrad::Scatter,
            _ => PoolGrad::Unpool,
        }
    }
}

/// A dropout mask input of the training graph.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskInput {
    pub name: String,
    /// Dropout rate p: mask entries are 0 with probability p, else 1/(1−p).
    pub ratio: f32,
    /// Shape without the batch dimension.
    pub shape: Vec<usize>,
}

/// A compiled training (or evaluation) graph and what it expects.
#[derive(Clone, Debug)]
pub struct TrainGraph {
    pub model: ModelProto,
    pub input: String,
    pub output: String,
    pub loss: Loss,
    /// Trainable parameters (graph inputs), in order.
    pub params: Vec<String>,
    pub masks: Vec<MaskInput>,
}

pub fn grad_name(param: &str) -> String {
    format!("grad/{param}")
}

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
    compile_with(m, what, trainable, feature_shape, mode, PoolGrad::Unpool)
}

/// [`compile`] with the MaxPool gradient form chosen (see [`PoolGrad::for_device`]).
pub fn compile_with(
    m: &ModelProto,
    what: &Path,
    trainable: &dyn Fn(&str) -> bool,
    feature_shape: &[usize],
    mode: Mode,
    pools: PoolGrad,
) -> Result<TrainGraph> {
    // Nodes without names (Caffe2 and older exports) get `<op>_<index>`, so an error names them.
    // The training graph runs at opset ≥ 13, where Clip and Pad take inputs (attribute forms
    // rewritten).
    let attr_forms =
        onnx::graph(m).node.iter().any(|n| matches!(n.op_type.as_str(), "Clip" | "Pad") && n.input.len() == 1);
    let named;
    let m = if onnx::node_names_unique(onnx::graph(m)) && !attr_forms {
        m
    } else {
        named = {
            let mut c = m.clone();
            let g = c.graph.as_mut().expect("a model has a graph");
            onnx::name_nodes(g);
            onnx::upgrade_attribute_forms(g);
            c
        };
        &named
    };
    let g = onnx::graph(m);
    let Ends { input, output, logits, loss } = ends(g, what)?;
    let float_inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().filter(|t| t.data_type == dtype::FLOAT).map(|t| (t.name.as_str(), t)).collect();
    let params = select_params(g, trainable);
    let param_set: HashSet<&str> = params.iter().map(|s| s.as_str()).collect();
    let needs = needs_grad(g, &param_set);
    let mut shapes = probe_shapes(m, what, (&input, &output), feature_shape, &float_inits)?;

    // The first Conv→Relu→MaxPool block as four strided convolutions and a Max (poolconv.rs).
    let split = if mode == Mode::Train { super::poolconv::rewrite(g, &param_set, &needs, &mut shapes) } else { None };
    let (g, needs) = match &split {
        Some(g2) => (g2, needs_grad(g2, &param_set)),
        None => (g, needs),
    };

    let mut b = GraphBuilder::new("tlearn_train").with_prefix("tl/");
    b.graph.initializer = g.initializer.iter().filter(|t| !param_set.contains(t.name.as_str())).cloned().collect();
    declare_inputs(&mut b, &input, feature_shape, &params, &float_inits);
    let (masks, scatter) = forward(&mut b, g, mode, pools, &needs, &shapes)?;
    b.output_any(&output);
    let n_f = loss_nodes(&mut b, loss, &logits, &shapes, mode);
    if mode == Mode::Train {
        let diff = b.op("Sub", &[&output, LABELS], vec![]);
        let diff = b.op("Mul", &[&diff, WEIGHTS], vec![]);
        let dz = b.op("Div", &[&diff, &n_f], vec![]);
        backward(&mut b, g, &logits, dz, &params, &needs, &shapes, pools)?;
        for p in &params {
            b.output_any(&grad_name(p));
        }
    }
    let mut model = onnx::model(b.finish(), "tlearn-train");
    // ScatterElements with reduction needs opset 16.
    let opset = opset_of(m).max(if scatter { 16 } else { 13 });
    model.opset_import = vec![OperatorSetIdProto { domain: String::new(), version: opset }];
    Ok(TrainGraph { model, input, output, loss, params, masks })
}

/// The tensors a training graph is built around, and the loss the final activation implies.
struct Ends {
    input: String,
    output: String,
    /// The final activation's input.
    logits: String,
    loss: Loss,
}

fn ends(g: &GraphProto, what: &Path) -> Result<Ends> {
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
/// `Normalization` layer, a deployable model's scale, mean and std), which training leaves alone.
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
            );
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
fn probe_shapes(
    m: &ModelProto,
    what: &Path,
    (input, output): (&str, &str),
    feature_shape: &[usize],
    float_inits: &HashMap<&str, &TensorProto>,
) -> Result<HashMap<String, Vec<usize>>> {
    let g = onnx::graph(m);
    let ints = onnx::integer_tensors(g);
    let mut names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().take(1).cloned())
        .filter(|o| !o.is_empty() && !ints.contains(o))
        .collect();
    names.retain(|n| n != output);
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[&[2usize][..], feature_shape].concat()));
    let mut shapes = onnx::probe::shapes(m, what, vec![(input, x.view())], &names)?;
    shapes.insert(input.to_string(), x.shape().to_vec());
    for (k, t) in float_inits {
        shapes.insert(k.to_string(), t.dims.iter().map(|&d| d as usize).collect());
    }
    Ok(shapes)
}

/// The data input (batch dimension `N`), then each trainable parameter.
fn declare_inputs(
    b: &mut GraphBuilder,
    input: &str,
    feature_shape: &[usize],
    params: &[String],
    float_inits: &HashMap<&str, &TensorProto>,
) {
    let mut feature_dims = vec![Dim::named("N")];
    feature_dims.extend(feature_shape.iter().map(|&d| Dim::Fixed(d as i64)));
    b.input(input, &feature_dims);
    for p in params {
        let t = float_inits[p.as_str()];
        b.input(p, &t.dims.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>());
    }
}

/// Forward: copy nodes, replacing Dropout; MaxPool also returns its argmax indices. Returns the
/// dropout masks to feed and whether a MaxPool gradient needs ScatterElements.
fn forward(
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
                let mut n = n.clone();
                n.output.truncate(1);
                n.output.push(conv::pool_indices(&n.output[0]));
                scatter |= pools == PoolGrad::Scatter || conv::pool_needs_scatter(&n);
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
        &[&[Dim::named("N")][..], &s[1..].iter().map(|&d| Dim::Fixed(d as i64)).collect::<Vec<_>>()].concat(),
    );
    b.node("Mul", &[&n.input[0], &mask], &[&n.output[0]], vec![]);
    MaskInput { name: mask, ratio, shape: s[1..].to_vec() }
}

/// Loss from the logits: stable forms of BCE / CE, averaged over the batch (training: each
/// sample's weighted by [`WEIGHTS`], Keras' `sample_weight` with its mean over the batch size).
/// Returns the batch size as a float tensor (dz is divided by it too).
fn loss_nodes(
    b: &mut GraphBuilder,
    loss: Loss,
    logits: &str,
    shapes: &HashMap<String, Vec<usize>>,
    mode: Mode,
) -> String {
    b.input(LABELS, &[Dim::named("N"), Dim::Fixed(*shapes[logits].last().unwrap_or(&1) as i64)]);
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
        b.input(WEIGHTS, &[Dim::named("N"), Dim::Fixed(1)]);
        b.op("Mul", &[&per_sample, WEIGHTS], vec![])
    } else {
        per_sample
    };
    let total = b.op("ReduceSum", &[&per_sample], vec![("keepdims", A::I(0))]);
    b.node("Div", &[&total, &n_f], &[LOSS], vec![]);
    b.output_any(LOSS);
    n_f
}

fn opset_of(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(onnx::OPSET)
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

/// Reverse-mode pass from `d_logits` (the gradient of the loss w.r.t. the final activation's
/// input) back to every parameter.
#[allow(clippy::too_many_arguments)]
fn backward(
    b: &mut GraphBuilder,
    g: &GraphProto,
    logits: &str,
    d_logits: String,
    params: &[String],
    needs: &HashSet<String>,
    shapes: &HashMap<String, Vec<usize>>,
    pools: PoolGrad,
) -> Result<()> {
    let mut cx = rules::Ctx { b, g, shapes, needs, grads: HashMap::new() };
    cx.push(logits, d_logits);
    let producer_of_logits = g.node.iter().position(|n| n.output.iter().any(|o| o == logits)).unwrap_or(0);
    let pooled_relus = relus_feeding_only_a_maxpool(g);
    for n in g.node[..=producer_of_logits].iter().rev() {
        let Some(gs) = n.output.first().and_then(|o| cx.grads.remove(o)) else {
            continue;
        };
        if !n.input.iter().any(|i| needs.contains(i)) {
            continue;
        }
        let dy = sum(cx.b, gs);
        node_backward(&mut cx, n, dy, &pooled_relus, pools == PoolGrad::Scatter)?;
    }
    for p in params {
        let gs = cx
            .grads
            .remove(p.as_str())
            .ok_or_else(|| Error::Other(format!("parameter `{p}` does not influence the loss")))?;
        let d = sum(cx.b, gs);
        cx.b.node("Identity", &[&d], &[&grad_name(p)], vec![]);
    }
    Ok(())
}

/// The backward of one node: the convolutional rules (conv.rs) or the dense and elementwise ones
/// (rules.rs), with a Relu that only feeds a MaxPool differentiated after the pool.
fn node_backward(
    cx: &mut rules::Ctx,
    n: &NodeProto,
    dy: String,
    pooled_relus: &HashSet<&str>,
    always_scatter: bool,
) -> Result<()> {
    let (x0, y) = (&n.input[0], &n.output[0]);
    match n.op_type.as_str() {
        "MaxPool" if pooled_relus.contains(x0.as_str()) => {
            // ReLU' taken on the pooled tensor: the gradient reaches only argmax positions,
            // where the ReLU output equals the pooled value P, so relu' = [P > 0] there —
            // exact, and 4× fewer elements than Sign on the ReLU output (2×2 pools).
            let masked = rules::relu_backward(cx.b, &dy, y);
            cx.conv(n, &masked, always_scatter)
        }
        "Relu" if pooled_relus.contains(y.as_str()) => {
            cx.push(x0, dy);
            Ok(())
        }
        op if conv::handles(op) => cx.conv(n, &dy, always_scatter),
        _ => rules::backward(cx, n, dy),
    }
}

/// Outputs of Relu nodes whose only consumer is a MaxPool (and that are not graph outputs):
/// their ReLU' is applied after the pool's backward instead of at full resolution.
fn relus_feeding_only_a_maxpool(g: &GraphProto) -> HashSet<&str> {
    let consumers = onnx::Consumers::of(g);
    g.node
        .iter()
        .filter(|n| n.op_type == "Relu")
        .map(|n| n.output[0].as_str())
        .filter(|y| consumers.only(y, "MaxPool").is_some())
        .collect()
}

/// Tensors that lead from a parameter to the loss (only those need gradients).
fn needs_grad(g: &GraphProto, params: &HashSet<&str>) -> HashSet<String> {
    let mut needs: HashSet<String> = params.iter().map(|s| s.to_string()).collect();
    for n in &g.node {
        if n.input.iter().any(|i| needs.contains(i)) {
            needs.extend(n.output.iter().cloned());
        }
    }
    needs
}

fn sum(b: &mut GraphBuilder, mut gs: Vec<String>) -> String {
    if gs.len() == 1 {
        return gs.remove(0);
    }
    let refs: Vec<&str> = gs.iter().map(|s| s.as_str()).collect();
    b.op("Sum", &refs, vec![])
}
