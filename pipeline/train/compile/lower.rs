//! Lowering: a compiled graph as a session runs it — the one place the passes after
//! differentiation are applied, in order: the optimizer's update ([`update::append_update`], for
//! a session that trains on its device), then onnxruntime's NCHWc kernels
//! ([`nchwc::for_device`], CPU sessions). The pre-passes run inside `compile`, before
//! differentiation, since they change what is differentiated: [`prepare`], [`poolconv`]
//! (train mode) and [`relupool`] (the reverse pass's view).

use super::graph::TrainGraph;
use super::nchwc;
use super::update::{self, Groups, Optimizer};
#[cfg(doc)]
use super::{poolconv, prepare::prepare, relupool};
use crate::onnx::proto::ModelProto;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::A;
    use crate::train::compile::testing::{conv, conv_model};
    use crate::train::compile::{self as graph, Mode};
    use std::path::Path;

    #[test]
    fn the_update_comes_first_then_the_cpu_kernels() {
        let m = conv_model([6, 6, 16], 3, |b, rng, x| {
            let h = conv(b, rng, &x, 16, 32, 3, vec![("pads", A::Ints(vec![1, 1, 1, 1]))]);
            b.op("Relu", &[&h], vec![])
        });
        let tg = graph::compile(&m, Path::new("lower.onnx"), &|_| true, &[6, 6, 16], Mode::Train).unwrap();
        let (opt, groups) = (Optimizer::adam(1e-3), Groups::default());
        let u = Update { opt: &opt, groups: &groups };
        // CUDA sessions get the standard-op graph, with the update when asked for.
        assert_eq!(lower(&tg, None, Device::Cuda), tg.model);
        let updated = update::append_update(&tg, &opt, &groups);
        assert_eq!(lower(&tg, Some(u), Device::Cuda), updated);
        // On the CPU the kernels rewrite the updated graph: every parameter's next value is still
        // an output, and the convolutions run in the NCHWc domain where the kernels exist.
        let cpu = lower(&tg, Some(u), Device::Cpu);
        let g = crate::onnx::graph(&cpu);
        for p in &tg.params {
            assert!(g.output.iter().any(|o| o.name == update::next_name(p)), "{p}");
        }
        let blocked = g.node.iter().any(|n| n.domain == nchwc::DOMAIN);
        assert_eq!(blocked, nchwc::block().is_some(), "{:?}", nchwc::block());
    }
}
