//! Lowering: a compiled graph as a session runs it — the one place the passes after
//! differentiation are applied, in order: the optimizer's update ([`update::append_update`], for
//! a session that trains on its device), then onnxruntime's NCHWc kernels
//! (`nchwc::for_device`, CPU sessions). The pre-passes run inside `compile`, before
//! differentiation, since they change what is differentiated: [`prepare`], [`poolconv`]
//! (train mode) and [`relupool`] (the reverse pass's view).

use super::graph::{TrainGraph, BATCH};
use super::nchwc;
use super::update::{self, Groups, Optimizer};
#[cfg(doc)]
use super::{poolconv, prepare::prepare, relupool};
use crate::onnx::proto::{DimValue, ModelProto};
use crate::runtime::Device;

/// The optimizer's update a lowered graph carries.
#[derive(Clone, Copy, Debug)]
pub struct Update<'a> {
    pub opt: &'a Optimizer,
    pub groups: &'a Groups,
}

/// `tg` as a session on `device` runs it: with `update` appended when given (parameters and
/// slots in, their next values out), then rewritten onto the NCHWc kernels on the CPU.
pub fn lower(tg: &TrainGraph, update: Option<Update>, device: Device) -> ModelProto {
    let updated;
    let m = match update {
        Some(u) => {
            updated = update::append_update(tg, u.opt, u.groups);
            &updated
        }
        None => &tg.model,
    };
    nchwc::for_device(m, device)
}

/// `m` with its batch ([`BATCH`]) fixed to `n` wherever a shape names it: OpenVINO compiles a
/// convolution only for weights of a known shape, and a compiled depthwise weight gradient takes
/// the output gradient of the whole batch as its weights.
pub fn with_batch(m: &ModelProto, n: usize) -> ModelProto {
    let mut m = m.clone();
    let g = m.graph.as_mut().expect("graph");
    let values = g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut());
    let shapes = values.filter_map(|v| v.r#type.as_mut()?.tensor_type.as_mut()?.shape.as_mut());
    for d in shapes.flat_map(|s| s.dim.iter_mut()) {
        if matches!(&d.value, Some(DimValue::DimParam(p)) if p == BATCH) {
            d.value = Some(DimValue::DimValue(n as i64));
        }
    }
    m
}
