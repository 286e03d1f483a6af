//! The model a fine-tune trains: how it is read (a deployable model only while current, its plain
//! view), its image input, the pixel scale it wants, and which of its parameters train.

use crate::error::{Error, Result};
use crate::onnx::{self, cut, proto::ModelProto};
pub use crate::runs::finetune::input_shape;
use crate::runs::FinetuneConfig;
use crate::train::learner;
use std::collections::HashSet;
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

/// The net to train: a whole classifier of images (not a run that is not there, a backbone or a
/// head), a deployable model only while current, and with TTA views its plain view.
pub(super) fn open_model(path: &Path, data: &Path) -> Result<ModelProto> {
    check_run_of(path)?;
    crate::runs::check_current(path)?;
    let model = onnx::load_model(path)?;
    check_classifier(&model, path, data)?;
    crate::runs::check_differentiable(&model, path, "fine-tuning")?;
    crate::runs::plain(&model, path)
}

/// A run's model (`runs/<run>/model.onnx`, `best.onnx`, `last.onnx`) of a run that is not there:
/// the runs there are named.
pub(super) fn check_run_of(path: &Path) -> Result<()> {
    let run_dir = crate::fsutil::parent_dir(path);
    let run_file = [crate::runs::MODEL, learner::BEST, learner::LAST].map(std::ffi::OsStr::new);
    if !run_dir.exists() && path.file_name().is_some_and(|f| run_file.contains(&f)) {
        return Err(crate::runs::unknown_run(run_dir));
    }
    Ok(())
}

/// A backbone (its sidecar says so, or it outputs a feature map) or a head (it reads a
/// backbone's features) is no classifier of images: refused, saying what to train instead.
fn check_classifier(m: &ModelProto, path: &Path, data: &Path) -> Result<()> {
    use crate::onnx::cut::FEATURES;
    let g = onnx::graph(m);
    let side = crate::fsutil::read_json::<crate::backbone::BackboneInfo>(&crate::fsutil::sidecar_path(path));
    let out = g.output.first();
    let feature_map = out.is_some_and(|o| {
        let dims = onnx::vi_shape(o).1;
        // (N,h,w,c) or (N,c,h,w) with more than one number per image along two axes: a map.
        o.name == FEATURES || (dims.len() == 4 && dims[1..].iter().filter(|d| d.is_some_and(|d| d > 1)).count() >= 2)
    });
    let reason = if side.is_ok() || feature_map {
        let name = side.map(|s| s.name).unwrap_or_else(|_| "NAME".into());
        format!(
            "a backbone (feature extractor) without a classifier: use `tlearn fit {} --backbone {name}`, or make a \
             head first (tlearn-extract, tlearn-head --run NAME, then tlearn-score --run NAME --export-only) and \
             fine-tune runs/NAME/model.onnx",
            data.display()
        )
    } else if onnx::real_inputs(g).first().is_some_and(|i| i.name == FEATURES) {
        let dir = crate::fsutil::parent_dir(path);
        let run = crate::runs::name_of(dir);
        format!(
            "a head (it reads a backbone's features, not images): fine-tune the run's deployable model instead, \
             {} (`tlearn-score --run {run} --runs {} --export-only` makes it)",
            dir.join(crate::runs::MODEL).display(),
            crate::fsutil::parent_dir(dir).display()
        )
    } else {
        return Ok(());
    };
    Err(Error::BadData { path: path.into(), reason })
}

/// A deployable model names its classes: the data's must be the same names in the same order,
/// or output k would be trained as another class than the one it stands for — unless the run
/// relabels (`--relabel`: the data's names are taken, said in the log).
pub(super) fn check_class_names(model: &ModelProto, cfg: &FinetuneConfig, classes: &[String]) -> Result<()> {
    let Ok(meta) = crate::runs::meta(model, &cfg.model) else { return Ok(()) };
    if meta.classes == classes {
        return Ok(());
    }
    let (ours, theirs) = (meta.classes.join(", "), classes.join(", "));
    if cfg.relabel {
        tracing::info!("--relabel: {}'s outputs ({ours}) train as the data's classes ({theirs})", cfg.model.display());
        return Ok(());
    }
    let mut sorted = meta.classes.clone();
    sorted.sort();
    let what =
        if sorted == classes { "the model's classes in another order" } else { "other classes than the model's" };
    Err(Error::BadData {
        path: cfg.data.join("train"),
        reason: format!(
            "{what}: {} has [{ours}], the data [{theirs}]; rename the class folders to match, or give --relabel \
             to train output k as the data's k-th class",
            cfg.model.display()
        ),
    })
}

