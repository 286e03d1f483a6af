//! ONNX models as data: read, write, build and inspect them without onnxruntime.

pub mod builder;
pub mod cut;
pub mod probe;
pub mod proto;
pub mod qdq;
pub mod split;
pub mod summary;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use proto::*;
use std::path::Path;

pub use builder::GraphBuilder;

/// The ONNX opset tlearn emits for the graphs it builds.
pub const OPSET: i64 = 17;

pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let m = ModelProto::decode(bytes).map_err(|e| Error::BadModel { path: path.into(), reason: e.to_string() })?;
    if m.graph.is_none() {
        return Err(Error::BadModel { path: path.into(), reason: "the model has no graph".into() });
    }
    if !m.functions.is_empty() {
        return Err(Error::BadModel { path: path.into(), reason: "model-local functions are not supported".into() });
    }
    Ok(m)
}

pub fn load_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).at(path)?;
    decode_model(&bytes, path)
}

/// The metadata of the model at `path` (`metadata_props`), its graph skipped.
pub fn load_metadata(path: &Path) -> Result<Vec<proto::StringStringEntryProto>> {
    let bytes = std::fs::read(path).at(path)?;
    let m = proto::ModelMetadata::decode(bytes.as_slice())
        .map_err(|e| Error::BadModel { path: path.into(), reason: e.to_string() })?;
    Ok(m.metadata_props)
}

/// The model's bytes, every node named and no name repeated ([`name_nodes`]): onnxruntime
/// refuses two nodes of one name, and a graph made of graphs whose nodes have no names (valid
/// ONNX, common in Caffe2 and older exports) would otherwise hold many.
pub fn encode_model(m: &ModelProto) -> Vec<u8> {
    match m.graph.as_ref() {
        Some(g) if !node_names_unique(g) => {
            let mut named = m.clone();
            name_nodes(named.graph.as_mut().expect("checked above"));
            named.encode_to_vec()
        }
        _ => m.encode_to_vec(),
    }
}

/// Rewrite Clip and Pad nodes still in their attribute form (opset < 11: bounds, pads and the
/// pad value as attributes) to the input form of opset 11 on, with the values as initializers.
/// Run where a graph joins one of a higher opset (the deployable model, the training graph), in
/// which the attribute form is invalid. Returns how many nodes changed.
pub fn upgrade_attribute_forms(g: &mut GraphProto) -> usize {
    let mut inits = vec![];
    let mut changed = 0;
    for n in g.node.iter_mut() {
        let key = n.output.first().cloned().unwrap_or_default();
        match n.op_type.as_str() {
            "Clip" if n.input.len() == 1 && n.attribute.iter().any(|a| a.name == "min" || a.name == "max") => {
                for bound in ["min", "max"] {
                    let name = match attr(n, bound) {
                        Some(a) => {
                            let t = format!("{key}/clip_{bound}");
                            inits.push(tensor_f32(&t, &ArrayD::from_elem(IxDyn(&[]), a.f)));
                            t
                        }
                        None => String::new(),
                    };
                    n.input.push(name);
                }
                n.attribute.retain(|a| a.name != "min" && a.name != "max");
                changed += 1;
            }
            "Pad" if n.input.len() == 1 => {
                let pads = attr_ints(n, "pads").or_else(|| attr_ints(n, "paddings")).unwrap_or_default();
                let value = attr_f(n, "value", 0.0);
                let (p, v) = (format!("{key}/pads"), format!("{key}/pad_value"));
                inits.push(tensor_i64(&p, &[pads.len() as i64], &pads));
                inits.push(tensor_f32(&v, &ArrayD::from_elem(IxDyn(&[]), value)));
                n.input.extend([p, v]);
                n.attribute.retain(|a| !matches!(a.name.as_str(), "pads" | "paddings" | "value"));
                changed += 1;
            }
            _ => {}
        }
    }
    g.initializer.extend(inits);
    changed
}

/// Does every node of `g` have a name, and no other node the same one?
pub fn node_names_unique(g: &GraphProto) -> bool {
    let mut seen = std::collections::HashSet::new();
    g.node.iter().all(|n| !n.name.is_empty() && seen.insert(n.name.as_str()))
}

/// Name every node that has no name, or one an earlier node has, `<op>_<index>` (a suffix added
/// while that is taken too); the first node of a name keeps it.
pub fn name_nodes(g: &mut GraphProto) {
    let taken: std::collections::HashSet<String> = g.node.iter().map(|n| n.name.clone()).collect();
    let mut seen = std::collections::HashSet::new();
    for (i, n) in g.node.iter_mut().enumerate() {
        if !n.name.is_empty() && seen.insert(n.name.clone()) {
            continue;
        }
        let mut name = format!("{}_{i}", n.op_type);
        let mut k = 0;
        while taken.contains(&name) || seen.contains(&name) {
            k += 1;
            name = format!("{}_{i}_{k}", n.op_type);
        }
        seen.insert(name.clone());
        n.name = name;
    }
}

