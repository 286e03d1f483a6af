//! A small builder for ONNX graphs: unique names, attributes, initializers.

use super::proto::*;
use super::{tensor_f32, tensor_i64, value_info, Dim};
use ndarray::ArrayD;

#[derive(Clone, Debug, PartialEq)]
pub enum A {
    I(i64),
    F(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    S(&'static str),
    Strs(Vec<String>),
}

pub fn attribute(name: &str, v: A) -> AttributeProto {
    let mut a = AttributeProto { name: name.into(), ..Default::default() };
    match v {
        A::I(i) => {
            a.r#type = attr_type::INT;
            a.i = i;
        }
        A::F(f) => {
            a.r#type = attr_type::FLOAT;
            a.f = f;
        }
        A::Ints(v) => {
            a.r#type = attr_type::INTS;
            a.ints = v;
        }
        A::Floats(v) => {
            a.r#type = attr_type::FLOATS;
            a.floats = v;
        }
        A::S(s) => {
            a.r#type = attr_type::STRING;
            a.s = s.as_bytes().to_vec();
        }
        A::Strs(v) => {
            a.r#type = attr_type::STRINGS;
            a.strings = v.into_iter().map(String::into_bytes).collect();
        }
    }
    a
}

/// Builds a [`GraphProto`]; every name it makes is prefixed so graphs can be merged safely.
#[derive(Default)]
pub struct GraphBuilder {
    pub graph: GraphProto,
    prefix: String,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto { name: name.into(), ..Default::default() },
            prefix: String::new(),
            counter: 0,
        }
    }

    /// Names made by [`Self::fresh`] start with `prefix`.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{}_{}", self.prefix, hint, self.counter)
    }

    /// Add a node with one output; returns the output name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, A)>) -> String {
        self.op_in("", op, inputs, attrs)
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, A)>) {
        let name = self.fresh(op);
        self.graph.node.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    /// Like [`Self::node`], for an operator of the `ai.onnx.ml` domain.
    pub fn ml_node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, A)>) {
        self.domain_node(super::ML_DOMAIN, op, inputs, outputs, attrs);
    }

    /// Like [`Self::op`], for an operator of `domain`.
    pub fn op_in(&mut self, domain: &str, op: &str, inputs: &[&str], attrs: Vec<(&str, A)>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.domain_node(domain, op, inputs, &[&out], attrs);
        out
    }

    /// Like [`Self::node`], for an operator of `domain`.
    pub fn domain_node(&mut self, domain: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, A)>) {
        self.node(op, inputs, outputs, attrs);
        self.graph.node.last_mut().expect("just pushed").domain = domain.into();
    }

    /// A fresh float32 constant initializer of any shape.
    pub fn const_arr_f32(&mut self, hint: &str, a: &ArrayD<f32>) -> String {
        let name = self.fresh(hint);
        self.init_f32(&name, a)
    }

    pub fn init_f32(&mut self, name: &str, a: &ArrayD<f32>) -> String {
        self.graph.initializer.push(tensor_f32(name, a));
        name.into()
    }

    /// A fresh int64 constant initializer.
    pub fn const_i64(&mut self, hint: &str, v: &[i64]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(tensor_i64(&name, &[v.len() as i64], v));
        name
    }

    /// `x` reshaped to `to` (a fresh int64 constant named after `hint`).
    pub fn reshape(&mut self, x: &str, hint: &str, to: &[i64]) -> String {
        let s = self.const_i64(hint, to);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// A fresh float scalar constant initializer.
    pub fn const_f32(&mut self, hint: &str, v: f32) -> String {
        let name = self.fresh(hint);
        self.init_f32(&name, &ndarray::arr0(v).into_dyn())
    }

    /// A fresh float vector constant initializer.
    pub fn const_vec_f32(&mut self, hint: &str, v: &[f32]) -> String {
        let name = self.fresh(hint);
        self.init_f32(&name, &ndarray::Array1::from(v.to_vec()).into_dyn())
    }

    pub fn input(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(value_info(name, dtype::FLOAT, dims));
    }

    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(name, dtype::FLOAT, dims));
    }

    /// An output whose shape is left to onnxruntime.
    pub fn output_any(&mut self, name: &str) {
        self.graph.output.push(ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeTensor { elem_type: dtype::FLOAT, shape: None }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// The graph, without initializers that no node uses.
    pub fn finish(mut self) -> GraphProto {
        let used: std::collections::HashSet<&str> =
            self.graph.node.iter().flat_map(|n| n.input.iter().map(|s| s.as_str())).collect();
        let keep: Vec<TensorProto> =
            self.graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
        self.graph.initializer = keep;
        self.graph
    }
}
