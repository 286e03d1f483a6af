//! The model a fine-tune trains: how it is read (a deployable model only while current, its plain
//! view), its image input, the pixel scale it wants, and which of its parameters train.

use crate::error::{Error, Result};
use crate::onnx::{self, proto::ModelProto};
pub use crate::runs::finetune::input_shape;
use crate::runs::FinetuneConfig;
use std::path::Path;

/// `name` matches `pattern` (`*` wildcards; no `*`: substring).
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// The factor a model applies to its image input itself, when it does: a leading Mul or Div by
/// one constant (how tf2onnx exports a Keras `Rescaling` layer), reached through layout-only
/// nodes (Transpose, Identity, Cast). Such a model wants raw 0..255 pixels: fed pixels already
/// scaled by 1/255, its inputs end up ≤ 1/65025 and it does not learn.
pub fn own_rescale(m: &ModelProto) -> Option<f32> {
    let g = onnx::graph(m);
    let mut x = onnx::real_inputs(g).first()?.name.clone();
    // At most one step per node: a graph with a cycle (invalid, not yet checked by onnxruntime)
    // ends the walk instead of looping.
    for _ in 0..g.node.len() {
        // Shape and Size read only the input's dimensions.
        let readers: Vec<_> =
            g.node.iter().filter(|n| n.input.contains(&x) && !matches!(n.op_type.as_str(), "Shape" | "Size")).collect();
        let [n] = readers.as_slice() else { return None };
        match n.op_type.as_str() {
            "Transpose" | "Identity" | "Cast" => x = n.output.first()?.clone(),
            op @ ("Mul" | "Div") => {
                let [a, b] = n.input.as_slice() else { return None };
                let other = if *a == x { b } else { a };
                let c = constant_scalar(g, other)?;
                return match op {
                    "Mul" => Some(c),
                    _ if *b == *other && c != 0.0 => Some(1.0 / c),
                    _ => None,
                };
            }
            _ => return None,
        }
    }
    None
}

/// The pixel scale to train `m` with when none is given: 1 (raw 0..255 pixels) for a model that
/// scales its input itself ([`own_rescale`]) or is a deployable tlearn model (preprocessing
/// inside), else Keras' 1/255 (the built-in nets).
pub fn default_rescale(m: &ModelProto, what: &Path) -> f32 {
    // A factor that maps 0..255 to about 0..1 or 0..2 (1/255, 1/127.5, 1/128): the model wants raw
    // pixels. Any other factor says nothing about what the model expects.
    if let Some(c) = own_rescale(m).filter(|c| (0.9..=2.1).contains(&(c * 255.0))) {
        tracing::info!(
            "{}: the model scales its input itself (×{c}); feeding raw 0..255 pixels (--rescale 1)",
            what.display()
        );
        1.0
    } else if crate::runs::meta(m, what).is_ok() {
        tracing::info!(
            "{}: a deployable model (preprocessing inside); feeding raw 0..255 pixels (--rescale 1)",
            what.display()
        );
        1.0
    } else {
        1.0 / 255.0
    }
}

/// Whether `name` is a constant of a deployable model's in-graph preprocessing (`pre/…`, also
/// inside the `net/` of a fine-tuned deployable model wrapped again): never trained.
fn is_preprocessing(name: &str) -> bool {
    let mut s = name;
    while let Some(rest) = s.strip_prefix("net/") {
        s = rest;
    }
    s.starts_with("pre/")
}

/// The value of `name` when it is a one-number constant (an initializer or a Constant node).
fn constant_scalar(g: &onnx::proto::GraphProto, name: &str) -> Option<f32> {
    let a = onnx::tensor_to_f32(onnx::constant(g, name)?).ok()?;
    let first = *a.iter().next()?;
    a.iter().all(|&v| v == first).then_some(first)
}

/// The net to train: a deployable model only while current, and with TTA views its plain view.
pub(super) fn open_model(path: &Path) -> Result<ModelProto> {
    crate::runs::check_current(path)?;
    let model = onnx::load_model(path)?;
    crate::runs::check_differentiable(&model, path, "fine-tuning")?;
    crate::runs::plain(&model, path)
}

/// `--trainable` patterns must select something: a pattern that matches no parameter is refused,
/// with some of the names there are (a typo would otherwise train nothing, or everything else).
pub(super) fn check_trainable(cfg: &FinetuneConfig, model: &ModelProto) -> Result<()> {
    // The parameters training could select (as the compiler selects them: float, rank ≥ 1, not a
    // deployable model's preprocessing), before the patterns.
    let everything = FinetuneConfig { trainable: vec![], ..cfg.clone() };
    let all = crate::train::graph::select_params(onnx::graph(model), &trainable_fn(&everything, model));
    let params: Vec<&str> = all.iter().map(String::as_str).collect();
    let Some(p) = cfg.trainable.iter().find(|p| !params.iter().any(|n| matches(p, n))) else { return Ok(()) };
    let some: Vec<&str> = params.iter().copied().take(8).collect();
    Err(Error::Param {
        name: "trainable",
        value: p.clone(),
        reason: format!(
            "matches no parameter of {} (`*` wildcards, else a substring); its {} parameters include: {}",
            cfg.model.display(),
            params.len(),
            some.join(", ")
        ),
    })
}

/// The parameters a run trains: its patterns', never a deployable model's preprocessing.
pub(super) fn trainable_fn(cfg: &FinetuneConfig, model: &ModelProto) -> impl Fn(&str) -> bool {
    let patterns = cfg.trainable.clone();
    let deployable = crate::runs::meta(model, &cfg.model).is_ok();
    move |n: &str| {
        !(deployable && is_preprocessing(n)) && (patterns.is_empty() || patterns.iter().any(|p| matches(p, n)))
    }
}
