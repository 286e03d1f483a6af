//! The fit driver (`train::learner`) through the library, on a dense head and generated features:
//! the history kept live (rows and plot after every epoch, the learning rate per epoch), an early
//! stop that says why, checkpoints that hold only what trains (frozen tensors checked by sha256,
//! whole checkpoints of older runs still restored), and paced checkpoints that a run stopped
//! anywhere resumes from to the uninterrupted bytes.

use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use tlearn::history::Epoch;
use tlearn::onnx::{self, proto::ModelProto};
use tlearn::params::ParamGuard;
use tlearn::progress::{Meter, Sink};
use tlearn::runtime::{Device, SessionOptions};
use tlearn::train::checkpoint::{self, Resume};
use tlearn::train::learner::{self, Checkpointing, FitOptions, Fitted, Live};
use tlearn::train::optim::{slot_name, Optimizer, Schedule};
use tlearn::train::{FitConfig, InMemory, Sampling, Trainer};

fn opts() -> SessionOptions {
    SessionOptions { device: Device::Cpu, threads: 1, precision: None }
}

/// 40 rows of 4 features and labels from a linear rule; `flip` inverts the labels.
fn toy(flip: bool) -> (ArrayD<f32>, Vec<usize>) {
    let x = ArrayD::from_shape_fn(IxDyn(&[40, 4]), |i| (((i[0] * 7 + i[1] * 3) % 11) as f32 - 5.0) / 5.0);
    let labels = (0..40).map(|i| ((i * 7 % 11 > 5) != flip) as usize).collect();
    (x, labels)
}

/// A dense head on the toy's 4 features, standardised (its statistics are frozen constants).
fn head() -> ModelProto {
    let spec = tlearn::heads::HeadSpec { units: 8, dropout: 0.0, standardize: true, ..Default::default() };
    tlearn::heads::dense::build(&[4], 2, &spec.check().unwrap(), 3, Some(&toy(false).0)).unwrap()
}

fn options(fit: FitConfig, checkpoint: Option<Checkpointing>) -> FitOptions {
    FitOptions { fit: fit.check().unwrap(), checkpoint, models: None, patience: None, wrap: None, live: None }
}

fn checkpointing(dir: &Path, resume: Resume, share: f64) -> Option<Checkpointing> {
    let path = dir.join("checkpoint.onnx");
    Some(Checkpointing { path, config: serde_json::json!({ "test": 1 }), resume, share })
}

/// A sink that keeps the notes and calls `on_epoch` for every epoch (finished or replayed).
struct Recorder<'a> {
    notes: Mutex<Vec<String>>,
    on_epoch: &'a (dyn Fn(&Epoch) + Sync),
}

struct NoMeter;

impl Meter for NoMeter {
    fn inc(&self, _: u64) {}
    fn set_message(&self, _: String) {}
}

impl Sink for Recorder<'_> {
    fn meter(&self, _: u64, _: &str, _: &str) -> Box<dyn Meter + '_> {
        Box::new(NoMeter)
    }
    fn epoch(&self, e: &Epoch, _: usize) {
        (self.on_epoch)(e)
    }
    fn note(&self, text: &str) {
        self.notes.lock().unwrap().push(text.into());
    }
}

fn recorder(on_epoch: &(dyn Fn(&Epoch) + Sync)) -> Recorder<'_> {
    Recorder { notes: Mutex::new(vec![]), on_epoch }
}

/// Fit a fresh trainer of `model` (training what `trainable` accepts) on the toy, validating on
/// the toy (its labels flipped when `flipped_val`).
fn fit(
    model: &ModelProto,
    trainable: &dyn Fn(&str) -> bool,
    o: &FitOptions,
    flipped_val: bool,
    sink: &dyn Sink,
) -> tlearn::Result<(Fitted, Trainer)> {
    let (x, labels) = toy(false);
    let (_, vlabels) = toy(flipped_val);
    let mut tr = Trainer::with_trainable(model, Path::new("head.onnx"), &[4], 2, &opts(), trainable)?;
    let val = InMemory { x: &x, labels: &vlabels };
    let fitted = learner::fit(&mut tr, &InMemory { x: &x, labels: &labels }, Some(&val), o, sink)?;
    Ok((fitted, tr))
}

