//! A generated corpus of hostile inputs (broken, odd and malicious files and names) through every
//! stage that reads images or ONNX: no crash, every bad file reported with its path and counted,
//! every good file scored exactly as in a clean run; a JPEG whose data ends before its rows is a
//! bad file; absurd numbers and closed pipes end in clear errors, not crashes (these two from the
//! red-team pass).

mod common;
use common::*;
use image::{ImageBuffer, Rgb, RgbImage};
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn no_panic(err: &str) {
    assert!(!err.contains("panicked"), "a panic instead of an error: {err}");
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut v = std::io::Cursor::new(vec![]);
    img.write_to(&mut v, image::ImageFormat::Png).unwrap();
    v.into_inner()
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut v = std::io::Cursor::new(vec![]);
    img.write_to(&mut v, image::ImageFormat::Jpeg).unwrap();
    v.into_inner()
}

/// A PNG from raw chunks (the CRCs computed): hostile headers and chunks the encoders refuse.
fn png_from_chunks(chunks: &[(&[u8], &[u8])]) -> Vec<u8> {
    fn crc32(b: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &x in b {
            c ^= x as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in chunks {
        out.extend((data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend(*data);
        out.extend(&c);
        out.extend(crc32(&c).to_be_bytes());
    }
    out
}

fn ihdr(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut v = vec![];
    v.extend(w.to_be_bytes());
    v.extend(h.to_be_bytes());
    v.extend([depth, colour, 0, 0, 0]);
    v
}

/// A PNG whose header declares `w`×`h` pixels (with a tiny, wrong IDAT): a decompression bomb.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let idat = [0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    png_from_chunks(&[(b"IHDR", &ihdr(w, h, 8, 2)), (b"IDAT", &idat), (b"IEND", &[])])
}

/// A 4×2 paletted PNG, complete and valid except that its palette is `palette_len` bytes long
/// (a whole palette is a multiple of 3: one RGB triple per entry).
fn palette_png(palette_len: usize) -> Vec<u8> {
    let rows: Vec<u8> = [0u8, 0, 1, 0, 1, 0, 1, 0, 1, 0].to_vec(); // filter byte + 4 indices, twice
    let mut idat = vec![0x78, 0x01, 0x01]; // zlib header, one final stored deflate block
    idat.extend((rows.len() as u16).to_le_bytes());
    idat.extend((!(rows.len() as u16)).to_le_bytes());
    idat.extend(&rows);
    let (a, b) = rows.iter().fold((1u32, 0u32), |(a, b), &x| ((a + x as u32) % 65521, (b + a + x as u32) % 65521));
    idat.extend(((b << 16) | a).to_be_bytes());
    let palette: Vec<u8> = (0..palette_len).map(|i| (i * 40) as u8).collect();
    png_from_chunks(&[(b"IHDR", &ihdr(4, 2, 8, 3)), (b"PLTE", &palette), (b"IDAT", &idat), (b"IEND", &[])])
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// Writes the corpus into `dir`; returns (good relative paths, bad relative paths).
fn corpus(dir: &Path) -> (Vec<String>, Vec<String>) {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    std::fs::create_dir_all(dir.join("sub dir")).unwrap();
    let img = |k: u64| make_image(k as usize, k, 40, 30);
    let mut good = vec![];
    let mut put = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).unwrap();
        good.push(name.to_string());
    };
    put("plain.png", &png_bytes(&img(1)));
    put("photo.jpg", &jpeg_bytes(&img(2)));
    put("png-named.jpg", &png_bytes(&img(3)));
    put("with space.png", &png_bytes(&img(4)));
    put("ünïcødé 画像.png", &png_bytes(&img(5)));
    put("new\nline.png", &png_bytes(&img(6)));
    put("sub dir/nested.png", &png_bytes(&img(7)));
    put("palette.png", &palette_png(6));
    for f in ["cmyk.jpg", "animated.gif", "animated.webp"] {
        put(f, &std::fs::read(fx.join(f)).unwrap());
    }
    let gray = image::DynamicImage::ImageRgb8(img(8)).to_luma8();
    let mut v = std::io::Cursor::new(vec![]);
    gray.write_to(&mut v, image::ImageFormat::Png).unwrap();
    put("gray.png", &v.into_inner());
    let rgba = image::DynamicImage::ImageRgb8(img(9)).to_rgba8();
    let mut v = std::io::Cursor::new(vec![]);
    rgba.write_to(&mut v, image::ImageFormat::Png).unwrap();
    put("alpha.png", &v.into_inner());
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(32, 24, |x, y| Rgb([(x * 2000) as u16, (y * 2500) as u16, 40000]));
    let mut v = std::io::Cursor::new(vec![]);
    deep.write_to(&mut v, image::ImageFormat::Png).unwrap();
    put("deep16.png", &v.into_inner());
    let locked_ok = is_root();
    put("locked.png", &png_bytes(&img(10)));
    std::fs::create_dir_all(dir.join("locked dir")).unwrap();
    put("locked dir/inside.png", &png_bytes(&img(11)));
    symlink("plain.png", dir.join("link-to-plain.png")).unwrap();
    good.push("link-to-plain.png".into());

    let mut bad = vec![];
    let mut put_bad = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).unwrap();
        bad.push(name.to_string());
    };
    put_bad("zero.png", b"");
    let j = jpeg_bytes(&img(12));
    put_bad("truncated.jpg", &j[..j.len() / 2]);
    let p = png_bytes(&img(13));
    put_bad("truncated.png", &p[..p.len() / 2]);
    put_bad("text.png", b"hello, not an image");
    put_bad("bomb.png", &bomb_png(200_000, 200_000));
    put_bad("palette-4-bytes.png", &palette_png(4));
    symlink("loop-b.jpg", dir.join("loop-a.jpg")).unwrap();
    symlink("loop-a.jpg", dir.join("loop-b.jpg")).unwrap();
    symlink("nowhere.png", dir.join("dangling.png")).unwrap();
    symlink(".", dir.join("dirlink.jpg")).unwrap();
    bad.extend(["loop-a.jpg", "loop-b.jpg", "dangling.png", "dirlink.jpg"].map(String::from));
    std::fs::write(dir.join("notes.txt"), b"not an image name: ignored").unwrap();
    std::fs::set_permissions(dir.join("locked.png"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(dir.join("locked dir"), std::fs::Permissions::from_mode(0o000)).unwrap();
    if !locked_ok {
        good.retain(|g| !g.starts_with("locked"));
        bad.extend(["locked.png".to_string(), "locked dir".to_string()]);
    }
    (good, bad)
}

/// The rows of a scores CSV keyed by path relative to `root`.
fn rows_by_name(csv_path: &Path, root: &str) -> BTreeMap<String, Vec<String>> {
    let mut r = csv::Reader::from_path(csv_path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let p = rec[0].strip_prefix(root).unwrap().trim_start_matches('/').to_string();
            (p, rec.iter().skip(1).map(String::from).collect())
        })
        .collect()
}

#[test]
fn hostile_images_are_reported_and_good_ones_scored_as_in_a_clean_run() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 8);
    let (good, bad) = corpus(&w.join("inbox"));
    // The clean run: only the good files, same names.
    std::fs::create_dir_all(w.join("clean/sub dir")).unwrap();
    std::fs::create_dir_all(w.join("clean/locked dir")).unwrap();
    for g in &good {
        let data = std::fs::read(w.join("inbox").join(g)).unwrap();
        std::fs::write(w.join("clean").join(g), data).unwrap();
    }
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    ok("tlearn-head", &["--features", &feats, "--run", "toy", "--epochs", "2", "--units", "8"], w);
    ok("tlearn-score", &["clean", "--run", "toy", "--out", "clean.csv"], w);
    let out = ok("tlearn-score", &["inbox", "--run", "toy", "--out", "inbox.csv", "--max-pixels", "50000000"], w);
    let clean = rows_by_name(&w.join("clean.csv"), "clean");
    let inbox = rows_by_name(&w.join("inbox.csv"), "inbox");
    assert_eq!(clean.len(), good.len(), "every good file scored in the clean run");
    assert_eq!(inbox, clean, "good files score the same amid hostile ones");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("inbox.csv.summary.json")).unwrap()).unwrap();
    let unreadable: Vec<(String, String)> = summary["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u[0].as_str().unwrap().to_string(), u[1].as_str().unwrap().to_string()))
        .collect();
    for b in &bad {
        let hit = unreadable.iter().find(|(p, _)| p.ends_with(b.as_str()));
        assert!(hit.is_some(), "{b} not reported: {unreadable:?}");
        let (p, why) = hit.unwrap();
        assert!(why.contains(p.as_str()), "the reason names the file: {why}");
        assert!(out.contains(why.as_str()), "printed: {why}");
    }
    assert_eq!(unreadable.len(), bad.len(), "{unreadable:?}");
    let bomb = &unreadable.iter().find(|(p, _)| p.ends_with("bomb.png")).unwrap().1;
    assert!(bomb.contains("exceeds the limit of 50000000"), "{bomb}");

    // extract on a split holding the corpus: bad files skipped and listed in the sidecar.
    let test_cat = w.join("data/toy/test/cat");
    for g in &good {
        let name = g.replace(['/', '\n'], "_");
        std::fs::write(test_cat.join(format!("g-{name}")), std::fs::read(w.join("clean").join(g)).unwrap()).unwrap();
    }
    for b in ["zero.png", "truncated.jpg", "truncated.png", "text.png", "bomb.png"] {
        std::fs::copy(w.join("inbox").join(b), test_cat.join(format!("b-{b}"))).unwrap();
    }
    symlink("b-loop2.jpg", test_cat.join("b-loop1.jpg")).unwrap();
    symlink("b-loop1.jpg", test_cat.join("b-loop2.jpg")).unwrap();
    std::fs::create_dir_all(w.join("data/toy/test/empty-class")).unwrap();
    let out = ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    let test_line = out.lines().find(|l| l.starts_with("test")).unwrap();
    assert!(test_line.contains(" 7 skipped"), "{out}");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join(&feats).join("test.npy.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = info["skipped"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    assert_eq!(skipped.len(), 7, "{skipped:?}");
    assert!(skipped.iter().all(|p| p.contains("/b-")), "{skipped:?}");
    let rows = std::fs::read_to_string(w.join(&feats).join("test.files.csv")).unwrap();
    assert_eq!(rows.matches("/g-").count(), good.len(), "{rows}");
}

/// The first input's tensor type of a model.
fn input_type(m: &mut tlearn::onnx::proto::ModelProto) -> &mut tlearn::onnx::proto::TypeTensor {
    m.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap().tensor_type.as_mut().unwrap()
}

#[test]
fn hostile_onnx_files_are_refused_with_the_path_and_the_problem() {
    let w = workdir();
    let w = w.path();
    tiny_classifier(&w.join("tiny.onnx"), 3);
    let bytes = std::fs::read(w.join("tiny.onnx")).unwrap();
    std::fs::write(w.join("truncated.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(w.join("empty.onnx"), b"").unwrap();
    std::fs::write(w.join("garbage.onnx"), b"\xff\xff\xff\xff garbage").unwrap();
    not_image_model(&w.join("rank2.onnx"));
    let m = tlearn::onnx::load_model(&w.join("tiny.onnx")).unwrap();
    let mut int_input = m.clone();
    input_type(&mut int_input).elem_type = 7;
    tlearn::onnx::save_model(&int_input, &w.join("int64.onnx")).unwrap();
    let mut absurd = m.clone();
    for d in input_type(&mut absurd).shape.as_mut().unwrap().dim.iter_mut().skip(1).take(2) {
        d.value = Some(tlearn::onnx::proto::DimValue::DimValue(1 << 40));
    }
    tlearn::onnx::save_model(&absurd, &w.join("absurd.onnx")).unwrap();
    let add = |f: &str| {
        fails("tlearn-backbone", &["add", f, "--output", "pool_out", "--preprocess", "caffe", "--name", "x"], w)
    };
    for (f, what) in [
        ("truncated.onnx", "not a valid ONNX model"),
        ("empty.onnx", "not a valid ONNX model"),
        ("garbage.onnx", "not a valid ONNX model"),
        ("missing.onnx", "No such file"),
        ("rank2.onnx", "not an image tensor"),
        ("int64.onnx", "not an image tensor"),
        ("absurd.onnx", "absurd"),
    ] {
        let err = add(f);
        assert!(err.contains(f) && err.contains(what), "{f}: {err}");
    }
    for f in ["truncated.onnx", "rank2.onnx", "absurd.onnx"] {
        std::fs::create_dir_all(w.join("imgs")).unwrap();
        make_image(0, 1, 20, 20).save(w.join("imgs/a.png")).unwrap();
        let err = fails("tlearn-score", &["imgs", "--model", f, "--out", "s.csv"], w);
        assert!(err.contains(f), "{f}: {err}");
        let err = fails("tlearn-finetune", &[f, "--data", "imgs", "--epochs", "1"], w);
        assert!(err.contains(f), "{f}: {err}");
    }

    // Names that would escape their output folder are refused before anything is written.
    for name in ["../x", "a/b", ".hidden", "/abs"] {
        let err = fails(
            "tlearn-backbone",
            &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--name", name],
            w,
        );
        assert!(err.contains("plain name"), "{name}: {err}");
        for (bin, other) in
            [("tlearn-head", "--features"), ("tlearn-evaluate", "--features"), ("tlearn-score", "--out")]
        {
            let err = fails(bin, &[other, "f", "--run", name], w);
            assert!(err.contains("plain name"), "{bin} {name}: {err}");
        }
    }
    assert!(!w.join("x.onnx").exists() && !w.parent().unwrap().join("x").exists());
}

/// A baseline JPEG of noise, and the same file cut after `keep` bytes of entropy-coded data and
/// closed with an end-of-image marker: the header still declares the whole image.
fn jpeg_pair(w: u32, h: u32, keep: usize) -> (Vec<u8>, Vec<u8>) {
    let img = make_image(0, 5, w, h);
    let mut full = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut full, 90).encode_image(&img).unwrap();
    let sos = full.windows(2).position(|p| p == [0xFF, 0xDA]).unwrap();
    let len = u16::from_be_bytes([full[sos + 2], full[sos + 3]]) as usize;
    let start = sos + 2 + len;
    let mut cut = full[..start + keep].to_vec();
    cut.extend_from_slice(&[0xFF, 0xD9]);
    (full, cut)
}

#[test]
fn a_jpeg_whose_data_ends_before_its_rows_is_a_bad_file() {
    let (full, cut) = jpeg_pair(640, 480, 300);
    let p = Path::new("short.jpg");
    let err = tlearn::imageio::decode_bytes(&cut, p, 1 << 30).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("short.jpg") && err.contains("ends before"), "{err}");
    // Cut anywhere in the data, not only to a sliver of it.
    for frac in [0.5, 0.9] {
        let keep = ((full.len() - 700) as f64 * frac) as usize;
        let (_, cut) = jpeg_pair(640, 480, keep);
        let r = tlearn::imageio::decode_bytes(&cut, p, 1 << 30);
        assert!(r.is_err(), "{frac} of the data decoded as a whole image");
    }
    // Complete files decode exactly as the image crate decodes them: noise, flat images whose last
    // rows of blocks take a few bytes, small gray digits with a black bottom edge, progressive.
    let flat = image::RgbImage::from_pixel(16, 24, image::Rgb([128, 128, 128]));
    let digit =
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([if y < 20 && (8..20).contains(&x) { 255 } else { 0 }]));
    let encode = |img: image::DynamicImage| {
        let mut b = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut b, 90).encode_image(&img).unwrap();
        b
    };
    let progressive =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/progressive.jpg")).unwrap();
    for (what, bytes) in [
        ("noise", full.clone()),
        ("flat", encode(flat.into())),
        ("digit", encode(digit.into())),
        ("progressive", progressive),
    ] {
        let ours = tlearn::imageio::decode_bytes(&bytes, p, 1 << 30).unwrap_or_else(|e| panic!("{what}: {e}"));
        let theirs = image::load_from_memory(&bytes).unwrap();
        assert_eq!(ours.to_rgb8().into_raw(), theirs.to_rgb8().into_raw(), "{what}");
    }

    // Through a stage: scored files exclude it and the summary names it.
    let d = tempfile::tempdir().unwrap();
    let w = d.path();
    std::fs::write(w.join("short.jpg"), &cut).unwrap();
    let bad = tlearn::imageio::decode(&w.join("short.jpg"), 1 << 30).map(|_| ()).unwrap_err();
    assert!(bad.to_string().contains("ends before"), "{bad}");
}

