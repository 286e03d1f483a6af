//! Grad-CAM: on images whose class is decided by a bright patch in one corner, the map of that
//! class peaks in that corner; `tlearn-evaluate` puts the overlays in the report and as PNGs.

mod common;
use common::*;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use std::path::Path;
use tlearn::runtime::{Device, SessionOptions};

/// 32×32 noise; class `corner` also has a bright 8×8 patch at the top left.
fn corner_dataset(root: &Path, per_class: usize) {
    for (ci, class) in ["corner", "plain"].iter().enumerate() {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((ci * 1000 + i) as u64);
            let img = RgbImage::from_fn(32, 32, |x, y| {
                let v = if ci == 0 && x < 8 && y < 8 { 250 } else { rng.gen_range(40u8..110) };
                Rgb([v, v, v])
            });
            img.save(d.join(format!("{class}_{i}.png"))).unwrap();
        }
    }
}

#[test]
fn the_map_of_a_corner_patch_class_peaks_in_that_corner() {
    let w = workdir();
    let w = w.path();
    corner_dataset(&w.join("raw"), 30);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    tiny_classifier(&w.join("tiny.onnx"), 3);
    ok("tlearn-backbone", &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--size", "32"], w);
    ok(
        "tlearn-extract",
        &["--data", "data/toy", "--backbone", "tiny", "--size", "32", "--views", "hflip,rot180", "--device", "cpu"],
        w,
    );
    let feats = "features/toy/tiny-32";
    let head = ["--features", feats, "--epochs", "30", "--units", "16", "--lr", "1e-3"];
    ok("tlearn-head", &[&head[..], &["--run", "corner"]].concat(), w);
    let out = ok("tlearn-evaluate", &["--run", "corner", "--explain", "4", "--device", "cpu"], w);
    assert!(out.contains("accuracy 1.0000"), "the patch decides the class: {out}");

    // The report: a Grad-CAM section with overlays (no mistakes: the most confident right
    // answers, 4/2 of them), also as PNG files.
    let html = std::fs::read_to_string(w.join("reports/corner/index.html")).unwrap();
    let section = html.split("<section id=\"gradcam\">").nth(1).expect("gradcam section");
    let section = section.split("</section>").next().unwrap();
    assert_eq!(section.matches("<img src=\"data:image/png;base64,").count(), 2, "{section}");
    let pngs: Vec<_> =
        file_names(&w.join("reports/corner/gradcam")).into_iter().filter(|n| n.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 2);

    // The map of every `corner` test image peaks in the top-left quarter of the 16×16 map.
    let model_path = w.join("runs/corner/model.onnx");
    let model = tlearn::onnx::load_model(&model_path).unwrap();
    let meta = tlearn::runs::meta(&model, &model_path).unwrap();
    let opts = SessionOptions { device: Device::Cpu, threads: 1, precision: None };
    let mut cam = tlearn::explain::GradCam::new(&model, &model_path, meta.size, meta.interpolation, &opts).unwrap();
    let dir = w.join("data/toy/test/corner");
    let mut seen = 0;
    for (n, f) in std::fs::read_dir(&dir).unwrap().enumerate() {
        let f = f.unwrap().path();
        let max = tlearn::imageio::DEFAULT_MAX_PIXELS;
        let (e, _) = tlearn::explain::file(&mut cam, &f, None, max, &w.join(format!("cam{n}.png"))).unwrap();
        assert_eq!(e.class, 0, "{}: predicted corner", f.display());
        assert_eq!(e.cam.dim(), (16, 16));
        let (mut best, mut at) = (f32::MIN, (0, 0));
        for ((r, c), &v) in e.cam.indexed_iter() {
            if v > best {
                (best, at) = (v, (r, c));
            }
        }
        assert!(at.0 < 8 && at.1 < 8, "{}: the map peaks at {at:?}\n{:?}", f.display(), e.cam);
        // Not an all-zero map (whose "peak" would be (0, 0)): the corner outweighs the rest.
        let mean = |corner: bool| {
            let v: Vec<f32> =
                e.cam.indexed_iter().filter(|((r, c), _)| (*r < 4 && *c < 4) == corner).map(|(_, &v)| v).collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(best == 1.0 && mean(true) > 2.0 * mean(false), "{}: {:?}", f.display(), e.cam);
        seen += 1;
    }
    assert!(seen >= 4, "{seen} corner test images");

    // tlearn-score --explain: an overlay per scored image, named in index.csv.
    let out = ok("tlearn-score", &["data/toy/test", "--run", "corner", "--out", "s.csv", "--explain", "cams"], w);
    let n_test = std::fs::read_dir(w.join("data/toy/test/corner")).unwrap().count()
        + std::fs::read_dir(w.join("data/toy/test/plain")).unwrap().count();
    assert!(out.contains(&format!("Grad-CAM: {n_test} overlays")), "{out}");
    let index = std::fs::read_to_string(w.join("cams/index.csv")).unwrap();
    assert_eq!(index.lines().count(), n_test + 1, "{index}");
    for line in index.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        assert!(w.join("cams").join(cells[1]).is_file(), "{line}");
        assert_eq!(cells[0].contains("/corner/"), cells[2] == "corner", "{line}");
    }
    let err =
        fails("tlearn-score", &["data/toy/test", "--run", "corner", "--out", "t.csv", "--explain", "data/toy"], w);
    assert!(err.contains("data/toy"), "an output inside the inputs is refused: {err}");

    // A fused head run's model fine-tuned with its backbone cached: the head's dense layers (and
    // not its scalar constants, such as a dropout ratio) are what trains.
    let ft = ["runs/corner/model.onnx", "--data", "data/toy", "--run", "cached", "--trainable", "head/*"];
    let out = ok("tlearn-finetune", &[&ft[..], &["--cache-trunk", "--epochs", "1", "--explain", "0"]].concat(), w);
    assert!(out.contains("trained"), "{out}");

    // A model with TTA views: Grad-CAM takes its plain view, which scores as the model without.
    ok("tlearn-head", &[&head[..], &["--run", "corner-tta", "--tta", "hflip,rot180"]].concat(), w);
    ok("tlearn-evaluate", &["--run", "corner-tta", "--explain", "2", "--device", "cpu"], w);
    let html = std::fs::read_to_string(w.join("reports/corner-tta/index.html")).unwrap();
    let section = html.split("<section id=\"gradcam\">").nth(1).unwrap().split("</section>").next().unwrap();
    // (Flipped views move the patch to other corners, so this run makes mistakes.)
    assert!(section.matches("<img src=").count() >= 1, "{section}");
    let tta_path = w.join("runs/corner-tta/model.onnx");
    let tta = tlearn::onnx::load_model(&tta_path).unwrap();
    let plain = tlearn::runs::plain(&tta, &tta_path).unwrap();
    assert!(tlearn::onnx::graph(&plain).node.iter().all(|n| n.op_type != "Slice" && n.op_type != "MatMul"));
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 32, 32, 3]), |i| {
        ((i[1] * 7 + i[2] * 3 + i[0]) % 200) as f32
    });
    let run = |m: &tlearn::onnx::proto::ModelProto| {
        tlearn::train::predict(&tlearn::onnx::encode_model(m), &tta_path, &x, 3, &opts).unwrap()
    };
    let (a, b) = (run(&plain), run(&model));
    assert!((&a - &b).mapv(f32::abs).iter().all(|&d| d < 1e-5), "{a} vs {b}");
    assert!((&run(&tta) - &a).mapv(f32::abs).iter().any(|&d| d > 1e-4), "the views change the output");
}

