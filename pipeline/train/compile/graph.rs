//! What a compiled graph is: the names it is built around (labels, sample weights, loss,
//! gradients), the loss its model implies, the mode and MaxPool-gradient form it was compiled
//! for, and what it expects as inputs. Knows no rule, pass or session.

use crate::onnx::proto::ModelProto;

pub const LABELS: &str = "labels";
/// Training graphs' per-sample loss weights (N,1) (Keras' `sample_weight`; ones for none).
pub const WEIGHTS: &str = "sample_weights";
pub const LOSS: &str = "loss";
/// The symbolic batch dimension of a compiled graph's inputs.
pub const BATCH: &str = "N";
/// Initializers under this name are constants to the compiler (a head's statistics and
/// projections); fusing a head into a deployable model prefixes its names (`head/frozen/…`), so a
/// `frozen/` segment anywhere in the name counts ([`is_frozen`]).
pub const FROZEN: &str = "frozen/";

/// Is the initializer `name` a constant that training never changes?
pub fn is_frozen(name: &str) -> bool {
    name.starts_with(FROZEN) || name.contains(&format!("/{FROZEN}"))
}

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

/// `TLEARN_KERNELS=0`: CPU training graphs without tlearn's kernels ([`crate::kernels`]), the
/// standard forms (side-by-side timings).
pub const KERNELS_ENV: &str = "TLEARN_KERNELS";

/// How MaxPool's gradient is routed back to the argmax positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolGrad {
    /// MaxUnpool where windows neither overlap nor pad (fastest on CPU), else ScatterElements.
    Unpool,
    /// Always ScatterElements(add): ORT's CUDA provider has a kernel for it but none for
    /// MaxUnpool (its OperatorKernels list), which would fall back to the CPU every step.
    Scatter,
    /// tlearn's CPU kernels ([`crate::kernels`]) for 2-D pools: the pool keeps a byte per output
    /// for its argmax, the gradient is written from it in one pass, with a Relu before the pool
    /// folded in; [`PoolGrad::Unpool`]'s forms elsewhere.
    Argmax,
}

impl PoolGrad {
    /// The form for a session on `device`.
    pub fn for_device(device: crate::runtime::Device) -> PoolGrad {
        match device.expected() {
            // OpenVINO has no MaxUnpool either: onnxruntime would cut the graph around it, and
            // OpenVINO cannot convert the part after it (its input has no known rank).
            crate::runtime::Device::Cuda | crate::runtime::Device::Openvino => PoolGrad::Scatter,
            _ if std::env::var(KERNELS_ENV).is_ok_and(|v| v == "0") => PoolGrad::Unpool,
            _ => PoolGrad::Argmax,
        }
    }
}

/// The gradient forms a graph is compiled in for the session that will run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forms {
    pub pools: PoolGrad,
    /// The channel block of onnxruntime's NCHWc kernels when the session's convolutions go onto
    /// them (`nchwc::block_for`): a depthwise weight gradient then takes the form their
    /// depthwise kernel runs (`rules::conv`'s stacked correlation).
    pub nchwc: Option<usize>,
}

impl Forms {
    /// The forms for a session on `device`.
    pub fn for_device(device: crate::runtime::Device) -> Forms {
        Forms { pools: PoolGrad::for_device(device), nchwc: super::nchwc::block_for(device) }
    }

    /// Whether the session has tlearn's CPU kernels ([`crate::kernels`]), as its pools say: a
    /// Relu's and a Clip's gradient and a weight gradient's columns then run there too.
    pub fn kernels(&self) -> bool {
        self.pools == PoolGrad::Argmax
    }
}

impl Default for Forms {
    /// The standard forms: no kernel-specific layout assumed.
    fn default() -> Forms {
        Forms { pools: PoolGrad::Unpool, nchwc: None }
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