fn all(_: &str) -> bool {
    true
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_history_is_written_as_the_fit_runs_with_each_epochs_rate() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("history.csv");
    let mut o = options(
        FitConfig {
            schedule: Schedule::Step { every: 1, factor: 0.5 },
            ..FitConfig::new(4, 8, 1, Optimizer::rmsprop(1e-2))
        },
        None,
    );
    o.live = Some(Live { dir: dir.path().into(), title: "live".into() });
    // Each epoch's line comes before its files are written: the rows of the epochs before it.
    let seen = Mutex::new(vec![]);
    let rows = |_: &Epoch| {
        let n = std::fs::read_to_string(&csv).map(|t| t.lines().count().saturating_sub(1)).unwrap_or(0);
        seen.lock().unwrap().push(n);
    };
    let (fitted, _) = fit(&head(), &all, &o, false, &recorder(&rows)).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3]);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n"), "{text}");
    let lrs: Vec<f64> = fitted.history.iter().map(|e| e.lr).collect();
    assert_eq!(lrs, vec![1e-2, 5e-3, 2.5e-3, 1.25e-3], "the step schedule, epoch by epoch");
    let read: Vec<Epoch> = csv::Reader::from_path(&csv).unwrap().deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(read.iter().map(|e| e.lr).collect::<Vec<_>>(), lrs);
    assert!(dir.path().join("history.png").exists(), "the plot is drawn too");
}

#[test]
fn an_early_stop_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut o =
        options(FitConfig::new(30, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(dir.path(), Resume::Auto, 0.1));
    o.patience = Some(2);
    let sink = recorder(&|_| {});
    // Validation labels that disagree with training: the validation loss rises, patience stops.
    let (fitted, _) = fit(&head(), &all, &o, true, &sink).unwrap();
    assert!(fitted.history.len() < 30, "{} epochs", fitted.history.len());
    let best = fitted.best.as_ref().unwrap().0.clone();
    let want = format!(
        "stopped: val_loss has not improved for 2 epochs; best epoch {} val_loss {:.4}",
        best.epoch, best.val_loss
    );
    assert!(sink.notes.lock().unwrap().contains(&want), "{want} in {:?}", sink.notes.lock().unwrap());
    // Rerun, it stays stopped and says so again.
    let again = recorder(&|_| {});
    let (refit, _) = fit(&head(), &all, &o, true, &again).unwrap();
    assert_eq!(refit.history, fitted.history);
    assert!(again.notes.lock().unwrap().contains(&want));
}

fn tensor_names(path: &Path) -> BTreeSet<String> {
    onnx::graph(&onnx::load_model(path).unwrap()).initializer.iter().map(|t| t.name.clone()).collect()
}

