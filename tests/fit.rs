//! `tlearn-fit` end to end on generated images with a tiny backbone: from class folders and from
//! a Kaggle flat folder, resumed after `kill -9` in each phase to the same bytes, K-fold, and the
//! refusals that keep a fit's folder its own.

mod common;
use common::*;
use std::path::Path;

/// A raw folder of two classes (`kaggle`: flat `cat.1.jpg` names) and the tiny backbone `tiny`.
fn setup(w: &Path, per_class: usize, kaggle: bool) {
    make_dataset(&w.join("raw"), &["cat", "dog"], per_class, kaggle);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    ok("tlearn-backbone", &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
}

/// `raw/` of two classes and `tiny.onnx` in `w`, the backbone not yet added.
fn setup_images(w: &Path, per_class: usize) {
    make_dataset(&w.join("raw"), &["cat", "dog"], per_class, false);
    tiny_classifier(&w.join("tiny.onnx"), 3);
}

/// What every fit here shares: the tiny backbone, short and quiet.
const SHORT: [&str; 10] =
    ["--backbone", "tiny", "--head-epochs", "2", "--batch", "8", "--explain", "0", "--device", "cpu"];

/// The fit's arguments: a short recipe on the tiny backbone.
fn fit_args<'a>(run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["raw", "--run", run, "--epochs", "3", "--patience", "2"];
    a.extend(SHORT);
    a.extend(extra);
    a
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_fit_from_class_folders_makes_a_model_that_every_stage_takes() {
    let w = workdir();
    let w = w.path();
    setup(w, 16, false);
    let out = ok("tlearn-fit", &fit_args("toy", &[]), w);
    assert!(out.contains("toy on test:") && out.contains("tlearn predict NEW_IMAGES/ --run toy"), "{out}");
    let fit = w.join("runs/toy");
    for f in ["fit.json", "run.json", "model.onnx", "model.onnx.json", "data/split.json", "head/run.json"] {
        assert!(fit.join(f).is_file(), "{f}");
    }
    let record = json(&fit.join("run.json"));
    assert_eq!(record["type"], "fit");
    assert_eq!(record["model_run"], "final");
    let (tune, last) = (json(&fit.join("tune/run.json")), json(&fit.join("final/run.json")));
    let best = tune["best_epoch"]["epoch"].as_u64().unwrap();
    assert_eq!(record["best_epoch"].as_u64(), Some(best));
    assert_eq!(last["epochs_run"].as_u64(), Some(best), "the final fit runs the validated length");
    assert_eq!(last["config"]["include_validation"], true);
    assert_eq!(bytes(&fit.join("model.onnx")), bytes(&fit.join("final/model.onnx")));
    // The fit's name opens the final model in evaluate and score.
    let summary = ok("tlearn-evaluate", &["--run", "toy", "--summary"], w);
    assert!(summary.contains("toy"), "{summary}");
    let metrics = json(&w.join("reports/toy/metrics.json"));
    assert_eq!(metrics["n_test"].as_u64(), Some(8), "a quarter of 32 images is tested");
    let balance = metrics["fit"]["balance"].as_str().unwrap();
    assert!(balance.starts_with("classes unweighted") && balance.contains("(10 vs 10)"), "{balance}");
    ok("tlearn-score", &["raw/cat", "--run", "toy", "--out", "cats.csv"], w);
    let scored = std::fs::read_to_string(w.join("cats.csv")).unwrap();
    assert_eq!(scored.lines().count(), 17, "{scored}");
    // The same command again: every phase is done, nothing changes.
    let model = bytes(&fit.join("model.onnx"));
    let page = || std::fs::metadata(w.join("reports/toy/index.html")).unwrap().modified().unwrap();
    let written = page();
    ok("tlearn-fit", &fit_args("toy", &[]), w);
    assert_eq!(bytes(&fit.join("model.onnx")), model);
    assert_eq!(page(), written, "the report of the same model on the same images is kept");
    // A test image more: the model stays, its report is made again.
    std::fs::copy(w.join("raw/cat/cat_0.png"), fit.join("data/test/cat/extra.png")).unwrap();
    ok("tlearn-fit", &fit_args("toy", &[]), w);
    assert_eq!(bytes(&fit.join("model.onnx")), model);
    assert_eq!(json(&w.join("reports/toy/metrics.json"))["n_test"].as_u64(), Some(9));
}

#[test]
fn a_fit_from_a_kaggle_flat_folder_keeps_the_validated_model_when_asked() {
    let w = workdir();
    let w = w.path();
    setup(w, 12, true);
    let out = ok("tlearn-fit", &fit_args("flat", &["--no-final-fit", "--flips", "--balance", "sample"]), w);
    // The k-fold command it suggests runs this recipe, not the defaults.
    let recipe = "--folds 5 --backbone tiny --size 32 --epochs 3 --patience 2 --batch 8 --head-epochs 2 \
                  --balance sample --flips --no-final-fit";
    assert!(out.contains(recipe), "{out}");
    let fit = w.join("runs/flat");
    let record = json(&fit.join("run.json"));
    assert_eq!(record["model_run"], "tune");
    assert!(!fit.join("final").exists(), "no final fit");
    assert_eq!(bytes(&fit.join("model.onnx")), bytes(&fit.join("tune/model.onnx")));
    let tune = json(&fit.join("tune/run.json"));
    assert_eq!(tune["config"]["tta"], serde_json::json!(["hflip", "vflip", "rot180"]));
    assert_eq!(tune["config"]["augment"]["vertical_flip"], true);
    // Classes drawn equally each epoch, the losses unweighted, in the head and the fine-tune.
    assert_eq!(tune["config"]["fit"]["sampling"], "balanced");
    assert!(tune["config"]["fit"].get("class_weight").is_none());
    assert_eq!(json(&fit.join("head/run.json"))["fit"]["sampling"], "balanced");
    let classes: Vec<String> = file_names(&fit.join("data/train"));
    assert_eq!(classes.len(), 2, "{classes:?}");
}

/// A fit of `extra`'s recipe killed as soon as each phase in `marks` has left its first durable
/// file, then run to the end: the same bytes as one never killed.
fn killed_in_each_phase(extra: &[&str], marks: &[&str], compared: &[&str]) {
    let w = workdir();
    let w = w.path();
    setup(w, 16, false);
    ok("tlearn-fit", &fit_args("whole", extra), w);
    let fit = w.join("runs/cut");
    let mut landed = 0;
    for m in marks {
        let p = fit.join(m);
        landed += kill_at("tlearn-fit", &fit_args("cut", extra), w, None, &|| p.exists()) as usize;
    }
    assert!(landed >= 3, "kills landed mid-fit: {landed}");
    ok("tlearn-fit", &fit_args("cut", extra), w);
    let whole = w.join("runs/whole");
    let models = compared.iter().filter(|f| f.ends_with(".onnx"));
    for f in ["model.onnx", "tune/best.onnx", "final/model.onnx", "head/head.onnx"].iter().chain(models) {
        assert!(bytes(&fit.join(f)) == bytes(&whole.join(f)), "{f} differs after kills");
    }
    let histories = ["tune/history.csv"].iter().chain(compared).filter(|h| h.ends_with(".csv"));
    for h in histories {
        assert_eq!(history_sans_time(&fit.join(h)), history_sans_time(&whole.join(h)), "{h}");
    }
    let preds = |r: &str| std::fs::read_to_string(w.join("reports").join(r).join("predictions.csv")).unwrap();
    assert_eq!(preds("cut").replace("runs/cut/", "runs/whole/"), preds("whole"));
}

const PHASES: [&str; 5] =
    ["data/split.json", "features", "head/checkpoint.onnx", "tune/checkpoint.onnx", "final/checkpoint.onnx"];

#[test]
fn a_fit_killed_in_each_phase_ends_with_the_uninterrupted_bytes() {
    killed_in_each_phase(&[], &PHASES, &[]);
}

#[test]
fn a_progressive_fit_killed_in_each_phase_ends_with_the_uninterrupted_bytes() {
    // Each fine-tune has two epochs at the smaller size before its own: kills after the first.
    let marks = [&PHASES[..3], &["tune/presize/checkpoint.onnx"], &PHASES[3..], &["final/presize/checkpoint.onnx"]];
    let compared = ["tune/presize/last.onnx", "tune/presize/history.csv", "final/presize/history.csv"];
    killed_in_each_phase(&["--progressive", "24:2", "--lr", "auto"], &marks.concat(), &compared);
}

/// The image input's (H, W) of the model at `p`.
fn input_hw(p: &Path) -> (i64, i64) {
    let m = tlearn::onnx::load_model(p).unwrap();
    let dims = tlearn::onnx::vi_shape(&tlearn::onnx::graph(&m).input[0]).1;
    (dims[1].unwrap(), dims[2].unwrap())
}

#[test]
fn progressive_resizing_starts_the_full_size_where_the_small_epochs_left_the_weights() {
    let w = workdir();
    let w = w.path();
    setup(w, 16, false);
    let out = ok("tlearn-fit", &fit_args("p", &["--progressive", "16:2", "--no-final-fit"]), w);
    assert!(out.contains("--progressive 16:2"), "the suggested k-fold command keeps the recipe: {out}");
    let tune = w.join("runs/p/tune");
    let record = json(&tune.join("run.json"));
    assert_eq!(record["config"]["progressive"], serde_json::json!({"size": 16, "epochs": 2}));
    let early = record["presize_seconds"].as_f64().unwrap();
    assert!(early > 0.0 && record["train_seconds"].as_f64().unwrap() > early, "{record}");
    assert_eq!(history_sans_time(&tune.join("presize/history.csv")).len(), 2, "two epochs at 16×16");
    assert_eq!(input_hw(&tune.join("presize/last.onnx")), (16, 16));
    assert_eq!(input_hw(&tune.join("model.onnx")), (32, 32), "the model runs at the fit's size");
    // The small epochs' last net, given the full size, fine-tuned plainly with the same recipe:
    // the same weights as the progressive run's epochs at 32.
    let mut start = tlearn::onnx::load_model(&tune.join("presize/last.onnx")).unwrap();
    let g = start.graph.as_mut().unwrap();
    tlearn::onnx::set_dims(&mut g.input[0], &[(1, 32), (2, 32)]);
    tlearn::onnx::save_model(&start, &w.join("start.onnx")).unwrap();
    let plain = ["start.onnx", "--data", "runs/p/data", "--run", "q", "--epochs", "3", "--patience", "2"];
    let recipe = ["--batch", "8", "--optimizer", "adam", "--lr", "1e-4", "--schedule", "cosine", "--explain", "0"];
    ok("tlearn-finetune", &[&plain[..], &recipe, &["--device", "cpu"]].concat(), w);
    let weights = |p: &Path| -> Vec<(String, Vec<f32>)> {
        let m = tlearn::onnx::load_model(p).unwrap();
        let g = tlearn::onnx::graph(&m);
        let floats = g.initializer.iter().filter(|t| t.data_type == 1);
        let mut v: Vec<_> = floats
            .map(|t| (t.name.clone(), tlearn::onnx::tensor_to_f32(t).unwrap().iter().copied().collect()))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    let (a, b) = (weights(&tune.join("last.onnx")), weights(&w.join("runs/q/last.onnx")));
    assert!(!a.is_empty() && a == b, "the epochs at 32 start from the small epochs' weights");
    assert_ne!(weights(&tune.join("presize/last.onnx")), a, "and train on from there");
    // Other early epochs are other settings: refused, not mixed with what was trained.
    let e = fails("tlearn-fit", &fit_args("p", &["--progressive", "16:1", "--no-final-fit"]), w);
    assert!(e.contains("--restart") && e.contains("progressive"), "{e}");
    // Not below the fit's size, nor with a cached trunk.
    let e = fails("tlearn-fit", &fit_args("big", &["--progressive", "32:1"]), w);
    assert!(e.contains("below the fit's --size 32"), "{e}");
    let trunk = ["start.onnx", "--data", "runs/p/data", "--run", "c", "--progressive", "16:1", "--cache-trunk"];
    let e = fails("tlearn-finetune", &trunk, w);
    assert!(e.contains("--cache-trunk"), "{e}");
    let warm = ["start.onnx", "--data", "runs/p/data", "--run", "c", "--progressive", "16:1", "--warmup-epochs", "1"];
    let e = fails("tlearn-finetune", &warm, w);
    assert!(e.contains("warm-up") && e.contains("1 early epochs"), "{e}");
    // A net that flattens its last map takes one size: refused before any image is read.
    ok("tlearn-convnet", &["mnist", "--out", "flat.onnx", "--classes", "2"], w);
    let e = fails("tlearn-finetune", &["flat.onnx", "--data", "runs/p/data", "--run", "f", "--progressive", "20:1"], w);
    assert!(e.contains("does not run on 20×20") && e.contains("pooled head"), "{e}");
    assert!(!w.join("runs/f").exists(), "nothing written");
}

#[test]
fn k_fold_tests_every_image_once_and_tables_the_folds() {
    let w = workdir();
    let w = w.path();
    setup(w, 9, false);
    ok("tlearn-fit", &fit_args("cv", &["--folds", "3", "--no-final-fit"]), w);
    let table = std::fs::read_to_string(w.join("reports/cv/folds.md")).unwrap();
    assert_eq!(table.lines().filter(|l| l.starts_with("| ") && !l.contains("fold |")).count(), 4, "{table}");
    assert!(table.contains("**mean ± sd** | 18 |"), "{table}");
    let page = std::fs::read_to_string(w.join("reports/cv/index.html")).unwrap();
    assert!(page.contains("<a href=\"fold-2/index.html\">fold 2</a>") && page.contains("mean ± sd"), "{page}");
    assert!(w.join("reports/cv/fold-2/index.html").is_file(), "the page links each fold's own report");
    let mut tested = vec![];
    for k in 1..=3 {
        let preds = std::fs::read_to_string(w.join(format!("reports/cv/fold-{k}/predictions.csv"))).unwrap();
        tested.extend(
            preds.lines().skip(1).map(|l| l.split(',').next().unwrap().rsplit('/').next().unwrap().to_string()),
        );
        assert_eq!(json(&w.join(format!("runs/cv/fold-{k}/run.json")))["type"], "fit");
    }
    tested.sort();
    let before = tested.len();
    tested.dedup();
    assert_eq!((before, tested.len()), (18, 18), "each image tested exactly once");
    // A fold is a run of its own; the K-fold run itself says how to use one.
    ok("tlearn-evaluate", &["--runs", "runs/cv", "--run", "fold-2", "--reports", "reports/cv", "--summary"], w);
    let err = fails("tlearn-score", &["raw/cat", "--run", "cv"], w);
    assert!(err.contains("fold-1"), "{err}");
}

#[test]
fn a_fit_refuses_other_settings_and_folders_it_did_not_write() {
    let w = workdir();
    let w = w.path();
    setup(w, 8, false);
    std::fs::create_dir_all(w.join("runs/mine")).unwrap();
    std::fs::write(w.join("runs/mine/notes.txt"), "mine").unwrap();
    let err = fails("tlearn-fit", &fit_args("mine", &[]), w);
    assert!(err.contains("notes.txt") && err.contains("another --run"), "{err}");
    ok("tlearn-fit", &fit_args("toy", &["--no-final-fit"]), w);
    let err = fails("tlearn-fit", &fit_args("toy", &["--no-final-fit", "--lr", "0.001"]), w);
    assert!(err.contains("lr: 0.0001 → 0.001") && err.contains("--restart"), "{err}");
    std::fs::write(w.join("runs/toy/keep.txt"), "not the fit's").unwrap();
    ok("tlearn-fit", &fit_args("toy", &["--no-final-fit", "--lr", "0.001", "--restart"]), w);
    assert!(w.join("runs/toy/keep.txt").is_file(), "--restart deletes only what a fit wrote");
    assert_eq!(json(&w.join("runs/toy/fit.json"))["lr"], 0.001);
    std::fs::create_dir_all(w.join("split/test")).unwrap();
    make_dataset(&w.join("split/train"), &["cat", "dog"], 4, false);
    let err = fails("tlearn-fit", &["split", "--run", "nv", "--backbone", "tiny"], w);
    assert!(err.contains("no validation images") && err.contains("validation/"), "{err}");
    let one = w.join("one");
    make_dataset(&one, &["cat"], 6, false);
    let err = fails("tlearn-fit", &["one", "--run", "one", "--backbone", "tiny"], w);
    assert!(err.contains("at least two"), "{err}");
}

#[test]
fn an_installed_tlearn_fits_and_predicts_in_a_folder_of_the_users() {
    let d = tempfile::tempdir().unwrap();
    let (bins, user) = (d.path().join("bin"), d.path().join("photos"));
    install(&bins, &["tlearn", "tlearn-backbone", "tlearn-fit", "tlearn-predict"]);
    std::fs::create_dir_all(&user).unwrap();
    setup_images(&user, 12);
    make_dataset(&user.join("new"), &["cat", "dog"], 3, true);
    let tlearn = bins.join("tlearn");
    let add = ["backbone", "add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"];
    assert!(run_with(&tlearn, &add, &user, &[]).status.success());
    let mut fit = vec!["fit"];
    fit.extend(fit_args("mine", &["--no-final-fit"]));
    let o = run_with(&tlearn, &fit, &user, &[]);
    assert!(o.status.success() && text(&o.stdout).contains("tlearn predict NEW_IMAGES/ --run mine"));
    let o = run_with(&tlearn, &["predict", "new", "--run", "mine", "--device", "cpu"], &user, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 7, "a header and six images, piped as CSV: {out}");
    assert!(
        out.lines().skip(1).all(|l| l.starts_with("new/") && (l.contains(",cat,") || l.contains(",dog,"))),
        "{out}"
    );
}

#[test]
fn lr_auto_sweeps_once_and_the_final_fit_keeps_the_rate() {
    let w = workdir();
    let w = w.path();
    setup(w, 12, false);
    let out = ok("tlearn-fit", &fit_args("auto", &["--lr", "auto"]), w);
    assert!(out.contains("deployable model"), "{out}");
    let fit = w.join("runs/auto");
    let tune = json(&fit.join("tune/run.json"));
    let chosen = tune["config"]["lr_auto"]["lr"].as_f64().expect("the range test's choice is recorded");
    let rate = |r: &serde_json::Value| r["config"]["fit"]["optimizer"]["lr"].as_f64().unwrap();
    assert_eq!(rate(&tune), chosen);
    assert_eq!(rate(&json(&fit.join("final/run.json"))), chosen, "the final fit trains at the chosen rate");
    assert_eq!(json(&fit.join("fit.json"))["lr_auto"], true);
    let model = bytes(&fit.join("model.onnx"));
    ok("tlearn-fit", &fit_args("auto", &["--lr", "auto"]), w);
    assert_eq!(bytes(&fit.join("model.onnx")), model, "a rerun keeps the first choice");
}

#[test]
fn a_length_chosen_before_is_the_validated_fits_final_fit_without_the_validated_pass() {
    let w = workdir();
    let w = w.path();
    setup(w, 12, false);
    ok("tlearn-fit", &fit_args("both", &[]), w);
    let both = w.join("runs/both");
    let best = json(&both.join("run.json"))["best_epoch"].as_u64().unwrap().to_string();
    let fixed_args = |run, extra: &[&str]| {
        let mut a = vec!["raw", "--run", run, "--final-epochs", best.as_str()];
        a.extend(SHORT);
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args = fixed_args("fixed", &[]);
    let out = ok("tlearn-fit", &args.iter().map(String::as_str).collect::<Vec<_>>(), w);
    assert!(out.contains(&format!("--final-epochs {best}")), "the k-fold command keeps the length: {out}");
    let fixed = w.join("runs/fixed");
    assert!(!fixed.join("tune").exists(), "no validated fine-tune");
    let record = json(&fixed.join("run.json"));
    assert_eq!(record["model_run"], "final");
    assert!(record.get("best_epoch").is_none(), "{record}");
    assert_eq!(json(&fixed.join("final/run.json"))["epochs_run"].to_string(), best);
    for f in ["model.onnx", "final/model.onnx", "final/last.onnx", "head/head.onnx"] {
        assert!(bytes(&fixed.join(f)) == bytes(&both.join(f)), "{f}: the same final fit as the validated fit's");
    }
    // A budget plans the final fit alone, the length asked its cap.
    let args = fixed_args("planned", &["--budget", "1h"]);
    ok("tlearn-fit", &args.iter().map(String::as_str).collect::<Vec<_>>(), w);
    let plan = json(&w.join("runs/planned/plan.json"));
    assert_eq!(plan["epochs"].to_string(), best, "{plan}");
    assert!(plan["epoch_seconds"].as_f64().unwrap() > 0.0, "{plan}");
    // With --no-final-fit (or --epochs, the validated fine-tune's) it is refused before anything is written.
    for other in [["--no-final-fit"], ["--patience"]] {
        let mut a = fixed_args("refused", &other);
        if other[0] == "--patience" {
            a.push("2".into());
        }
        let e = fails("tlearn-fit", &a.iter().map(String::as_str).collect::<Vec<_>>(), w);
        assert!(e.contains("--final-epochs") && e.contains(other[0]), "{e}");
    }
    assert!(!w.join("runs/refused").exists());
    let zero = fails("tlearn-fit", &["raw", "--run", "zero", "--backbone", "tiny", "--final-epochs", "0"], w);
    assert!(zero.contains("final-epochs") && zero.contains("at least one epoch"), "{zero}");
}

#[test]
fn a_freeze_stride_reaches_each_fine_tune_which_names_the_strides_there_are() {
    let w = workdir();
    let w = w.path();
    setup(w, 8, false);
    // The tiny backbone: a 3×3 convolution at 32×32, then a pool to 16×16 (stride 2).
    ok("tlearn-fit", &fit_args("frozen", &["--freeze-stride", "2"]), w);
    for phase in ["tune", "final"] {
        let r = json(&w.join("runs/frozen").join(phase).join("run.json"));
        assert_eq!(r["config"]["freeze_stride"], 2, "{phase}: {r}");
        let (trained, total) = (r["trainable_params"].as_u64().unwrap(), r["total_params"].as_u64().unwrap());
        // The convolution's kernel and bias, beside the three caffe means that never train.
        assert_eq!(total - trained, 8 * 3 * 3 * 3 + 8 + 3, "{phase}: {r}");
    }
    // Refused on the backbone before the fit records its settings or extracts a feature: the same
    // run then starts with a stride it does reach, no --restart needed.
    let e = fails("tlearn-fit", &fit_args("far", &["--freeze-stride", "4"]), w);
    assert!(e.contains("freeze-stride") && e.contains("reaches stride 2 at most"), "{e}");
    assert!(!w.join("runs/far").exists(), "a refused fit wrote {}", w.join("runs/far").display());
    let e = fails("tlearn-fit", &fit_args("far", &["--size", "1"]), w);
    assert!(e.contains("total stride") && !w.join("runs/far").exists(), "{e}");
    ok("tlearn-fit", &fit_args("far", &["--freeze-stride", "2", "--no-final-fit"]), w);
}
