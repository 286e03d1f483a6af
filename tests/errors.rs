//! The first-run mistakes, each refused with a message that says how to go on: an unknown
//! backbone or run name (the nearest name, what there is), data that is not split (or one of its
//! splits, or a file), a model that is no classifier of images (a backbone, a head), a model whose
//! class names are not the data's, a feature folder that is none (or another dataset's, another
//! backbone's), and `--run` required outside the make targets.

mod common;
use common::*;
use std::path::Path;

/// A deployable model of the head run `toy` (classes cat, dog): `runs/toy/model.onnx`.
fn exported(w: &Path) {
    trained(w, &["cat", "dog"], 8);
    ok("tlearn-score", &["--run", "toy", "--export-only"], w);
}

/// A split dataset `data/<name>` of `classes` (made from `raw-<name>/`).
fn split_data(w: &Path, name: &str, classes: &[&str]) {
    make_dataset(&w.join(format!("raw-{name}")), classes, 8, false);
    ok("tlearn-data", &["split", &format!("raw-{name}"), &format!("data/{name}"), "--seed", "1"], w);
}

#[test]
fn an_unknown_backbone_names_the_nearest_and_how_to_list_and_add_one() {
    let w = workdir();
    let w = w.path();
    for args in [&["fetch", "efficientnet-lite"][..], &["summary", "efficientnet-lite"]] {
        let err = fails("tlearn-backbone", args, w);
        assert!(err.contains("unknown backbone `efficientnet-lite`; did you mean `efficientnet-lite0`?"), "{err}");
        assert!(err.contains("`tlearn-backbone list`") && err.contains("`tlearn-backbone add MODEL.onnx"), "{err}");
    }
    // Nothing near: no guess, the way on all the same; another --onnx-dir is named in the commands.
    let err = fails("tlearn-backbone", &["fetch", "mobilenet", "--onnx-dir", "elsewhere"], w);
    assert!(err.contains("unknown backbone `mobilenet`: `tlearn-backbone list --onnx-dir elsewhere`"), "{err}");
    assert!(!err.contains("did you mean"), "{err}");

    // Through extraction: user backbones and quantized ones are names too.
    prepared(w, &["cat", "dog"], 6);
    let extract = |bb: &str| fails("tlearn-extract", &["--data", "data/toy", "--backbone", bb, "--device", "cpu"], w);
    let err = extract("tinny");
    assert!(err.contains("unknown backbone `tinny`; did you mean `tiny`?"), "{err}");
    let err = extract("efficientnet-lite");
    assert!(err.contains("did you mean `efficientnet-lite0`?"), "{err}");
    // A known name not fetched yet, and an int8 name not made yet, say what makes them.
    let err = extract("vgg16");
    assert!(err.contains("not fetched") && err.contains("`tlearn-backbone fetch vgg16`"), "{err}");
    let err = extract("tiny-int8");
    assert!(err.contains("int8 backbone not made yet; run `tlearn-backbone quantize tiny --calibrate DATA`"), "{err}");
    let err = fails("tlearn-backbone", &["quantize", "tiyn", "--calibrate", "data/toy"], w);
    assert!(err.contains("unknown backbone `tiyn`; did you mean `tiny`?"), "{err}");
    // A classifier file given as a backbone: it has to be registered (cut) first.
    let err = extract("tiny.onnx");
    assert!(
        err.contains("tiny.onnx: no sidecar tiny.onnx.json") && err.contains("`tlearn-backbone add tiny.onnx --output")
    );
    let err = extract("gone.onnx");
    assert!(err.contains("gone.onnx: no such file"), "{err}");
}

