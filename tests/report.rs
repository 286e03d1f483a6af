//! The HTML report: one self-contained file with every section, the most confident mistakes first,
//! and a page headless Chromium opens without errors (skipped with a `SKIPPED` line where Chromium
//! is missing, a failure there when `CI` is set).

mod common;
use base64::Engine as _;
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use tlearn::metrics;

/// 10 test rows of 3 classes, four of them wrong with known confidences; images on disk but one.
fn page_inputs(dir: &Path) -> (ArrayD<f32>, Vec<(String, usize)>, Vec<String>) {
    let classes: Vec<String> = ["cat", "dog", "fox"].map(String::from).to_vec();
    // (true class, probabilities)
    let rows: [(usize, [f32; 3]); 10] = [
        (0, [0.9, 0.05, 0.05]),
        (0, [0.2, 0.7, 0.1]), // wrong, 0.7
        (1, [0.1, 0.8, 0.1]),
        (1, [0.05, 0.05, 0.9]), // wrong, 0.9
        (2, [0.1, 0.1, 0.8]),
        (2, [0.6, 0.3, 0.1]), // wrong, 0.6
        (0, [0.8, 0.1, 0.1]),
        (1, [0.3, 0.2, 0.5]), // wrong, 0.5 (its image is missing)
        (2, [0.2, 0.2, 0.6]),
        (0, [0.7, 0.2, 0.1]),
    ];
    let mut files = vec![];
    for (i, (t, _)) in rows.iter().enumerate() {
        let p = dir.join(format!("img <{i}>.png"));
        if i != 7 {
            common::make_image(*t, i as u64, 40, 30).save(&p).unwrap();
        }
        files.push((p.display().to_string(), *t));
    }
    let probs = ArrayD::from_shape_fn(IxDyn(&[10, 3]), |i| rows[i[0]].1[i[1]]);
    (probs, files, classes)
}

fn sections(html: &str) -> Vec<&str> {
    html.match_indices("<section id=\"").map(|(i, _)| html[i + 13..].split('"').next().unwrap()).collect()
}

#[test]
fn report_is_self_contained_with_every_section_and_mistakes_by_confidence() {
    let w = common::workdir();
    let (probs, files, classes) = page_inputs(w.path());
    let labels: Vec<usize> = files.iter().map(|f| f.1).collect();
    let (p, pred) = (metrics::class_probs(&probs), metrics::predicted(&probs));
    assert_eq!(tlearn::report::most_confident_mistakes(&p, &pred, &labels, 16), vec![3, 1, 5, 7]);
    assert_eq!(tlearn::report::most_confident_mistakes(&p, &pred, &labels, 2), vec![3, 1]);
    let out = w.path().join("rep");
    let ctx = serde_json::json!({"run": "r1", "split": "test"});
    let history = w.path().join("no-history.png");
    tlearn::evaluate::write_report(&out, ctx, &probs, &files, &classes, Some(&history), None).unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(sections(&html), ["metrics", "confusion", "roc", "curves", "misclassified", "gradcam"]);
    assert!(html.contains("(not drawn: not asked for)"), "Grad-CAM says why it is empty");
    assert!(html.contains("<title>r1 — test split</title>"), "title");
    // Self-contained: no script, no external or file reference; every picture a PNG data URI.
    for bad in ["<script", "http://", "https://", "src=\"file", "src=\"/"] {
        assert!(!html.contains(bad), "{bad} in the report");
    }
    let imgs: Vec<&str> = html.split("<img src=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    // confusion + ROC + 3 thumbnails (the missing image gets a placeholder); no history given.
    assert_eq!(imgs.len(), 5, "pictures");
    for src in &imgs {
        let b64 = src.strip_prefix("data:image/png;base64,").expect("a PNG data URI");
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "decodes to a PNG");
    }
    // Tiles in order of confidence, names escaped, the missing image as a placeholder.
    let grid = &html[html.find("id=\"misclassified\"").unwrap()..];
    assert!(grid.contains("(4 of 4 errors)"), "{grid:.200}");
    let order: Vec<usize> = ["img &lt;3&gt;.png", "img &lt;1&gt;.png", "img &lt;5&gt;.png", "img &lt;7&gt;.png"]
        .iter()
        .map(|n| grid.find(&format!(">{n}</div>")).unwrap_or_else(|| panic!("{n} shown")))
        .collect();
    assert!(order.windows(2).all(|p| p[0] < p[1]), "most confident first: {order:?}");
    assert_eq!(grid.matches("class=\"missing\"").count(), 1);
    assert!(grid.contains("predicted: <b>fox</b> (0.9000)"), "probability shown");
    assert!(html.contains("(this run has no per-epoch history)"));
    // Three ROC curves (one per class) in the chart; metrics table values present.
    assert!(out.join("roc.png").exists());
    assert!(html.contains("<tr><th>accuracy</th><td>0.6000</td></tr>"), "6 of 10 right");
    // The confusion by true class's share: cat's 4 images, 3 right and 1 taken for a dog.
    let row = "<tr><td>cat</td><td><b>75.0 %</b></td><td>25.0 %</td><td>0.0 %</td><td>4</td></tr>";
    assert!(html.contains(row), "normalised confusion row");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["confusion_normalized"][0], serde_json::json!([0.75, 0.25, 0.0]));
}

/// Chromium where this machine has it: `/usr/bin/chromium` (Debian's `chromium`, which `.ci/run`
/// installs) or `chromium-browser`. Missing, the test is skipped with a line saying so, except in CI
/// (`CI` set), where a missing browser fails the test: a browser test that never runs checks nothing.
fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
    if found.is_none() {
        assert!(
            !common::in_ci(),
            "CI is set but there is no Chromium at /usr/bin/chromium (.ci/run installs Debian's chromium)"
        );
        common::skipped("no Chromium at /usr/bin/chromium (apt-get install chromium)");
    }
    found
}

/// Run headless Chromium on `page` with a fresh profile; (status, DOM, log). Killed after 120 s.
fn dump_dom(chromium: &str, page: &Path, scratch: &Path) -> (std::process::ExitStatus, String, String) {
    let (out, err) = (scratch.join("dom.html"), scratch.join("chromium.log"));
    let mut child = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", scratch.join("profile").display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("Chromium still running after 120 s: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    (status, read(&out), read(&err))
}

#[test]
fn report_opens_in_headless_chromium_without_errors() {
    let Some(chromium) = chromium() else { return };
    let w = common::workdir();
    let (probs, files, classes) = page_inputs(w.path());
    let out = w.path().join("rep");
    tlearn::evaluate::write_report(
        &out,
        serde_json::json!({"run": "r", "split": "test"}),
        &probs,
        &files,
        &classes,
        None,
        None,
    )
    .unwrap();
    let (status, dom, log) = dump_dom(chromium, &out.join("index.html"), w.path());
    assert!(status.success(), "{log}");
    assert_eq!(sections(&dom), ["metrics", "confusion", "roc", "curves", "misclassified", "gradcam"], "{log}");
    assert!(dom.contains("(4 of 4 errors)") && dom.contains("(not drawn: not asked for)"), "{dom:.2000}");
    // The DOM the browser built holds every picture (confusion, ROC, three thumbnails).
    assert_eq!(dom.matches("<img src=\"data:image/png;base64,").count(), 5, "{dom:.2000}");
    for bad in ["CONSOLE", "Uncaught", "ERR_FILE_NOT_FOUND", "Not allowed to load"] {
        assert!(!log.contains(bad), "browser log has {bad}: {log}");
    }
}