#[test]
fn overlays_go_only_into_folders_tlearn_owns_and_only_its_own_files_are_removed() {
    let w = workdir();
    let w = w.path();
    trained(w, &["a", "b"], 6);
    let explain = |dir: &str| {
        run(
            "tlearn-score",
            &["data/toy/test", "--run", "toy", "--device", "cpu", "--out", "s.csv", "--explain", dir],
            w,
        )
    };
    // A gallery with an index.csv of its own: refused, nothing touched.
    let gallery = w.join("gallery");
    std::fs::create_dir(&gallery).unwrap();
    std::fs::write(gallery.join("index.csv"), "title,file,year\nsea,00000-sea.png,1999\n").unwrap();
    std::fs::write(gallery.join("00000-sea.png"), b"a photo").unwrap();
    let o = explain("gallery");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("gallery") && err.contains("did not write"), "{err}");
    assert_eq!(std::fs::read(gallery.join("00000-sea.png")).unwrap(), b"a photo");
    assert!(std::fs::read_to_string(gallery.join("index.csv")).unwrap().starts_with("title,file,year"));

    // A folder of its own: a rerun replaces its overlays and leaves a file put there since.
    assert!(explain("cams").status.success());
    let first = file_names(&w.join("cams"));
    assert!(first.iter().any(|n| n.ends_with(".png")), "{first:?}");
    std::fs::write(w.join("cams/00000-notes.png"), b"mine").unwrap();
    assert!(explain("cams").status.success());
    assert_eq!(std::fs::read(w.join("cams/00000-notes.png")).unwrap(), b"mine", "not listed: kept");
    let mut again = file_names(&w.join("cams"));
    again.retain(|n| n != "00000-notes.png");
    let (mut a, mut b) = (first.clone(), again.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // The report's gradcam/ folder: a user's file there stops the overlays, and stays.
    let gradcam = w.join("reports/toy/gradcam");
    std::fs::create_dir_all(&gradcam).unwrap();
    std::fs::write(gradcam.join("фото.png"), b"mine").unwrap();
    let out = run("tlearn-evaluate", &["--run", "toy", "--explain", "2", "--device", "cpu"], w);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not write"));
    assert_eq!(std::fs::read(gradcam.join("фото.png")).unwrap(), b"mine");
    std::fs::remove_file(gradcam.join("фото.png")).unwrap();
    ok("tlearn-evaluate", &["--run", "toy", "--explain", "2", "--device", "cpu"], w);
    assert!(file_names(&gradcam).iter().any(|n| n.ends_with(".png")));
    // In its own folder, a rerun removes the overlays its index lists, not a file named like one.
    std::fs::write(gradcam.join("00009-holiday.png"), b"mine").unwrap();
    ok("tlearn-evaluate", &["--run", "toy", "--explain", "2", "--device", "cpu"], w);
    assert_eq!(std::fs::read(gradcam.join("00009-holiday.png")).unwrap(), b"mine");
}

#[test]
fn overlay_names_are_bounded_and_recognised() {
    let long = "x".repeat(300);
    let p = tlearn::explain::png_path(Path::new("d"), 7, &format!("{long}.jpg"));
    let name = p.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), "00007-".len() + tlearn::explain::MAX_STEM + ".png".len());
    assert!(tlearn::output::is_overlay_name(name), "{name}: the names `output` recognises (its unit tests)");
}