/// `--trainable` patterns must select something: a pattern that matches no parameter is refused,
/// with some of the names there are (a typo would otherwise train nothing, or everything else).
pub(super) fn check_trainable(cfg: &FinetuneConfig, model: &ModelProto) -> Result<()> {
    // The parameters training could select (as the compiler selects them: float, rank ≥ 1, not a
    // deployable model's preprocessing), before the patterns.
    let everything = FinetuneConfig { trainable: vec![], ..cfg.clone() };
    let all = crate::train::graph::select_params(onnx::graph(model), &trainable_fn(&everything, model, HashSet::new()));
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

/// The parameters a run trains: its patterns', none of `frozen` (`--freeze-stride`'s prefix),
/// never a deployable model's preprocessing.
fn trainable_fn(cfg: &FinetuneConfig, model: &ModelProto, frozen: HashSet<String>) -> impl Fn(&str) -> bool {
    let patterns = cfg.trainable.clone();
    let deployable = crate::runs::meta(model, &cfg.model).is_ok();
    move |n: &str| {
        let fixed = frozen.contains(n) || (deployable && is_preprocessing(n));
        !fixed && (patterns.is_empty() || patterns.iter().any(|p| matches(p, n)))
    }
}

/// What `model` trains: [`trainable_fn`] with `--freeze-stride`'s prefix found on `full` (the
/// model at its own size, so that every size of a progressive run freezes the same layers). A
/// prefix that leaves `--trainable`'s patterns nothing to train is refused.
pub(super) fn trainable_set(
    cfg: &FinetuneConfig,
    model: &ModelProto,
    full: &ModelProto,
) -> Result<impl Fn(&str) -> bool> {
    let trainable = trainable_fn(cfg, model, frozen_prefix(cfg, full)?);
    match cfg.freeze_stride {
        Some(s) if crate::train::graph::select_params(onnx::graph(model), &trainable).is_empty() => Err(Error::Param {
            name: "freeze-stride",
            value: s.to_string(),
            reason: if cfg.trainable.is_empty() {
                "leaves nothing to train: every parameter comes before that stride; give a larger stride".into()
            } else {
                "freezes every parameter --trainable's patterns select: give a larger stride, or patterns of later \
                 layers"
                    .into()
            },
        }),
        _ => Ok(trainable),
    }
}

/// `--freeze-stride`'s frozen prefix of `full`; empty without the option.
fn frozen_prefix(cfg: &FinetuneConfig, full: &ModelProto) -> Result<HashSet<String>> {
    let Some(stride) = cfg.freeze_stride else { return Ok(HashSet::new()) };
    let f = super::freeze::frozen_before_stride(full, &cfg.model, stride)?;
    tracing::info!(
        "--freeze-stride {stride}: the layers before {} ({}×{} at the model's size) keep their weights",
        f.first,
        f.side,
        f.side
    );
    Ok(f.params)
}

/// `m` (path `what`, input `full`×`full`) taking `size`×`size` images: its image input's height
/// and width rewritten and the recorded intermediate shapes dropped (onnxruntime infers them).
/// Only a size below the model's own is taken: progressive resizing grows toward it.
pub fn at_size(m: &ModelProto, what: &Path, size: u32) -> Result<ModelProto> {
    let full = input_shape(m, what)?;
    if size as usize >= full[0].min(full[1]) {
        return Err(Error::Param {
            name: "progressive",
            value: size.to_string(),
            reason: format!(
                "the early epochs' size must be below the model's own {}×{} (e.g. {})",
                full[0],
                full[1],
                (full[0] * 3 / 4).max(1)
            ),
        });
    }
    let (input, _) = cut::image_input(m, what)?;
    let mut out = m.clone();
    let g = out.graph.as_mut().expect("graph");
    g.value_info.clear();
    let vi = g.input.iter_mut().find(|i| i.name == input).expect("image input");
    onnx::set_dims(vi, &[(1, size as i64), (2, size as i64)]);
    for e in out.metadata_props.iter_mut().filter(|e| e.key == "tlearn.size") {
        e.value = size.to_string();
    }
    runs_at(&out, what, (&input, size, full[2]))?;
    Ok(out)
}

/// `m` (resized) runs on one blank image of `size`² — a net that flattens a fixed-size map
/// does not, and is refused before any image is decoded.
fn runs_at(m: &ModelProto, what: &Path, (input, size, channels): (&str, u32, usize)) -> Result<()> {
    let refuse = |e: Error| Error::Param {
        name: "progressive",
        value: size.to_string(),
        reason: format!(
            "{} does not run on {size}×{size} images ({e}); a net that flattens a fixed-size map takes one size \
             only: give it a pooled head (tlearn-head --pool avg, as tlearn fit does) or drop --progressive",
            what.display()
        ),
    };
    let opts = crate::runtime::SessionOptions { device: crate::runtime::Device::Cpu, threads: 0, precision: None };
    let mut s = crate::runtime::open(&onnx::encode_model(m), what, &opts).map_err(refuse)?.session;
    let x = ndarray::Array4::<f32>::zeros((1, size as usize, size as usize, channels)).into_dyn();
    let out = onnx::graph(m).output.first().map(|o| o.name.clone()).unwrap_or_default();
    crate::runtime::run_f32(&mut s, vec![(input, x.view())], &[out.as_str()]).map_err(refuse)?;
    Ok(())
}
