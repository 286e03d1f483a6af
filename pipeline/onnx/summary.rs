//! A Keras-style `summary()` of an ONNX model: one row per layer with its output shape at a given
//! input size (measured by running the graph once) and its parameter count.

use super::proto::*;
use super::{cut, graph, numel, vi_shape};
use crate::error::Result;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub kind: String,
    /// Output shape with `None` for the batch, channels-last for images.
    pub shape: Vec<Option<usize>>,
    pub params: usize,
}

fn keras_kind(op: &str) -> Option<&'static str> {
    Some(match op {
        "Conv" => "Conv2D",
        "ConvTranspose" => "Conv2DTranspose",
        "MaxPool" => "MaxPooling2D",
        "AveragePool" => "AveragePooling2D",
        "GlobalAveragePool" => "GlobalAveragePooling2D",
        "GlobalMaxPool" => "GlobalMaxPooling2D",
        "Gemm" | "MatMul" => "Dense",
        "Flatten" => "Flatten",
        "Dropout" => "Dropout",
        "Concat" => "Concatenate",
        "BatchNormalization" => "BatchNormalization",
        _ => return None,
    })
}

fn layer_name(n: &NodeProto) -> String {
    let t = n.output.first().cloned().unwrap_or_default();
    let parts: Vec<&str> = t.split('/').collect();
    if parts.len() >= 2 {
        parts[1].to_string()
    } else if !n.name.is_empty() {
        n.name.clone()
    } else {
        t
    }
}

/// Compute the rows of `m` at input `size`×`size` (one run of the graph: the caller checks that
/// one image of that size fits in memory first).
pub fn rows(m: &ModelProto, path: &Path, size: u32) -> Result<Vec<Row>> {
    let (input, layout) = cut::image_input(m, path)?;
    let g = graph(m);
    let inits: HashMap<&str, &TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let vi = g.input.iter().find(|i| i.name == input).expect("input");
    let (_, dims) = vi_shape(vi);
    let (h, w, c) = match layout {
        cut::Layout::Nhwc => (dims[1].unwrap_or(size as i64), dims[2].unwrap_or(size as i64), dims[3].unwrap_or(3)),
        cut::Layout::Nchw => (dims[2].unwrap_or(size as i64), dims[3].unwrap_or(size as i64), dims[1].unwrap_or(3)),
    };
    // Layers: nodes Keras would show; residual Adds too. Bias Adds and activations fold into
    // the layer before them.
    let mut layers: Vec<(usize, Row)> = vec![];
    for (i, n) in g.node.iter().enumerate() {
        let params: usize = n
            .input
            .iter()
            .filter_map(|x| inits.get(x.as_str()))
            // Scalars (dropout ratios, epsilons) are hyper-parameters, not weights.
            .filter(|t| t.data_type == dtype::FLOAT && !t.dims.is_empty())
            .map(|t| numel(t))
            .fold(0usize, usize::saturating_add);
        let kind = match keras_kind(&n.op_type) {
            Some(k) => Some(k),
            None if n.op_type == "Add" && params == 0 => Some("Add"),
            _ => None,
        };
        match kind {
            // A node without outputs (malformed) has nothing to show.
            Some(_) if n.output.first().is_none_or(|o| o.is_empty()) => {}
            Some(k) => layers.push((i, Row { name: layer_name(n), kind: k.into(), shape: vec![], params })),
            None => {
                if let Some(last) = layers.last_mut() {
                    last.1.params = last.1.params.saturating_add(params);
                }
            }
        }
    }
    let x = match layout {
        cut::Layout::Nhwc => ndarray::Array4::<f32>::zeros((1, h as usize, w as usize, c as usize)),
        cut::Layout::Nchw => ndarray::Array4::<f32>::zeros((1, c as usize, h as usize, w as usize)),
    }
    .into_dyn();
    let names: Vec<String> = layers.iter().map(|(i, _)| g.node[*i].output[0].clone()).collect();
    let shapes = super::probe::shapes(m, path, vec![(input.as_str(), x.view())], &names)?;
    let mut rows = vec![Row {
        name: input.clone(),
        kind: "InputLayer".into(),
        shape: vec![None, Some(h as usize), Some(w as usize), Some(c as usize)],
        params: 0,
    }];
    let nchw_inside = g.node.iter().any(|n| n.op_type == "Conv");
    for ((_, mut r), name) in layers.into_iter().zip(&names) {
        let mut shape: Vec<Option<usize>> =
            shapes.get(name).map(|s| s.iter().map(|&d| Some(d)).collect()).unwrap_or_default();
        if let Some(batch) = shape.first_mut() {
            *batch = None;
        }
        // ONNX image ops compute NCHW; show channels-last like Keras.
        if shape.len() == 4 && nchw_inside {
            shape = vec![None, shape[2], shape[3], shape[1]];
        }
        r.shape = shape;
        rows.push(r);
    }
    Ok(rows)
}

fn fmt_shape(s: &[Option<usize>]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.map(|v| v.to_string()).unwrap_or_else(|| "None".into())).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Render rows like Keras' `model.summary()`; `trainable` is the count of trainable parameters.
pub fn render(title: &str, rows: &[Row], trainable: Option<usize>) -> String {
    let total: usize = rows.iter().map(|r| r.params).sum();
    let w0 = rows.iter().map(|r| r.name.len() + r.kind.len() + 3).max().unwrap_or(10).max(28);
    let mut s = String::new();
    let _ = writeln!(s, "Model: \"{title}\"");
    let line = "─".repeat(w0 + 32);
    let _ = writeln!(s, "{line}");
    let _ = writeln!(s, "{:<w0$} {:<22} {:>8}", "Layer (type)", "Output Shape", "Param #");
    let _ = writeln!(s, "{}", "═".repeat(w0 + 32));
    for r in rows {
        let _ = writeln!(
            s,
            "{:<w0$} {:<22} {:>8}",
            format!("{} ({})", r.name, r.kind),
            fmt_shape(&r.shape),
            thousands(r.params)
        );
    }
    let _ = writeln!(s, "{line}");
    let tr = trainable.unwrap_or(total);
    let _ = writeln!(s, "Total params: {}", thousands(total));
    let _ = writeln!(s, "Trainable params: {}", thousands(tr));
    let _ = writeln!(s, "Non-trainable params: {}", thousands(total - tr));
    s
}
