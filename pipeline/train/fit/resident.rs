//! Parameters and optimizer slots kept on the execution provider's device between training steps.
//!
//! The update graph ([`optim::append_update`], appended by [`lower()`]) maps (parameters, slots,
//! batch) to (loss, output, next parameters, next slots). Two sets of device tensors alternate:
//! each step binds the current set as inputs and the other as outputs (ORT I/O binding), then
//! swaps them, so weights never travel to the host between steps — only the batch goes in and
//! the loss and outputs come back.
//! They are copied to the host on request ([`Resident::download`]: checkpoints, export).
//! On OpenVINO (`--precision bf16`) the forward and backward pass runs there ([`split`]) and the
//! session here is the update alone (`optim::update_graph`), in float32 on the CPU provider.

use super::data::Batch;
use super::split;
use super::state::State;
use crate::error::{Error, IoContext, Result};
use crate::runtime::{self, Device, SessionOptions};
use crate::train::compile::update::{self as optim, Groups, Optimizer};
use crate::train::compile::{self as graph, lower, TrainGraph, Update};
use ndarray::ArrayD;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;
use std::path::Path;

pub struct Resident {
    session: Session,
    binding: IoBinding,
    /// Host memory for the loss and outputs (bound anew every step).
    host_out: MemoryInfo<'static>,
    input: String,
    output: String,
    masks: Vec<String>,
    /// Whether the graph has the [`optim::DECAY`] input.
    decay: bool,
    /// Graph input names of `cur`/`next`: parameters, then slot 0 of each, then slot 1 of each.
    names: Vec<String>,
    n_params: usize,
    n_slots: usize,
    cur: Vec<Tensor<f32>>,
    next: Vec<Tensor<f32>>,
    /// Whether `session` is the update alone, the forward and backward pass running on OpenVINO
    /// ([`split::Gradients`], kept by the trainer: compiled once for all its fits).
    split: bool,
}

