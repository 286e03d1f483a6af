//! What tlearn reads stays what it is: names and paths read from files stay inside the folders
//! named (sidecar names, splits, links out of the input), text cells that look like formulas are
//! neutralised, every input not used is reported, and file names that are not UTF-8 keep their
//! bytes. (From the red-team pass.)

mod common;
use common::*;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn names_and_paths_read_from_files_stay_inside_the_folders_named() {
    let w = workdir();
    let w = w.path();
    let feats = trained(w, &["cat", "=cmd"], 8);
    // A sidecar's name becomes a folder: checked like a name on the command line.
    let side = w.join("onnx/tiny.onnx.json");
    let mut rec = json(&side);
    rec["name"] = serde_json::json!("../../../evil");
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    let err = fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--out", "f2"], w);
    assert!(err.contains("plain name"), "{err}");
    rec["name"] = serde_json::json!("tiny");
    std::fs::write(&side, serde_json::to_string(&rec).unwrap()).unwrap();
    for splits in ["../x", "/tmp/x", "train/../.."] {
        let err = fails("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--splits", splits], w);
        assert!(err.contains("split"), "{splits}: {err}");
    }
    // A class folder linked to a folder outside the input is not pulled into the split.
    make_dataset(&w.join("outside"), &["secret"], 3, false);
    make_dataset(&w.join("raw3"), &["cat"], 6, false);
    std::os::unix::fs::symlink(w.join("outside/secret"), w.join("raw3/secret")).unwrap();
    std::os::unix::fs::symlink(w.join("outside/secret/secret_0.png"), w.join("raw3/cat/linked.png")).unwrap();
    ok("tlearn-data", &["split", "raw3", "data/three"], w);
    assert_eq!(count_files(&w.join("data/three")) - 2, 6, "only raw3's own cats (+ manifest, split.json)");
    assert!(json(&w.join("data/three/split.json"))["skipped"].to_string().contains("outside the input"));
    ok("tlearn-data", &["split", "raw3", "data/three-all", "--follow-outside"], w);
    assert_eq!(count_files(&w.join("data/three-all")) - 2, 10);

    // CSV injection: text cells that start like a formula are neutralised; JSON lines stay exact.
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "s.csv", "--top-k", "2"], w);
    ok("tlearn-score", &["data/toy/test", "--run", "toy", "--out", "s.jsonl"], w);
    ok("tlearn-evaluate", &["--run", "toy", "--features", &feats], w);
    for f in ["s.csv", "reports/toy/predictions.csv"] {
        let text = std::fs::read_to_string(w.join(f)).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        for rec in r.records() {
            for cell in rec.unwrap().iter() {
                assert!(!cell.starts_with(['=', '+', '-', '@']), "{f}: live formula {cell}");
            }
        }
        assert!(text.contains("'=cmd"), "{f}: {text}");
    }
    let jl = std::fs::read_to_string(w.join("s.jsonl")).unwrap();
    assert!(jl.contains("\"=cmd\"") && !jl.contains("'=cmd"), "{jl}");
}

#[test]
fn every_unused_input_is_reported_and_odd_names_keep_their_bytes() {
    let w = workdir();
    let w = w.path();
    trained(w, &["cat", "dog"], 6);
    let d = w.join("odd");
    std::fs::create_dir_all(d.join("folder.jpg")).unwrap();
    assert!(Command::new("mkfifo").arg(d.join("fifo.png")).status().unwrap().success());
    std::os::unix::fs::symlink("/nonexistent/gone.png", d.join("dangling.png")).unwrap();
    // Four files whose names differ only in bytes that are not UTF-8.
    make_image(0, 7, 30, 30).save(w.join("one.png")).unwrap();
    let png = std::fs::read(w.join("one.png")).unwrap();
    let names: Vec<PathBuf> = [0xFFu8, 0xFE, 0xFD, 0xFC]
        .iter()
        .map(|&b| d.join(std::ffi::OsStr::from_bytes(&[b'x', b, b'.', b'p', b'n', b'g'])))
        .collect();
    for n in &names {
        std::fs::write(n, &png).unwrap();
    }
    for input in ["odd", "odd/*"] {
        let out = format!("{}.csv", if input == "odd" { "folder" } else { "glob" });
        ok("tlearn-score", &[input, "--run", "toy", "--out", &out], w);
        let summary = json(&w.join(format!("{out}.summary.json")));
        let bad = summary["unreadable"].to_string();
        for n in ["fifo.png", "dangling.png", "folder.jpg"] {
            assert!(bad.contains(n), "{input}: {n} not reported: {bad}");
        }
        assert_eq!(summary["scored"], 4, "{summary}");
        let text = std::fs::read_to_string(w.join(&out)).unwrap();
        let mut paths: Vec<PathBuf> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| tlearn::fsutil::text_path(tlearn::fsutil::csv_uncell(&r.unwrap()[0])))
            .collect();
        paths.sort();
        let mut want: Vec<PathBuf> = names.iter().map(|n| n.strip_prefix(w).unwrap().to_path_buf()).collect();
        want.sort();
        assert_eq!(paths, want, "rows must name the real files");
    }
    // Glob patterns follow links to folders, as the glob crate does.
    std::fs::create_dir(w.join("lk")).unwrap();
    std::os::unix::fs::symlink(w.join("data/toy/test/cat"), w.join("lk/cat")).unwrap();
    let n = count_files(&w.join("data/toy/test/cat"));
    ok("tlearn-score", &["lk/*/*.png", "--run", "toy", "--out", "linked.csv"], w);
    assert_eq!(json(&w.join("linked.csv.summary.json"))["scored"], n, "images behind a linked folder");
    // Folder trees given to tlearn-data: folders and FIFOs named like images are reported.
    make_dataset(&w.join("raw5"), &["cat", "dog"], 4, false);
    std::fs::create_dir_all(w.join("raw5/cat/dir.png")).unwrap();
    assert!(Command::new("mkfifo").arg(w.join("raw5/dog/pipe.jpg")).status().unwrap().success());
    std::fs::write(w.join("raw5/dog").join(std::ffi::OsStr::from_bytes(b"notes\xff.txt")), b"x").unwrap();
    ok("tlearn-data", &["split", "raw5", "data/five"], w);
    let skipped = json(&w.join("data/five/split.json"))["skipped"].to_string();
    assert!(skipped.contains("dir.png") && skipped.contains("pipe.jpg"), "{skipped}");
    let non_images = json(&w.join("data/five/split.json"))["non_images"].to_string();
    assert!(non_images.contains("notes\\\\xff.txt"), "{non_images}");
}
