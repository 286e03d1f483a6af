//! Measure tensor shapes by running a graph once with chosen tensors exposed as outputs.

use super::proto::*;
use crate::error::Result;
use crate::runtime::{self, SessionOptions};
use ndarray::ArrayViewD;
use std::collections::HashMap;
use std::path::Path;

/// Run `m` on `inputs` and return the shapes of the float tensors `names`.
pub fn shapes(
    m: &ModelProto,
    what: &Path,
    inputs: Vec<(&str, ArrayViewD<'_, f32>)>,
    names: &[String],
) -> Result<HashMap<String, Vec<usize>>> {
    let mut probe = m.clone();
    let g = probe.graph.as_mut().expect("graph");
    let have: std::collections::HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for n in names {
        if !have.contains(n) {
            g.output.push(ValueInfoProto {
                name: n.clone(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TypeTensor { elem_type: dtype::FLOAT, shape: None }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    let mut s = runtime::open(
        &super::encode_model(&probe),
        what,
        &SessionOptions { device: runtime::Device::Cpu, threads: 1, precision: None },
    )?
    .session;
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let outs = runtime::run_f32(&mut s, inputs, &refs)?;
    Ok(names.iter().cloned().zip(outs.into_iter().map(|a| a.shape().to_vec())).collect())
}
