//! Pass: the source model in the form the other passes expect. Nodes without names (Caffe2 and
//! older exports) get `<op>_<index>`, so an error names them; the training graph runs at
//! opset ≥ 13, where Clip and Pad take inputs, so their attribute forms are rewritten; the input
//! normalisation runs after the layout Transpose ([`input_layout`]).

use super::input_layout;
use crate::onnx::proto::ModelProto;
use crate::onnx::{self};
use std::borrow::Cow;

/// `m`, renamed, upgraded and relaid where it needs to be (else borrowed as it is).
pub fn prepare(m: &ModelProto) -> Cow<'_, ModelProto> {
    let attr_forms =
        onnx::graph(m).node.iter().any(|n| matches!(n.op_type.as_str(), "Clip" | "Pad") && n.input.len() == 1);
    let relays = input_layout::applies(onnx::graph(m));
    if onnx::node_names_unique(onnx::graph(m)) && !attr_forms && !relays {
        return Cow::Borrowed(m);
    }
    let mut c = m.clone();
    let g = c.graph.as_mut().expect("a model has a graph");
    onnx::name_nodes(g);
    onnx::upgrade_attribute_forms(g);
    input_layout::rewrite(g);
    Cow::Owned(c)
}