pub fn save_model(m: &ModelProto, path: &Path) -> Result<()> {
    fsutil::write_bytes_atomic(path, &encode_model(m))
}

pub fn graph(m: &ModelProto) -> &GraphProto {
    m.graph.as_ref().expect("decode_model checks the graph")
}

/// The domain of ONNX's classical-ML operators (TreeEnsembleClassifier).
pub const ML_DOMAIN: &str = "ai.onnx.ml";
/// The `ai.onnx.ml` opset tlearn emits (TreeEnsembleClassifier-3).
pub const ML_OPSET: i64 = 3;

/// A model around `graph` with the default opset (and `ai.onnx.ml` when a node uses it).
pub fn model(graph: GraphProto, producer: &str) -> ModelProto {
    let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: OPSET }];
    if graph.node.iter().any(|n| n.domain == ML_DOMAIN) {
        opset_import.push(OperatorSetIdProto { domain: ML_DOMAIN.into(), version: ML_OPSET });
    }
    ModelProto {
        ir_version: 8,
        opset_import,
        producer_name: producer.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// A float32 initializer from an ndarray.
pub fn tensor_f32(name: &str, a: &ArrayD<f32>) -> TensorProto {
    // Little-endian f32s: a contiguous array's memory as it is on little-endian machines (one
    // copy, not one push per byte: a large head's checkpoint holds tens of millions).
    let raw: Vec<u8> = match a.as_slice() {
        Some(s) if cfg!(target_endian = "little") => bytemuck::cast_slice(s).to_vec(),
        _ => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    TensorProto {
        name: name.into(),
        dims: a.shape().iter().map(|&d| d as i64).collect(),
        data_type: dtype::FLOAT,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn tensor_i64(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype::INT64,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// The values of a float32 initializer.
pub fn tensor_to_f32(t: &TensorProto) -> Result<ArrayD<f32>> {
    let bad_dims = || Error::Other(format!("initializer `{}` declares impossible dimensions {:?}", t.name, t.dims));
    let shape: Vec<usize> =
        t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| bad_dims())).collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(bad_dims)?;
    if t.data_type != dtype::FLOAT {
        return Err(Error::Other(format!("initializer `{}` has data type {}, expected float32", t.name, t.data_type)));
    }
    if !t.external_data.is_empty() {
        return Err(Error::Other(format!("initializer `{}` uses external data, which tlearn does not read", t.name)));
    }
    let v: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        t.float_data.clone()
    };
    if v.len() != n {
        return Err(Error::Shape { what: format!("initializer `{}`", t.name), expected: shape, got: vec![v.len()] });
    }
    ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| Error::Other(format!("initializer `{}`: {e}", t.name)))
}

pub fn tensor_to_i64(t: &TensorProto) -> Vec<i64> {
    if !t.raw_data.is_empty() {
        match t.data_type {
            dtype::INT32 => {
                t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
            }
            _ => t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        }
    } else if !t.int64_data.is_empty() {
        t.int64_data.clone()
    } else {
        t.int32_data.iter().map(|&v| v as i64).collect()
    }
}

/// Number of elements of an initializer.
/// Elements of a tensor as its dims declare (saturating: declared dims are untrusted input).
pub fn numel(t: &TensorProto) -> usize {
    t.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
}

pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Dim::Fixed(v) => DimValue::DimValue(*v),
                                Dim::Named(s) => DimValue::DimParam(s.to_string()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl Dim {
    pub fn named(s: &str) -> Dim {
        Dim::Named(s.into())
    }
}

/// Element type and dims of a value info (None when unknown).
pub fn vi_shape(vi: &ValueInfoProto) -> (i32, Vec<Option<i64>>) {
    let Some(tt) = vi.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
        return (0, vec![]);
    };
    let dims = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(v)) if *v > 0 => Some(*v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (tt.elem_type, dims)
}

/// Set dims of a value info (axis, size); axes it does not have are left alone.
pub fn set_dims(vi: &mut ValueInfoProto, dims: &[(usize, i64)]) {
    let Some(shape) = vi.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()).and_then(|tt| tt.shape.as_mut()) else {
        return;
    };
    for &(axis, v) in dims {
        if let Some(d) = shape.dim.get_mut(axis) {
            d.value = Some(DimValue::DimValue(v));
        }
    }
}

pub fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

pub fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}

pub fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

/// Which nodes read each tensor of a graph.
pub struct Consumers<'g> {
    g: &'g GraphProto,
    readers: std::collections::HashMap<&'g str, Vec<usize>>,
    outputs: std::collections::HashSet<&'g str>,
}