#[test]
fn a_checkpoint_holds_what_trains_and_checks_the_rest() {
    let last = |n: &str| n.contains("dense_1/");
    let model = head();
    for (opt, slots) in [(Optimizer::rmsprop(1e-2), 1), (Optimizer::adam(1e-2), 2)] {
        let dir = tempfile::tempdir().unwrap();
        let o = options(FitConfig::new(2, 8, 1, opt), checkpointing(dir.path(), Resume::Auto, 0.1));
        let (_, tr) = fit(&model, &last, &o, false, &recorder(&|_| {})).unwrap();
        let mut want = BTreeSet::new();
        for p in &tr.train.params {
            want.insert(p.clone());
            want.extend((0..slots).map(|i| slot_name(i, p)));
        }
        assert_eq!(tensor_names(&dir.path().join("checkpoint.onnx")), want, "trained tensors and used slots only");
        assert_eq!(tr.train.params.len(), 2, "the last layer's kernel and bias");
    }
    // A frozen tensor of the source model changed since: the checkpoint is not continued.
    let dir = tempfile::tempdir().unwrap();
    let o = options(FitConfig::new(2, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(dir.path(), Resume::Auto, 0.1));
    let (first, _) = fit(&model, &last, &o, false, &recorder(&|_| {})).unwrap();
    let mut other = model.clone();
    let t = other.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name.contains("dense_0/kernel")).unwrap();
    let mut a = onnx::tensor_to_f32(t).unwrap();
    a[[0, 0]] += 1.0;
    *t = onnx::tensor_f32(&t.name.clone(), &a);
    let more =
        |resume| options(FitConfig::new(3, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(dir.path(), resume, 0.1));
    let err = fit(&other, &last, &more(Resume::Keep), false, &recorder(&|_| {})).err().unwrap().to_string();
    assert!(err.contains("frozen_tensors_sha256") && err.contains("--restart"), "{err}");
    let err = fit(&other, &last, &more(Resume::Require), false, &recorder(&|_| {})).err().unwrap().to_string();
    assert!(err.contains("other settings"), "{err}");
    // The same model continues: its first two epochs are the checkpoint's.
    let (resumed, _) = fit(&model, &last, &more(Resume::Require), false, &recorder(&|_| {})).unwrap();
    assert_eq!((resumed.history.len(), &resumed.history[..2]), (3, &first.history[..]));
    // Under `Auto` the other model starts over.
    let (fresh, _) = fit(&other, &last, &more(Resume::Auto), false, &recorder(&|_| {})).unwrap();
    assert_eq!(fresh.history.len(), 3);
    assert_ne!(fresh.history[0].loss, first.history[0].loss, "trained anew from the other model");
}

/// A checkpoint as runs wrote it before they left out frozen tensors: the whole model (every
/// initializer), both slots, no frozen sha256. It still resumes to the uninterrupted result.
#[test]
fn a_whole_checkpoint_of_an_older_run_still_resumes() {
    let model = head();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run = |dir: &Path, epochs| {
        let o =
            options(FitConfig::new(epochs, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(dir, Resume::Require, 0.1));
        fit(&model, &all, &o, false, &recorder(&|_| {})).unwrap()
    };
    let (whole, tr) = run(a.path(), 4);
    let done = |dir: &Path| {
        let o = options(FitConfig::new(2, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(dir, Resume::Auto, 0.1));
        fit(&model, &all, &o, false, &recorder(&|_| {})).unwrap()
    };
    done(b.path());
    let path = b.path().join("checkpoint.onnx");
    let mut ck = onnx::load_model(&path).unwrap();
    let saved: std::collections::HashMap<String, _> =
        onnx::graph(&ck).initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let mut old = model.clone();
    let g = old.graph.as_mut().unwrap();
    for t in g.initializer.iter_mut() {
        if let Some(s) = saved.get(&t.name) {
            *t = s.clone();
        }
    }
    for p in &tr.train.params {
        g.initializer.push(saved[&slot_name(0, p)].clone());
        let zeros = ArrayD::<f32>::zeros(onnx::tensor_to_f32(&saved[p]).unwrap().raw_dim());
        g.initializer.push(onnx::tensor_f32(&slot_name(1, p), &zeros));
    }
    let meta = &mut ck.metadata_props[0];
    let mut state: serde_json::Value = serde_json::from_str(&meta.value).unwrap();
    state.as_object_mut().unwrap().remove("frozen_sha256").expect("recorded now");
    meta.value = state.to_string();
    old.metadata_props = ck.metadata_props.clone();
    onnx::save_model(&old, &path).unwrap();
    let (resumed, tr2) = run(b.path(), 4);
    let sans_time = |h: &[Epoch]| h.iter().map(|e| Epoch { seconds: 0.0, ..e.clone() }).collect::<Vec<_>>();
    assert_eq!(sans_time(&resumed.history), sans_time(&whole.history));
    assert_eq!(onnx::encode_model(&tr2.export()), onnx::encode_model(&tr.export()), "the same weights");
}

/// Checkpoints written only after the first and the last epoch (a share no write fits in), the
/// models after every improving epoch: a run stopped after any epoch resumes from the first
/// epoch's checkpoint and ends with the uninterrupted run's bytes; one given fewer epochs than
/// its best model has seen is refused, not finished with the wrong best model.
#[test]
fn a_run_stopped_between_paced_checkpoints_resumes_to_the_same_bytes() {
    stopped_and_resumed(Sampling::Shuffle);
}

#[test]
fn a_class_balanced_run_is_seeded_and_resumes_to_the_same_bytes() {
    stopped_and_resumed(Sampling::Balanced);
}

/// A fit stopped after epochs 2, 4 and 6 (its checkpoint paced to the first epoch) continues
/// to the models of an uninterrupted one.
fn stopped_and_resumed(sampling: Sampling) {
    let model = head();
    let with_models = |dir: &Path, epochs| {
        let fit = FitConfig { sampling, ..FitConfig::new(epochs, 8, 1, Optimizer::rmsprop(1e-2)) };
        let mut o = options(fit, checkpointing(dir, Resume::Require, 1e-9));
        o.models = Some(dir.into());
        o
    };
    let full = tempfile::tempdir().unwrap();
    let (reference, _) = fit(&model, &all, &with_models(full.path(), 6), false, &recorder(&|_| {})).unwrap();
    if sampling == Sampling::Balanced {
        // Other draws than the shuffle's, and the same ones again from the same seed.
        let other = tempfile::tempdir().unwrap();
        let shuffled = FitConfig::new(6, 8, 1, Optimizer::rmsprop(1e-2));
        let (s, _) = fit(&model, &all, &options(shuffled, None), false, &recorder(&|_| {})).unwrap();
        assert_ne!(s.history[0].loss, reference.history[0].loss, "balanced draws differ from the shuffle");
        let (_, _) = fit(&model, &all, &with_models(other.path(), 6), false, &recorder(&|_| {})).unwrap();
        assert_eq!(bytes(&other.path().join("last.onnx")), bytes(&full.path().join("last.onnx")), "seeded");
    }
    assert!(!reference.writes_each_epoch, "writes put off by their pacing are said to be");
    let every = tempfile::tempdir().unwrap();
    let o =
        options(FitConfig::new(3, 8, 1, Optimizer::rmsprop(1e-2)), checkpointing(every.path(), Resume::Require, 1.0));
    let (each, _) = fit(&model, &all, &o, false, &recorder(&|_| {})).unwrap();
    assert!(each.writes_each_epoch, "a share every write fits in: a checkpoint after each epoch");
    let improving = reference.history.windows(2).filter(|w| w[1].val_loss < w[0].val_loss).count();
    assert!(improving >= 3, "the toy's validation loss falls: {:?}", reference.history);
    for stop in [2, 4, 6] {
        let dir = tempfile::tempdir().unwrap();
        let o = with_models(dir.path(), 6);
        let killer = move |e: &Epoch| assert!(e.epoch != stop, "stopped at epoch {stop}");
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fit(&model, &all, &o, false, &recorder(&killer));
        }));
        assert!(stopped.is_err());
        let mut tr = Trainer::new(&model, Path::new("head.onnx"), &[4], 2, &opts()).unwrap();
        let c = o.checkpoint.as_ref().unwrap();
        let frozen = checkpoint::frozen_sha256(&tr);
        let r = checkpoint::restore(&c.path, &c.config, &frozen, &o.fit.optimizer, &mut tr, Resume::Require).unwrap();
        assert_eq!(r.unwrap().state.epoch, 1, "only the first epoch's checkpoint was written");
        if stop == 6 {
            // Fewer epochs than the run it continues had: its best model is out of reach.
            let err = fit(&model, &all, &with_models(dir.path(), 1), false, &recorder(&|_| {})).err().unwrap();
            assert!(err.to_string().contains("--epochs"), "{err}");
        }
        let (resumed, _) = fit(&model, &all, &o, false, &recorder(&|_| {})).unwrap();
        assert_eq!(resumed.history.len(), 6);
        // The continued run's time counts the checkpointed epoch at the time it took.
        assert_eq!(resumed.restored_seconds, resumed.history[0].seconds);
        assert!(resumed.restored_seconds > 0.0 && reference.restored_seconds == 0.0);
        for f in ["last.onnx", "best.onnx"] {
            assert!(bytes(&dir.path().join(f)) == bytes(&full.path().join(f)), "{f} after a stop at epoch {stop}");
        }
        assert_eq!(resumed.best.map(|b| b.0.epoch), reference.best.as_ref().map(|b| b.0.epoch));
    }
}