#[test]
fn data_that_is_not_a_split_dataset_says_what_to_give() {
    let w = workdir();
    let w = w.path();
    prepared(w, &["cat", "dog"], 6);
    tiny_classifier(&w.join("net.onnx"), 1);
    let extract = |data: &str| fails("tlearn-extract", &["--data", data, "--backbone", "tiny", "--device", "cpu"], w);
    let finetune = |data: &str| fails("tlearn-finetune", &["net.onnx", "--data", data, "--run", "n"], w);
    // Class folders of raw images: how to split them, or to train straight from them.
    let unsplit =
        "raw: not split (no train/ folder): split it with `tlearn-data split raw data/raw` or use `tlearn fit raw --run raw`";
    for err in [extract("raw"), finetune("raw")] {
        assert!(err.contains(unsplit), "{err}");
    }
    // Kaggle's flat `class.N.jpg` names are raw data too.
    make_dataset(&w.join("flat"), &["cat", "dog"], 3, true);
    assert!(extract("flat").contains("`tlearn-data split flat data/flat`"));
    // One split of a dataset given as the dataset.
    for split in ["train", "test"] {
        let err = extract(&format!("data/toy/{split}"));
        assert!(err.contains(&format!("the `{split}` part of the split dataset data/toy: give the dataset itself")));
    }
    assert!(finetune("data/toy/train").contains("give the dataset itself, data/toy"));
    // A file, a folder that is not there, a folder without images.
    let err = extract("data/toy/train/cat/cat_0.png");
    assert!(err.contains("cat_0.png: a file, not a folder; give a split dataset"), "{err}");
    assert!(extract("nowhere").contains("nowhere: no such folder; give a split dataset"));
    std::fs::create_dir_all(w.join("empty/a")).unwrap();
    assert!(extract("empty").contains("empty/train: no such split folder"));
    assert!(!w.join("runs/n").exists() && !w.join("features/raw").exists(), "nothing written");
}

#[test]
fn an_unknown_run_names_the_runs_there_or_how_to_make_one() {
    let w = workdir();
    let w = w.path();
    exported(w);
    let near = "unknown run `tyo` in runs: did you mean `toy`? its runs: toy";
    for err in [
        fails("tlearn-evaluate", &["--run", "tyo"], w),
        fails("tlearn-evaluate", &["--run", "tyo", "--summary"], w),
        fails("tlearn-score", &["data/toy/test", "--run", "tyo"], w),
        fails("tlearn-finetune", &["runs/tyo/model.onnx", "--data", "data/toy", "--run", "ft"], w),
    ] {
        assert!(err.contains(near), "{err}");
    }
    // A run one level down (a K-fold fit's fold, a comparison's run): where it is and how to name it.
    copy_tree(&w.join("runs/toy"), &w.join("runs/cv/fold-2"));
    let err = fails("tlearn-evaluate", &["--run", "fold-2"], w);
    assert!(err.contains("a run `fold-2` is in runs/cv: give --runs runs/cv --run fold-2"), "{err}");
    ok("tlearn-evaluate", &["--runs", "runs/cv", "--run", "fold-2", "--reports", "reports/cv"], w);
    std::fs::remove_dir_all(w.join("runs/cv")).unwrap();
    // A folder without a record is no run: not listed.
    std::fs::create_dir_all(w.join("runs/scratch")).unwrap();
    let err = fails("tlearn-evaluate", &["--run", "nope"], w);
    assert!(err.contains("unknown run `nope` in runs: its runs: toy") && !err.contains("scratch"), "{err}");
    // An empty (or missing) runs folder: how to train one, and that --runs names another.
    for runs in ["elsewhere", "runs/scratch"] {
        let err = fails("tlearn-score", &["data/toy/test", "--run", "toy", "--runs", runs], w);
        assert!(
            err.contains(&format!(
                "unknown run `toy`: {runs} holds no runs; train one with `tlearn fit DATA --run NAME`"
            )),
            "{err}"
        );
        assert!(err.contains("give --runs DIR where yours are"), "{err}");
    }
}

