//! Scoring's outputs and inputs as a user gives them: globs and lists, top-k, JSON lines and the
//! summary, the binary threshold (from `tests/pipeline.rs`); an output that is a link, a FIFO or
//! standard output stays what it is; a list line is a path as written; a deployable model older
//! than its run's head is never used.

mod common;

use common::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn score(w: &Path, extra: &[&str]) -> std::process::Output {
    run("tlearn-score", &[&["--run", "toy", "--device", "cpu"][..], extra].concat(), w)
}

/// The rows of a scores CSV (header dropped), sorted.
fn rows(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text.lines().skip(1).map(String::from).collect();
    v.sort();
    v
}

#[test]
fn outputs_that_are_links_fifos_or_stdout_stay_what_they_are() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b"], 6);
    assert!(score(w, &["data/toy/test", "--out", "plain.csv"]).status.success());
    let want = rows(&std::fs::read_to_string(w.join("plain.csv")).unwrap());
    assert!(!want.is_empty());

    // A link: written at its target, the link kept.
    std::fs::create_dir(w.join("store")).unwrap();
    std::os::unix::fs::symlink("store/real.csv", w.join("link.csv")).unwrap();
    assert!(score(w, &["data/toy/test", "--out", "link.csv"]).status.success());
    assert!(std::fs::symlink_metadata(w.join("link.csv")).unwrap().file_type().is_symlink(), "the link survives");
    assert_eq!(rows(&std::fs::read_to_string(w.join("store/real.csv")).unwrap()), want);
    // A link into a folder that does not exist is refused, naming where it points.
    std::os::unix::fs::symlink("store/none/x.csv", w.join("dangling.csv")).unwrap();
    let o = score(w, &["data/toy/test", "--out", "dangling.csv"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("store/none/x.csv") && err.contains("does not exist"), "{err}");
    assert!(!w.join("store/none").exists(), "no folder made where a link points");

    // A FIFO: written as a stream to its reader, still a FIFO, nothing written beside it.
    let fifo = w.join("scores.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    assert!(score(w, &["data/toy/test", "--out", "scores.fifo"]).status.success());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO survives");
    assert_eq!(rows(&reader.join().unwrap()), want);
    let beside: Vec<String> = file_names(w).into_iter().filter(|n| n.starts_with("scores.fifo")).collect();
    assert_eq!(beside, ["scores.fifo"], "no lock, journal or summary beside a stream");

    // `-` and /dev/stdout: the rows on standard output, the report on standard error.
    for out in ["-", "/dev/stdout"] {
        let o = score(w, &["data/toy/test", "--out", out]);
        assert!(o.status.success());
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(rows(&stdout), want, "{out}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("scored"), "the report goes to stderr");
    }
    // /dev/stdout when standard output is a file opened for appending: appended to, as a shell
    // redirection `>> log.csv` asks (never written from the file's start).
    std::fs::write(w.join("log.csv"), "earlier line\n").unwrap();
    let log = std::fs::OpenOptions::new().append(true).open(w.join("log.csv")).unwrap();
    let status = std::process::Command::new(bin("tlearn-score"))
        .args(["--run", "toy", "--device", "cpu", "data/toy/test", "--out", "/dev/stdout"])
        .current_dir(w)
        .stdout(log)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(w.join("log.csv")).unwrap();
    assert!(text.starts_with("earlier line\npath,"), "{text}");
    assert_eq!(rows(text.strip_prefix("earlier line\n").unwrap()), want);
    assert!(!w.join("-").exists() && !w.join("-.summary.json").exists());

    // A folder where the journal would go that tlearn did not make: refused, kept.
    std::fs::create_dir(w.join("mine.csv.partial")).unwrap();
    std::fs::write(w.join("mine.csv.partial/notes.json"), b"{}").unwrap();
    let o = score(w, &["data/toy/test", "--out", "mine.csv"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("mine.csv.partial") && err.contains("did not write"), "{err}");
    assert!(w.join("mine.csv.partial/notes.json").is_file());

    // The merge of shards writes to a stream as well.
    for i in 0..2 {
        let (shard, out) = (format!("{i}/2"), format!("part{i}.csv"));
        assert!(score(w, &["data/toy/test", "--shard", &shard, "--out", &out]).status.success());
    }
    let o = run("tlearn-score", &["merge", "--out", "-", "part0.csv", "part1.csv"], w);
    assert!(o.status.success());
    assert_eq!(rows(&String::from_utf8_lossy(&o.stdout)), want);
}

#[test]
fn a_list_line_is_a_path_as_written() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b"], 6);
    // Names that trimming or comment rules would change, and one that is not UTF-8.
    let src = std::fs::read_dir(w.join("data/toy/test/a")).unwrap().next().unwrap().unwrap().path();
    let imgs = w.join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    let raw = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    let names: Vec<&std::ffi::OsStr> =
        vec!["dup.png".as_ref(), "dup.png ".as_ref(), "#hash.png".as_ref(), " lead.png".as_ref(), raw];
    for n in &names {
        std::fs::copy(&src, imgs.join(n)).unwrap();
    }
    let mut list = vec![];
    for n in &names {
        list.extend_from_slice(b"imgs/");
        list.extend_from_slice(n.as_bytes());
        list.extend_from_slice(b"\n");
    }
    list.extend_from_slice(b"\nimgs/missing.png\r\n");
    std::fs::write(w.join("list.txt"), &list).unwrap();
    let o = score(w, &["--list", "list.txt", "--out", "s.csv"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("scored 5 images"), "every listed file, each under its own name: {out}");
    assert!(out.contains("list.txt line 7") && out.contains("imgs/missing.png is not a file"), "{out}");
    let csv = std::fs::read_to_string(w.join("s.csv")).unwrap();
    let mut paths: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, ["imgs/ lead.png", "imgs/#hash.png", "imgs/caf\\xe9.png", "imgs/dup.png", "imgs/dup.png "]);
    // A folder's files that are not named as images are left out and reported.
    std::fs::write(imgs.join("notes.txt"), b"not an image").unwrap();
    let o = score(w, &["imgs", "--out", "d.csv"]);
    // (`dup.png ` too: its extension is `png `.)
    assert!(String::from_utf8_lossy(&o.stdout).contains("skipped 2 file(s) not named as images"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("notes.txt: skipped (not named") && err.contains("dup.png : skipped (not named"), "{err}");
    // The scores file is a list for the next run: the same files, the same rows.
    let o = score(w, &["--list", "s.csv", "--out", "again.csv"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&std::fs::read_to_string(w.join("again.csv")).unwrap()), rows(&csv));
    // So is a JSON-lines one.
    assert!(score(w, &["--list", "list.txt", "--out", "s.jsonl"]).status.success());
    assert!(score(w, &["--list", "s.jsonl", "--out", "again2.csv"]).status.success());
    assert_eq!(rows(&std::fs::read_to_string(w.join("again2.csv")).unwrap()), rows(&csv));
}

#[test]
fn a_deployable_model_older_than_its_head_is_never_used() {
    let w = workdir();
    let w = w.path();
    let feats = trained(w, &["a", "b"], 6);
    assert!(score(w, &["--export-only"]).status.success());
    // The head retrained: runs/toy/model.onnx now describes the old one.
    ok("tlearn-head", &["--features", &feats, "--run", "toy", "--epochs", "3", "--units", "8"], w);
    let ft = ["runs/toy/model.onnx", "--data", "data/toy", "--run", "ft", "--epochs", "1", "--explain", "0"];
    for err in [
        fails("tlearn-finetune", &ft, w),
        fails(
            "tlearn-score",
            &["data/toy/test", "--model", "runs/toy/model.onnx", "--device", "cpu", "--out", "x.csv"],
            w,
        ),
    ] {
        assert!(err.contains("runs/toy/model.onnx") && err.contains("stale"), "{err}");
        assert!(err.contains("tlearn-score --run toy --runs runs --export-only"), "{err}");
    }
    assert!(!w.join("runs/ft").exists(), "nothing trained");
    // Scoring the run rebuilds it; then it is current everywhere.
    assert!(score(w, &["data/toy/test", "--out", "s.csv"]).status.success());
    ok("tlearn-finetune", &ft, w);
    // A fine-tune's run is scored by its name, as a head run is.
    let by_run = ok("tlearn-score", &["data/toy/test", "--run", "ft", "--device", "cpu", "--out", "r.csv"], w);
    ok("tlearn-score", &["data/toy/test", "--model", "runs/ft/model.onnx", "--device", "cpu", "--out", "m.csv"], w);
    assert!(by_run.contains("scored"), "{by_run}");
    let read = |f: &str| std::fs::read_to_string(w.join(f)).unwrap();
    assert_eq!(read("r.csv"), read("m.csv"));
}

#[test]
fn score_takes_globs_and_lists_writes_top_k_jsonl_and_a_summary() {
    let w = workdir();
    let w = w.path();
    let feats = common::prepared(w, &["a", "b", "c"], 8);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", &feats, "--run", "m", "--head", "logistic"], w);
    let score = |extra: &[&str]| run("tlearn-score", &[&["--run", "m", "--device", "cpu"][..], extra].concat(), w);
    // A glob and a list file (with a blank line and a missing entry) together.
    let listed = std::fs::read_dir(w.join("data/toy/test/b")).unwrap().next().unwrap().unwrap().path();
    let list = format!("\n{}\nnot/there.png\n", listed.display());
    std::fs::write(w.join("list.txt"), list).unwrap();
    let o = score(&["data/toy/test/a/*.png", "--list", "list.txt", "--out", "s.csv", "--top-k", "2"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n_a = std::fs::read_dir(w.join("data/toy/test/a")).unwrap().count();
    assert!(out.contains(&format!("scored {} images", n_a + 1)), "{out}");
    assert!(out.contains("unreadable: 1") && out.contains("not/there.png"), "{out}");
    let csv = read(&w.join("s.csv"));
    assert_eq!(csv.lines().next().unwrap(), "path,class,probability,class_2,probability_2,p_a,p_b,p_c");
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (p1, p2): (f64, f64) = (f[2].parse().unwrap(), f[4].parse().unwrap());
        assert!(p1 >= p2 && f[1] != f[3], "ranked, distinct: {line}");
    }
    let summary: serde_json::Value = serde_json::from_str(&read(&w.join("s.csv.summary.json"))).unwrap();
    assert_eq!(summary["scored"], n_a + 1);
    assert_eq!(summary["unreadable"].as_array().unwrap().len(), 1);
    // JSON lines, chosen by the extension; class names come from the run, not the folder.
    let o = score(&["data/toy/test", "--out", "s.jsonl", "--top-k", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> =
        read(&w.join("s.jsonl")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(r["top"].as_array().unwrap().len(), 3);
        assert_eq!(r["top"][0]["class"], r["class"]);
        let total: f64 = r["probs"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{r}");
    }
    // Bad settings are refused with the reason.
    let e = String::from_utf8_lossy(&score(&["data/toy/test", "--top-k", "4"]).stderr).into_owned();
    assert!(e.contains("top-k") && e.contains("1..=3"), "{e}");
    let e = String::from_utf8_lossy(&score(&["data/toy/test", "--threshold", "0.3"]).stderr).into_owned();
    assert!(e.contains("threshold") && e.contains("binary"), "{e}");
}

#[test]
fn score_threshold_moves_the_binary_decision() {
    let w = workdir();
    let w = w.path();
    let feats = common::prepared(w, &["cat", "dog"], 8);
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", &feats, "--run", "b", "--head", "logistic"], w);
    let classes = |t: &str| -> Vec<String> {
        let out = format!("s{t}.csv");
        ok("tlearn-score", &["data/toy/test", "--run", "b", "--out", &out, "--threshold", t, "--device", "cpu"], w);
        read(&w.join(&out)).lines().skip(1).map(|l| l.split(',').nth(1).unwrap().to_string()).collect()
    };
    assert!(classes("0").iter().all(|c| c == "dog"), "p ≥ 0 always: the positive class");
    let mid = classes("0.5");
    assert!(mid.contains(&"cat".to_string()) && mid.contains(&"dog".to_string()), "{mid:?}");
}