impl Resident {
    /// Compile `train` with `state`'s optimizer and `groups`, open it on `opts.device` and upload
    /// `params` and the used slots of `state`. With `grads` (on OpenVINO) the session is the
    /// update alone and each [`Resident::step`] takes the gradients from them.
    pub fn new(
        (train, params): (&TrainGraph, &[ArrayD<f32>]),
        state: &State,
        groups: &Groups,
        (what, opts): (&Path, &SessionOptions),
        grads: Option<&split::Gradients>,
    ) -> Result<Resident> {
        let opt: &Optimizer = &state.opt;
        // On OpenVINO (bf16) the gradients come from there and the update runs alone on the CPU
        // provider, so that weights and slots stay exact float32 (the master weights).
        let (model, update_opts) = if grads.is_some() {
            let cpu = SessionOptions { device: Device::Cpu, threads: opts.threads, precision: None };
            (optim::update_graph(train, opt, groups), cpu)
        } else {
            (lower(train, Some(Update { opt, groups }), opts.device), opts.clone())
        };
        if let Some(path) = std::env::var_os(runtime::SAVE_GRAPH_ENV) {
            let saved = grads.map_or(&model, |g| g.model());
            std::fs::write(&path, crate::onnx::encode_model(saved)).at(&path)?;
        }
        let open = runtime::open_with(&crate::onnx::encode_model(&model), what, &update_opts, true)?;
        let (session, device) = (open.session, open.device);
        let alloc = match device {
            Device::Cuda => Allocator::new(
                &session,
                MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default)?,
            )?,
            _ => Allocator::default(),
        };
        let n_slots = opt.n_slots();
        let mut names = train.params.clone();
        let mut host: Vec<&ArrayD<f32>> = params.iter().collect();
        for i in 0..n_slots {
            names.extend(train.params.iter().map(|p| optim::slot_name(i, p)));
            host.extend(state.slots.iter().map(|s| if i == 0 { &s.0 } else { &s.1 }));
        }
        let new = |a: &ArrayD<f32>| -> Result<Tensor<f32>> { Ok(Tensor::<f32>::new(&alloc, a.shape().to_vec())?) };
        let mut cur = vec![];
        for a in &host {
            let mut t = new(a)?;
            if device == Device::Cuda {
                Tensor::from_array(a.as_standard_layout().into_owned())?.copy_into(&mut t)?;
            } else {
                // Host memory written in place: `copy_into` runs an Identity session of the `ort`
                // crate's, which its automatic device policy would put on OpenVINO once the
                // plugin is registered.
                t.extract_array_mut().assign(a);
            }
            cur.push(t);
        }
        let next = host.iter().map(|a| new(a)).collect::<Result<Vec<_>>>()?;
        let binding = session.create_binding()?;
        let host_out = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)?;
        Ok(Resident {
            session,
            binding,
            host_out,
            input: train.input.clone(),
            output: train.output.clone(),
            masks: train.masks.iter().map(|m| m.name.clone()).collect(),
            decay: groups.has_decay(),
            names,
            n_params: params.len(),
            n_slots,
            cur,
            next,
            split: grads.is_some(),
        })
    }

    /// One update on a batch with learning rate `lr` (already [`Optimizer::step_lr`]) and weight
    /// decay `decay` (lr·wd; unused without decayed parameters); returns the batch loss and the
    /// model's outputs. `grads`: the gradients sessions this was made with (None otherwise).
    pub fn step(
        &mut self,
        batch: Batch,
        (lr, decay): (f32, f32),
        grads: Option<&mut split::Gradients>,
    ) -> Result<(f32, ArrayD<f32>)> {
        let b = &mut self.binding;
        let computed = match grads.filter(|_| self.split) {
            Some(g) => {
                let params = self.cur[..self.n_params].iter().map(Into::into).collect();
                let (x, y, w) = (batch.x.view(), batch.y.view(), batch.weights.as_ref().map(|w| w.view()));
                let (loss, probs, grads) = g.run((x, y, w), &batch.masks, params)?;
                for (name, a) in g.grads.iter().zip(grads) {
                    b.bind_input(name, &Tensor::from_array(a)?)?;
                }
                Some((loss, probs))
            }
            None if self.split => return Err(Error::Other("an update-only step needs its gradients".into())),
            None => {
                bind_batch(b, batch, (&self.input, &self.masks))?;
                // Rebound every step: ORT keeps what it allocated for a device-bound output, and
                // the last batch of an epoch is smaller.
                b.bind_output_to_device(graph::LOSS, &self.host_out)?;
                b.bind_output_to_device(&self.output, &self.host_out)?;
                None
            }
        };
        b.bind_input(optim::LR, &Tensor::from_array(ndarray::arr0(lr).into_dyn())?)?;
        if self.decay {
            b.bind_input(optim::DECAY, &Tensor::from_array(ndarray::arr0(decay).into_dyn())?)?;
        }
        for ((name, cur), next) in self.names.iter().zip(&self.cur).zip(self.next.iter_mut()) {
            b.bind_input(name, cur)?;
            b.bind_output(optim::next_name(name), next)?;
        }
        let out = self.session.run_binding(&self.binding)?;
        let (loss, probs) = match computed {
            Some(c) => c,
            None => {
                let get = |n: &str| -> Result<ArrayD<f32>> {
                    let v = out
                        .get(n)
                        .ok_or_else(|| Error::NoSuchTensor { name: n.into(), hint: " in the outputs".into() })?;
                    Ok(v.try_extract_array::<f32>()?.to_owned())
                };
                (get(graph::LOSS)?.iter().next().copied().unwrap_or(f32::NAN), get(&self.output)?)
            }
        };
        drop(out);
        std::mem::swap(&mut self.cur, &mut self.next);
        Ok((loss, probs))
    }

    /// The current parameters (device tensors), in the training graph's order.
    pub fn params(&self) -> &[Tensor<f32>] {
        &self.cur[..self.n_params]
    }

    /// Copy the current parameters and slots to the host.
    pub fn download(&self, params: &mut [ArrayD<f32>], state: &mut State) -> Result<()> {
        debug_assert_eq!(self.cur.len(), self.n_params * (1 + self.n_slots));
        for (i, t) in self.cur.iter().enumerate() {
            let a = to_host(t)?;
            let (k, p) = (i / self.n_params, i % self.n_params);
            match k {
                0 => params[p] = a,
                1 => state.slots[p].0 = a,
                _ => state.slots[p].1 = a,
            }
        }
        Ok(())
    }
}

/// Bind a batch's image, labels, sample weights and dropout masks (`names`: the image input's
/// and the masks'). Owned host tensors are bound without a copy (ORT moves them to the device if
/// needed).
fn bind_batch(b: &mut IoBinding, batch: Batch, names: (&str, &[String])) -> Result<()> {
    let Batch { x, y, weights, masks } = batch;
    let weights = weights.unwrap_or_else(|| ArrayD::ones(ndarray::IxDyn(&[y.shape()[0], 1])));
    b.bind_input(names.0, &Tensor::from_array(x)?)?;
    b.bind_input(graph::LABELS, &Tensor::from_array(y)?)?;
    b.bind_input(graph::WEIGHTS, &Tensor::from_array(weights)?)?;
    for (name, m) in names.1.iter().zip(masks) {
        b.bind_input(name, &Tensor::from_array(m)?)?;
    }
    Ok(())
}

fn to_host(t: &Tensor<f32>) -> Result<ArrayD<f32>> {
    if t.memory_info().is_cpu_accessible() {
        Ok(t.extract_array().to_owned())
    } else {
        Ok(t.to(AllocationDevice::CPU, 0)?.extract_array().to_owned())
    }
}