#[test]
fn a_backbone_or_a_head_is_refused_as_a_model_to_fine_tune() {
    let w = workdir();
    let w = w.path();
    exported(w);
    let ft = |model: &str| fails("tlearn-finetune", &[model, "--data", "data/toy", "--run", "ft", "--epochs", "1"], w);
    let backbone = "a backbone (feature extractor) without a classifier: use `tlearn fit data/toy --backbone tiny`";
    let err = ft("onnx/tiny.onnx");
    assert!(err.contains(&format!("onnx/tiny.onnx: {backbone}")), "{err}");
    assert!(err.contains("tlearn-head --run NAME, then tlearn-score --run NAME --export-only"), "{err}");
    // Without its sidecar, the feature map it outputs tells.
    std::fs::copy(w.join("onnx/tiny.onnx"), w.join("cut.onnx")).unwrap();
    let err = ft("cut.onnx");
    assert!(err.contains("cut.onnx: a backbone (feature extractor) without a classifier"), "{err}");
    assert!(err.contains("`tlearn fit data/toy --backbone NAME`"), "{err}");
    // A head reads features: the run's deployable model is what to fine-tune.
    let err = ft("runs/toy/head.onnx");
    assert!(err.contains("a head (it reads a backbone's features, not images)"), "{err}");
    assert!(err.contains("runs/toy/model.onnx (`tlearn-score --run toy --runs runs --export-only` makes it)"), "{err}");
    // …and scoring with anything but a deployable model says which to give.
    let err = fails("tlearn-score", &["data/toy/test", "--model", "runs/toy/head.onnx", "--out", "s.csv"], w);
    assert!(err.contains("not a deployable tlearn classifier") && err.contains("--export-only"), "{err}");
    assert!(!w.join("runs/ft").exists() && !w.join("s.csv").exists());
}

#[test]
fn a_models_class_names_must_be_the_datas_unless_relabelled() {
    let w = workdir();
    let w = w.path();
    exported(w);
    split_data(w, "other", &["ant", "bee"]);
    let ft = ["runs/toy/model.onnx", "--data", "data/other", "--run", "ft", "--epochs", "1", "--explain", "0"];
    let err = fails("tlearn-finetune", &ft, w);
    assert!(err.contains("data/other/train: other classes than the model's"), "{err}");
    assert!(
        err.contains("runs/toy/model.onnx has [cat, dog], the data [ant, bee]") && err.contains("--relabel"),
        "{err}"
    );
    assert!(!w.join("runs/ft").exists(), "nothing trained");
    // --relabel: the data's names, said in the log and recorded.
    let o = run("tlearn-finetune", &[&ft[..], &["--relabel"]].concat(), w);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && log.contains("--relabel") && log.contains("(ant, bee)"), "{log}");
    let record = json(&w.join("runs/ft/run.json"));
    assert_eq!(record["classes"], serde_json::json!(["ant", "bee"]));
    assert_eq!(record["config"]["relabel"], true);
    // The relabelled model names the data's classes: it fine-tunes on them without --relabel.
    let again = ["runs/ft/model.onnx", "--data", "data/other", "--run", "ft2", "--epochs", "1", "--explain", "0"];
    ok("tlearn-finetune", &again, w);
    // Another number of classes is refused as before, both lists named.
    split_data(w, "three", &["ant", "bee", "cow"]);
    let err =
        fails("tlearn-finetune", &["runs/toy/model.onnx", "--data", "data/three", "--run", "ft3", "--relabel"], w);
    assert!(err.contains("(the model's: cat, dog; the data's: ant, bee, cow)"), "{err}");
}

#[test]
fn a_folder_given_as_features_that_holds_none_says_which_to_give() {
    let w = workdir();
    let w = w.path();
    let feats = trained(w, &["cat", "dog"], 8);
    let head = |f: &str| fails("tlearn-head", &["--features", f, "--run", "h", "--epochs", "1"], w);
    // The folder above the feature folders, and a dataset whose features were never extracted.
    let err = head("features/toy");
    assert!(
        err.contains("holds feature folders (tiny-32), one per backbone and size: give one, e.g. features/toy/tiny-32")
    );
    let err = head("data/toy");
    assert!(err.contains(
        "data/toy: a dataset, not a feature folder: extract its features with `tlearn-extract --data data/toy"
    ));
    // Another dataset's features (other classes), and another backbone's.
    split_data(w, "other", &["ant", "bee", "cow"]);
    ok("tlearn-extract", &["--data", "data/other", "--backbone", "tiny", "--device", "cpu"], w);
    let err = fails("tlearn-evaluate", &["--run", "toy", "--features", "features/other/tiny-32"], w);
    assert!(err.contains("differ from the run's") && err.contains(&format!("by default its own, {feats}")), "{err}");
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--size", "48", "--device", "cpu"], w);
    let err = fails("tlearn-evaluate", &["--run", "toy", "--features", "features/toy/tiny-48"], w);
    assert!(err.contains("features of tiny at 48, but the run was trained on tiny at 32"), "{err}");
    assert!(err.contains("`tlearn-extract --backbone tiny --size 32`"), "{err}");
}

