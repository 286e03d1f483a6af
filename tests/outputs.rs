//! Outputs never replace or overwrite inputs: an output that is an input, lies inside one, holds
//! one or is one spelled through a link is refused; `--force` replaces only a split tlearn made;
//! a built-in backbone name is never taken over, a failed `tlearn-backbone add` registers nothing
//! and a user's entry is replaced only on request. (From the red-team pass.)

mod common;
use common::*;

#[test]
fn outputs_never_replace_or_overwrite_inputs() {
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 6, false);
    std::os::unix::fs::symlink("raw", w.join("rawlink")).unwrap();
    // The output is the input, lies inside it, contains it, or is it spelled through a link.
    for out in ["raw", "raw/sub", ".", "rawlink", "./raw/"] {
        let err = fails("tlearn-data", &["split", "raw", out, "--force", "--mode", "symlink"], w);
        assert!(err.contains("input") && err.contains("never"), "{out}: {err}");
    }
    assert_eq!(count_files(&w.join("raw")), 12, "source images lost");
    for e in walkdir::WalkDir::new(w.join("raw")).into_iter().filter_map(|e| e.ok()) {
        assert!(!e.path_is_symlink(), "{} became a link", e.path().display());
    }
    // --force replaces a split tlearn made, never a folder of the user's.
    std::fs::create_dir(w.join("papers")).unwrap();
    std::fs::write(w.join("papers/thesis.txt"), b"years of work").unwrap();
    let err = fails("tlearn-data", &["split", "raw", "papers", "--force"], w);
    assert!(err.contains("papers") && err.contains("only a split tlearn made"), "{err}");
    assert_eq!(std::fs::read(w.join("papers/thesis.txt")).unwrap(), b"years of work");
    ok("tlearn-data", &["split", "raw", "split1", "--seed", "1"], w);
    ok("tlearn-data", &["split", "raw", "split1", "--seed", "2", "--force"], w);

    // Backbones: a built-in name is never taken over, a failed add registers nothing, a user
    // entry is replaced only on request, and a cut tensor named `features` is fine.
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let add = |extra: &[&str]| -> Vec<String> {
        ["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let args = add(&["--name", "vgg16"]);
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("built-in"), "{err}");
    assert!(!w.join("onnx/vgg16.onnx").exists());
    // Cut at the softmax: the cut is valid, the smoke run finds no (N,h,w,c) features.
    let args: Vec<String> = add(&["--name", "small", "--layout", "nhwc"])
        .into_iter()
        .map(|s| if s == "pool_out" { "output".into() } else { s })
        .collect();
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("expected (2,h,w,c)"), "{err}");
    assert!(!w.join("onnx/small.onnx").exists());
    let user = std::fs::read_to_string(w.join("onnx/user-backbones.toml")).unwrap_or_default();
    assert!(!user.contains("small"), "a failed add left its entry: {user}");
    let args = add(&[]);
    ok("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    let err = fails("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    assert!(err.contains("--replace"), "{err}");
    let args = add(&["--replace"]);
    ok("tlearn-backbone", &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), w);
    let mut m = tlearn::onnx::load_model(&w.join("tiny.onnx")).unwrap();
    for n in m.graph.as_mut().unwrap().node.iter_mut() {
        for t in n.input.iter_mut().chain(n.output.iter_mut()) {
            if t == "pool_out" {
                *t = "features".into();
            }
        }
    }
    tlearn::onnx::save_model(&m, &w.join("feat.onnx")).unwrap();
    let out = ok(
        "tlearn-backbone",
        &["add", "feat.onnx", "--output", "features", "--preprocess", "caffe", "--size", "32"],
        w,
    );
    assert!(out.contains("[16, 16, 8]"), "{out}");
}