fn env_run(name: &str, args: &[&str], cwd: &Path, env: (&str, &str)) -> std::process::Output {
    Command::new(bin(name)).args(args).current_dir(cwd).env(env.0, env.1).output().unwrap()
}

#[test]
fn absurd_numbers_and_closed_pipes_end_in_clear_errors_not_crashes() {
    let w = workdir();
    let w = w.path();
    let feats = prepared(w, &["cat", "dog"], 6);
    let ex = |extra: &[&str]| -> String {
        let args: Vec<&str> = ["--data", "data/toy", "--backbone", "tiny", "--device", "cpu", "--out", "f"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        fails("tlearn-extract", &args, w)
    };
    for (args, says) in [
        (&["--size", "100000"][..], "size"),
        (&["--size", "16384"], "GB"),
        (&["--batch", "0"], "batch"),
        (&["--max-pixels", "0"], "max-pixels"),
    ] {
        let err = ex(args);
        no_panic(&err);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let err = fails(
        "tlearn-backbone",
        &["add", "tiny.onnx", "--output", "pool_out", "--preprocess", "caffe", "--name", "big", "--size", "100000"],
        w,
    );
    assert!(err.contains("size"), "{err}");
    for (size, says) in [("100000", "size"), ("16384", "GB")] {
        let err = fails("tlearn-backbone", &["summary", "tiny", "--size", size], w);
        no_panic(&err);
        assert!(err.contains(says), "summary --size {size}: {err}");
    }
    for counts in ["1,2", "1,1,1,1", "1,1,18446744073709551615", "0,1,1"] {
        let err = fails("tlearn-data", &["split", "raw", "data/c", "--counts", counts], w);
        no_panic(&err);
        assert!(err.contains("counts"), "{counts}: {err}");
    }
    for v in ["-5", "abc", "inf"] {
        let o = env_run(
            "tlearn-extract",
            &["--data", "data/toy", "--backbone", "tiny", "--out", "g"],
            w,
            ("TLEARN_LOCK_TIMEOUT", v),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("TLEARN_LOCK_TIMEOUT"), "{v}: {err}");
        no_panic(&err);
    }
    // A closed stdout ends the output, not the work: the head is written, the exit is clean.
    ok("tlearn-extract", &["--data", "data/toy", "--backbone", "tiny", "--device", "cpu"], w);
    for (name, args, product) in [
        (
            "tlearn-head",
            vec!["--features", feats.as_str(), "--run", "piped", "--epochs", "3", "--units", "8"],
            Some("runs/piped/head.onnx"),
        ),
        ("tlearn-backbone", vec!["list"], None),
    ] {
        let mut c = Command::new(bin(name))
            .args(&args)
            .current_dir(w)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stdout.take());
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        no_panic(&err);
        assert!(o.status.success(), "{name}: {err}");
        if let Some(p) = product {
            assert!(w.join(p).exists(), "{p} not written");
        }
    }
    // Decoding is bounded by pixels in flight, whatever the number of threads.
    let budget = std::sync::Arc::new(tlearn::imageio::PixelBudget::new(1000));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (budget, peak) = (budget.clone(), peak.clone());
            s.spawn(move || {
                for i in 0..50u64 {
                    let g = budget.acquire(100 + (t * 37 + i * 91) % 700);
                    peak.fetch_max(budget.in_use(), std::sync::atomic::Ordering::SeqCst);
                    std::thread::yield_now();
                    drop(g);
                }
            });
        }
    });
    let p = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(p <= 1000 && p > 0, "peak {p} pixels in flight, budget 1000");
}