impl<'g> Consumers<'g> {
    pub fn of(g: &'g GraphProto) -> Self {
        let mut readers: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for t in &n.input {
                readers.entry(t.as_str()).or_default().push(i);
            }
        }
        let outputs = g.output.iter().map(|o| o.name.as_str()).collect();
        Consumers { g, readers, outputs }
    }

    /// The index of the node that reads `t` when it is `t`'s only reader and an `op` node, and `t`
    /// is not a graph output (so a rewrite may drop `t`).
    pub fn only(&self, t: &str, op: &str) -> Option<usize> {
        self.sole(t).filter(|&j| self.g.node[j].op_type == op)
    }

    /// The index of `t`'s only reader, when `t` is not a graph output.
    pub fn sole(&self, t: &str) -> Option<usize> {
        match self.readers.get(t).map(Vec::as_slice) {
            Some(&[j]) if !self.outputs.contains(t) => Some(j),
            _ => None,
        }
    }
}

/// The value of a constant tensor of `g`: an initializer, or the output of a Constant node.
pub fn constant<'g>(g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    g.initializer.iter().find(|t| t.name == name).or_else(|| {
        let n = g.node.iter().find(|n| n.op_type == "Constant" && n.output.first().is_some_and(|o| o == name))?;
        attr(n, "value")?.t.as_ref()
    })
}

/// A one-number float constant of `g` (an initializer or a Constant node's value).
pub fn constant_f32(g: &GraphProto, name: &str) -> Option<f32> {
    let a = tensor_to_f32(constant(g, name)?).ok()?;
    (a.len() == 1).then(|| a.iter().copied().next()).flatten()
}

/// A Clip node's bounds (min, max; None where it has none): attributes before opset 11, constant
/// inputs after; None when a bound is computed.
pub fn clip_bounds(g: &GraphProto, n: &NodeProto) -> Option<[Option<f32>; 2]> {
    let bound = |i: usize, name: &str| match n.input.get(i).filter(|t| !t.is_empty()) {
        Some(t) => constant_f32(g, t).map(Some),
        None => Some(attr(n, name).map(|a| a.f)),
    };
    Some([bound(1, "min")?, bound(2, "max")?])
}

/// The graph inputs that are not initializers (the real inputs of the model).
pub fn real_inputs(g: &GraphProto) -> Vec<&ValueInfoProto> {
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect()
}

/// The float tensors a graph computes: every node's first output that is not shape arithmetic
/// ([`integer_tensors`]), in node order — what a shape or memory probe asks a session for.
pub fn float_outputs(g: &GraphProto) -> Vec<String> {
    let ints = integer_tensors(g);
    g.node.iter().filter_map(|n| n.output.first()).filter(|o| !o.is_empty() && !ints.contains(*o)).cloned().collect()
}

/// Tensors that hold integers (shape arithmetic of exported graphs): outputs of Shape/Size/ArgMax…,
/// integer Casts and Constants, and of any other op whose first input is an integer tensor.
pub fn integer_tensors(g: &GraphProto) -> std::collections::HashSet<String> {
    let mut ints: std::collections::HashSet<String> =
        g.initializer.iter().filter(|t| t.data_type != dtype::FLOAT).map(|t| t.name.clone()).collect();
    for n in &g.node {
        let int_out = match n.op_type.as_str() {
            "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => true,
            "Cast" => attr_i(n, "to", dtype::FLOAT as i64) != dtype::FLOAT as i64,
            "Constant" => attr(n, "value").and_then(|a| a.t.as_ref()).is_some_and(|t| t.data_type != dtype::FLOAT),
            _ => n.input.first().is_some_and(|i| ints.contains(i)),
        };
        if int_out {
            ints.extend(n.output.iter().cloned());
        }
    }
    ints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_alone_reads_as_the_whole_model_has_it() {
        let mut b = GraphBuilder::new("meta");
        b.input("x", &[Dim::Fixed(1), Dim::Fixed(4)]);
        let w = b.init_f32("w", &ndarray::ArrayD::from_elem(ndarray::IxDyn(&[4, 4]), 0.5));
        b.node("MatMul", &["x", &w], &["y"], vec![]);
        b.output("y", &[Dim::Fixed(1), Dim::Fixed(4)]);
        let mut m = model(b.finish(), "test");
        let entry = |k: &str, v: &str| proto::StringStringEntryProto { key: k.into(), value: v.into() };
        m.metadata_props = vec![entry("a", "1"), entry("state", "{\"epoch\": 3}")];
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.onnx");
        std::fs::write(&path, encode_model(&m)).unwrap();
        assert_eq!(load_metadata(&path).unwrap(), load_model(&path).unwrap().metadata_props);
        assert_eq!(load_metadata(&path).unwrap(), m.metadata_props);
    }
}