#[test]
fn run_names_are_required_outside_the_make_targets() {
    let w = workdir();
    let w = w.path();
    let feats = trained(w, &["cat", "dog"], 6);
    for (bin, args) in [
        ("tlearn-head", &["--features", feats.as_str()][..]),
        ("tlearn-evaluate", &[]),
        ("tlearn-evaluate", &["--summary"]),
        ("tlearn-score", &["data/toy/test"]),
    ] {
        let err = fails(bin, args, w);
        assert!(err.contains("required") && err.contains("--run <RUN>"), "{bin}: {err}");
        let help = ok(bin, &["--help"], w);
        assert!(help.contains("required"), "{bin} --help: {help}");
    }
    assert!(!w.join("runs/demo").exists() && !w.join("reports/demo").exists(), "no run named for the user");
    // A deployable model alone needs somewhere to write; its merge subcommand needs no run.
    ok("tlearn-score", &["--run", "toy", "--export-only"], w);
    let err = fails("tlearn-score", &["data/toy/test", "--model", "runs/toy/model.onnx"], w);
    assert!(err.contains("give --out FILE"), "{err}");
    ok("tlearn-score", &["data/toy/test", "--model", "runs/toy/model.onnx", "--out", "m.csv"], w);
    let merge = run("tlearn-score", &["merge", "--out", "all.csv", "m.csv"], w);
    assert!(!String::from_utf8_lossy(&merge.stderr).contains("--run"), "merge takes no run");
    // tlearn-finetune's default run (the model's file stem) never lands on another run.
    tiny_classifier(&w.join("toy.onnx"), 1);
    let err = fails("tlearn-finetune", &["toy.onnx", "--data", "data/toy", "--epochs", "1"], w);
    assert!(err.contains("the default run (the model's file name) is taken: runs/toy holds another run"), "{err}");
    assert!(err.contains("--run NAME"), "{err}");
    let help = ok("tlearn-finetune", &["--help"], w);
    assert!(help.contains("while no other run"), "{help}");
}

/// Every call of a stage that takes a run, in the Makefile and mk/*.mk, names it: the binaries
/// have no default run, the make targets pass `RUN` (default demo).
#[test]
fn the_make_targets_name_every_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("Makefile")];
    for e in std::fs::read_dir(root.join("mk")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut calls = 0;
    for f in files.iter().filter(|f| f.file_name().unwrap() == "Makefile" || f.extension().unwrap() == "mk") {
        // Recipe lines (a tab first) with their continuation lines joined; each command on its own.
        let text = std::fs::read_to_string(f).unwrap().replace("\\\n", " ");
        let recipes = text.lines().filter(|l| l.starts_with('\t'));
        for cmd in recipes.flat_map(|l| l.split("&&").flat_map(|c| c.split("||")).flat_map(|c| c.split(';'))) {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let stage = ["/tlearn-head", "/tlearn-evaluate", "/tlearn-score"];
            let Some(at) = words.iter().position(|w| stage.iter().any(|s| w.ends_with(s))) else { continue };
            let args = &words[at + 1..];
            if args.contains(&"merge") || args.contains(&"--model") {
                continue;
            }
            calls += 1;
            assert!(args.contains(&"--run"), "{}: `{}` names no run", f.display(), cmd.trim());
        }
    }
    assert!(calls >= 10, "the check sees the make targets' calls ({calls})");
}
