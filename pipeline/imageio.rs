//! Image decoding, resizing and the backbones' input preprocessing.

use crate::error::{Error, IoContext, Result};
use image::{DynamicImage, ImageDecoder, ImageReader};
use ndarray::{Array3, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Images larger than this many pixels are refused before decoding (decompression bombs).
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// How images are resized to the backbone's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Keras' `load_img` default (PIL NEAREST).
    #[default]
    Nearest,
    /// PIL BILINEAR-like (triangle filter, antialiased when shrinking).
    Bilinear,
}

impl crate::params::Choice for Interpolation {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (Interpolation::Nearest, "nearest", "Keras' `load_img` default (PIL NEAREST)"),
        (Interpolation::Bilinear, "bilinear", "PIL BILINEAR-like (triangle filter, antialiased when shrinking)"),
    ];
}

/// A deterministic view of an image, applied after resizing: the flips test-time augmentation and
/// feature augmentation use (they keep the image's size, so they work for any aspect ratio).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// The image as it is.
    #[default]
    Identity,
    /// Mirrored left ↔ right.
    Hflip,
    /// Mirrored top ↔ bottom.
    Vflip,
    /// Both mirrors: a 180° rotation.
    Rot180,
}

impl crate::params::Choice for View {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (View::Identity, "identity", "The image as it is"),
        (View::Hflip, "hflip", "Mirrored left ↔ right"),
        (View::Vflip, "vflip", "Mirrored top ↔ bottom"),
        (View::Rot180, "rot180", "Both mirrors: a 180° rotation"),
    ];
}

impl View {
    /// The (rows, columns) reversals of this view.
    pub fn flips(self) -> (bool, bool) {
        match self {
            View::Identity => (false, false),
            View::Hflip => (false, true),
            View::Vflip => (true, false),
            View::Rot180 => (true, true),
        }
    }

    /// Name used in file names and logs (`hflip`, …).
    pub fn name(self) -> &'static str {
        match self {
            View::Identity => "identity",
            View::Hflip => "hflip",
            View::Vflip => "vflip",
            View::Rot180 => "rot180",
        }
    }

    /// This view of every image of an NHWC batch.
    pub fn of_batch(self, x: ndarray::ArrayViewD<'_, f32>) -> ndarray::ArrayD<f32> {
        let (rows, cols) = self.flips();
        let mut v = x;
        for (flip, axis) in [(rows, 1), (cols, 2)] {
            if flip {
                v.invert_axis(Axis(axis));
            }
        }
        v.as_standard_layout().into_owned()
    }

    /// This view of an HWC image.
    pub fn apply(self, a: Array3<f32>) -> Array3<f32> {
        let (rows, cols) = self.flips();
        let mut v = a.view();
        if rows {
            v.invert_axis(Axis(0));
        }
        if cols {
            v.invert_axis(Axis(1));
        }
        if rows || cols {
            v.as_standard_layout().into_owned()
        } else {
            a
        }
    }
}

/// ITU-R 601 luma weights (R, G, B): PIL's "L" conversion, used for 1-channel models.
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// File extensions the stages treat as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];

pub fn is_image_path(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decode an image file (format sniffed from the content, EXIF orientation applied).
pub fn decode(path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).at(path)?;
    decode_bytes(&bytes, path, max_pixels)
}

/// Decode an image held in memory; `path` names it in errors. Refused before any pixel is
/// allocated: unknown formats, empty or over-`max_pixels` images, and JPEG streams that end before
/// their end-of-image marker (the decoder would pad a truncated file with grey silently).
/// Animated GIF/WebP/PNG give their first frame; CMYK and 16-bit images are converted later.
pub fn decode_bytes(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    decode_in(bytes, path, max_pixels, None).map(|(img, _)| img)
}

/// [`decode_bytes`], holding the image's pixels in `budget` (once its header passed the checks)
/// for as long as the caller keeps the guard.
/// A decoder that panics on a hostile file (a bug in a third-party crate) makes that file a bad
/// file, not a crash of the batch it is in.
fn decode_in<'b>(
    bytes: &[u8],
    path: &Path,
    max_pixels: u64,
    budget: Option<&'b PixelBudget>,
) -> Result<(DynamicImage, Option<PixelGuard<'b>>)> {
    let decode = std::panic::AssertUnwindSafe(|| decode_checked(bytes, path, max_pixels, budget));
    std::panic::catch_unwind(decode).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::BadImage { path: path.into(), reason: format!("the image decoder failed on this file: {what}") })
    })
}

fn decode_checked<'b>(
    bytes: &[u8],
    path: &Path,
    max_pixels: u64,
    budget: Option<&'b PixelBudget>,
) -> Result<(DynamicImage, Option<PixelGuard<'b>>)> {
    let bad = |reason: String| Error::BadImage { path: path.into(), reason };
    if bytes.is_empty() {
        return Err(bad("empty file (0 bytes)".into()));
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let format = reader.format().ok_or_else(|| bad("unknown image format".into()))?;
    let mut sequential = None;
    if format == image::ImageFormat::Jpeg {
        let (eoi, seq) = jpeg_complete(bytes).map_err(|e| bad(e.into()))?;
        sequential = seq.then_some(eoi);
    }
    if format == image::ImageFormat::Png {
        png_palette_whole(bytes).map_err(bad)?;
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    let mut dec = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(bad(format!("empty image ({w}×{h})")));
    }
    if (w as u64) * (h as u64) > max_pixels {
        return Err(bad(format!("{w}×{h} pixels exceeds the limit of {max_pixels}")));
    }
    dec.set_limits(limits).map_err(|e| bad(e.to_string()))?;
    let held = budget.map(|b| b.acquire(w as u64 * h as u64));
    let orientation = dec.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let strict = match sequential {
        Some(eoi) => jpeg_strict(&bytes[..eoi], w, h, dec.color_type()).map_err(bad)?,
        None => None,
    };
    let mut img = match strict {
        Some(img) => img,
        None => DynamicImage::from_decoder(dec).map_err(|e| bad(e.to_string()))?,
    };
    img.apply_orientation(orientation);
    Ok((img, held))
}

/// Decode a sequential (baseline or extended Huffman) JPEG — `data` is the file up to, not
/// including, its end-of-image marker — as the image crate does (same decoder, same colour
/// handling) but strictly: `Err` when the entropy-coded data runs out before the last row of
/// blocks starts (a header that declares more image than the file holds: the lenient decoder
/// stops at the marker and decodes the missing rows from zero bits without a word). Without the
/// marker the data ends where the file does, which the strict decoder notices; 8 zero bytes
/// stand in for the marker so its read-ahead (up to 8 bytes) never reaches that end on a
/// complete file. `Ok(None)` when the strict decoder objects to anything else (the lenient path
/// decodes it).
fn jpeg_strict(
    data: &[u8],
    w: u32,
    h: u32,
    color: image::ColorType,
) -> std::result::Result<Option<DynamicImage>, String> {
    use image::ColorType as T;
    use zune_core::colorspace::ColorSpace as C;
    use zune_jpeg::errors::DecodeErrors as E;
    // The colour space the image crate decodes to (its decoder reports it as `color`).
    let out = match color {
        T::Rgb8 => C::RGB,
        T::Rgba8 => C::RGBA,
        T::L8 => C::Luma,
        T::La8 => C::LumaA,
        _ => return Ok(None),
    };
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(out);
    let mut padded = Vec::with_capacity(data.len() + 8);
    padded.extend_from_slice(data);
    padded.extend_from_slice(&[0; 8]);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(&padded[..]), options);
    let px = match d.decode() {
        Ok(px) => px,
        Err(E::ExhaustedData) => return Err(format!("the JPEG data ends before its {w}×{h} pixels are decoded")),
        Err(e @ (E::FormatStatic(_) | E::Format(_)))
            if ["premature end", "no more bytes"].iter().any(|k| e.to_string().to_lowercase().contains(k)) =>
        {
            return Err(format!("the JPEG data ends before its {w}×{h} pixels are decoded ({e})"))
        }
        Err(_) => return Ok(None),
    };
    let img = match out {
        C::RGB => image::RgbImage::from_raw(w, h, px).map(DynamicImage::ImageRgb8),
        C::RGBA => image::RgbaImage::from_raw(w, h, px).map(DynamicImage::ImageRgba8),
        C::Luma => image::GrayImage::from_raw(w, h, px).map(DynamicImage::ImageLuma8),
        C::LumaA => image::GrayAlphaImage::from_raw(w, h, px).map(DynamicImage::ImageLumaA8),
        _ => None,
    };
    Ok(img)
}

/// Decoded pixels in flight across all decoding threads: a decode waits until its image fits
/// (an image larger than the whole budget runs alone), so peak memory is bounded by pixels, not
/// by how many threads happen to decode large images at once. The budget is an eighth of the
/// available memory at ~6 bytes per decoded pixel (decode, RGB copy, resize), and never less
/// than one largest allowed image ([`DEFAULT_MAX_PIXELS`]).
pub fn decode_budget_pixels() -> u64 {
    crate::memory::available_bytes().map(|b| b / 48).unwrap_or(0).max(DEFAULT_MAX_PIXELS)
}

/// A shared budget of pixels.
pub struct PixelBudget {
    total: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

/// Pixels held until dropped.
pub struct PixelGuard<'a> {
    budget: &'a PixelBudget,
    pixels: u64,
}

impl PixelBudget {
    pub const fn new(total: u64) -> PixelBudget {
        PixelBudget { total, used: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() }
    }

    /// Wait until `pixels` fit (at most the whole budget), then hold them.
    pub fn acquire(&self, pixels: u64) -> PixelGuard<'_> {
        let pixels = pixels.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + pixels > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += pixels;
        PixelGuard { budget: self, pixels }
    }

    /// Pixels held now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PixelGuard<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.pixels;
        self.budget.freed.notify_all();
    }
}

static DECODE_BUDGET: std::sync::OnceLock<PixelBudget> = std::sync::OnceLock::new();

/// Decode the image at `path` and hand it to `use_image` (which typically resizes it) while its
/// pixels are counted against the process-wide decode budget.
pub fn with_decoded<T>(path: &Path, max_pixels: u64, use_image: impl FnOnce(&DynamicImage) -> T) -> Result<T> {
    let bytes = std::fs::read(path).at(path)?;
    let budget = DECODE_BUDGET.get_or_init(|| PixelBudget::new(decode_budget_pixels()));
    let (img, _held) = decode_in(&bytes, path, max_pixels, Some(budget))?;
    Ok(use_image(&img))
}

/// Walk a JPEG's marker segments (skipping APPn payloads, so embedded thumbnails don't count)
/// and require the end-of-image marker after the entropy-coded data.
/// Returns where the end-of-image marker starts, and whether the frame is sequential Huffman
/// (SOF0/SOF1: the frames whose data length [`jpeg_strict`] checks).
fn jpeg_complete(b: &[u8]) -> std::result::Result<(usize, bool), &'static str> {
    let mut sequential = false;
    const TRUNCATED: &str = "truncated JPEG (the data ends before the end-of-image marker)";
    let mut i = 2; // after SOI
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            return Err("corrupt JPEG (marker expected)");
        }
        let m = b[i + 1];
        match m {
            0xFF => i += 1, // fill byte
            0xD9 => return Ok((i, sequential)),
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= b.len() {
                    return Err(TRUNCATED);
                }
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                i += 2 + len;
                if matches!(m, 0xC0 | 0xC1) {
                    sequential = true;
                } else if matches!(m, 0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
                    sequential = false;
                }
                if m == 0xDA {
                    // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or RSTn.
                    while i + 1 < b.len() && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1])) {
                        i += 1;
                    }
                }
            }
        }
    }
    Err(TRUNCATED)
}

/// Walk a PNG's chunks up to its image data and require a palette (PLTE) that holds whole RGB
/// entries: the png crate (0.18.1) indexes past the end of one that does not and panics.
/// Anything else malformed is left to the decoder, which reports it.
fn png_palette_whole(b: &[u8]) -> std::result::Result<(), String> {
    let mut i = 8; // after the signature
    while i + 8 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        match &b[i + 4..i + 8] {
            b"IDAT" | b"IEND" => break,
            b"PLTE" if !len.is_multiple_of(3) => {
                return Err(format!(
                    "corrupt PNG: its palette (PLTE) has {len} bytes, not a whole number of RGB entries"
                ))
            }
            _ => i = i.saturating_add(12).saturating_add(len),
        }
    }
    Ok(())
}

/// Convert to 8-bit RGB (gray replicated, alpha dropped, 16-bit scaled) and resize to
/// `size`×`size`; returns HWC float32 in 0..255.
pub fn to_rgb_array(img: &DynamicImage, size: (u32, u32), interp: Interpolation) -> Array3<f32> {
    let rgb = img.to_rgb8();
    let (w, h) = (size.1, size.0);
    let (iw, ih) = rgb.dimensions();
    let mut out = Array3::<f32>::zeros((h as usize, w as usize, 3));
    match interp {
        Interpolation::Nearest => {
            // PIL's NEAREST: source = floor((dst + 0.5) * in / out).
            let xs: Vec<u32> = (0..w).map(|x| (((x as f64 + 0.5) * iw as f64 / w as f64) as u32).min(iw - 1)).collect();
            for y in 0..h {
                let sy = (((y as f64 + 0.5) * ih as f64 / h as f64) as u32).min(ih - 1);
                for (x, &sx) in xs.iter().enumerate() {
                    let p = rgb.get_pixel(sx, sy).0;
                    for c in 0..3 {
                        out[[y as usize, x, c]] = p[c] as f32;
                    }
                }
            }
        }
        Interpolation::Bilinear => {
            let r = if (iw, ih) == (w, h) {
                rgb
            } else {
                image::imageops::resize(&rgb, w, h, image::imageops::FilterType::Triangle)
            };
            for (x, y, p) in r.enumerate_pixels() {
                for c in 0..3 {
                    out[[y as usize, x as usize, c]] = p.0[c] as f32;
                }
            }
        }
    }
    out
}

/// Load one image as a preprocessed HWC tensor.
pub fn load(
    path: &Path,
    size: (u32, u32),
    interp: Interpolation,
    pre: &Preprocess,
    max_pixels: u64,
) -> Result<Array3<f32>> {
    let mut a = with_decoded(path, max_pixels, |img| to_rgb_array(img, size, interp))?;
    pre.apply(a.view_mut());
    Ok(a)
}

/// Named preprocessing conventions (as in `keras.applications.imagenet_utils`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessKind {
    /// RGB→BGR, minus the ImageNet BGR means (VGG, ResNet50 Keras).
    Caffe,
    /// x / 127.5 − 1 (Inception, MobileNet, Xception).
    Tf,
    /// x / 255, minus ImageNet mean, over ImageNet std, RGB (DenseNet, PyTorch models).
    Torch,
    /// x / 255.
    Unit,
    /// Unchanged 0..255 RGB.
    Raw,
    /// (x − 127) / 128 (TF's EfficientNet-Lite).
    Lite,
}

impl crate::params::Choice for PreprocessKind {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (PreprocessKind::Caffe, "caffe", "RGB→BGR, minus the ImageNet BGR means (VGG, ResNet50 Keras)"),
        (PreprocessKind::Tf, "tf", "x / 127.5 − 1 (Inception, MobileNet, Xception)"),
        (
            PreprocessKind::Torch,
            "torch",
            "x / 255, minus ImageNet mean, over ImageNet std, RGB (DenseNet, PyTorch models)",
        ),
        (PreprocessKind::Unit, "unit", "x / 255"),
        (PreprocessKind::Raw, "raw", "Unchanged 0..255 RGB"),
        (PreprocessKind::Lite, "lite", "(x − 127) / 128 (TF's EfficientNet-Lite)"),
    ];
}

/// The exact per-pixel transform applied to RGB 0..255 input: `(x * scale − mean) / std`, in
/// BGR channel order when `bgr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub kind: PreprocessKind,
    pub bgr: bool,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    pub fn of(kind: PreprocessKind) -> Self {
        let (bgr, scale, mean, std) = match kind {
            PreprocessKind::Caffe => (true, 1.0, [103.939, 116.779, 123.68], [1.0; 3]),
            PreprocessKind::Tf => (false, 1.0 / 127.5, [1.0; 3], [1.0; 3]),
            PreprocessKind::Torch => (false, 1.0 / 255.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            PreprocessKind::Unit => (false, 1.0 / 255.0, [0.0; 3], [1.0; 3]),
            PreprocessKind::Raw => (false, 1.0, [0.0; 3], [1.0; 3]),
            PreprocessKind::Lite => (false, 1.0, [127.0; 3], [128.0; 3]),
        };
        Preprocess { kind, bgr, scale, mean, std }
    }

    /// Override the means (in the model's channel order), e.g. Caffe's integer means.
    pub fn with_mean(mut self, mean: [f32; 3]) -> Self {
        self.mean = mean;
        self
    }

    pub fn apply(&self, mut a: ArrayViewMut3<'_, f32>) {
        for mut px in a.lanes_mut(Axis(2)) {
            let (r, g, b) = (px[0], px[1], px[2]);
            let v = if self.bgr { [b, g, r] } else { [r, g, b] };
            for c in 0..3 {
                px[c] = (v[c] * self.scale - self.mean[c]) / self.std[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_resize_matches_pil_sampling() {
        // 4×1 → 2×1: PIL NEAREST samples source x = floor((x + 0.5) · 2) = 1, 3.
        let img = image::RgbImage::from_fn(4, 1, |x, _| image::Rgb([x as u8 * 10, 0, 0]));
        let a = to_rgb_array(&image::DynamicImage::ImageRgb8(img), (1, 2), Interpolation::Nearest);
        assert_eq!(a.index_axis(Axis(2), 0).iter().copied().collect::<Vec<_>>(), vec![10.0, 30.0]);
    }

    #[test]
    fn gray_and_sixteen_bit_become_rgb() {
        let g = image::GrayImage::from_pixel(3, 3, image::Luma([100]));
        let a = to_rgb_array(&image::DynamicImage::ImageLuma8(g), (3, 3), Interpolation::Bilinear);
        assert!(a.iter().all(|&v| v == 100.0));
        let g16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(2, 2, image::Luma([65535]));
        let a = to_rgb_array(&image::DynamicImage::ImageLuma16(g16), (2, 2), Interpolation::Nearest);
        assert!(a.iter().all(|&v| v == 255.0));
    }

    #[test]
    fn caffe_preprocessing_flips_to_bgr_and_subtracts_means() {
        let mut a = ndarray::Array3::<f32>::zeros((1, 1, 3));
        a[[0, 0, 0]] = 10.0; // R
        a[[0, 0, 2]] = 30.0; // B
        Preprocess::of(PreprocessKind::Caffe).apply(a.view_mut());
        let v: Vec<f32> = a.iter().copied().collect();
        assert!(
            (v[0] - (30.0 - 103.939)).abs() < 1e-4
                && (v[1] + 116.779).abs() < 1e-4
                && (v[2] - (10.0 - 123.68)).abs() < 1e-4,
            "{v:?}"
        );
        let mut b = ndarray::Array3::<f32>::from_elem((1, 1, 3), 255.0);
        Preprocess::of(PreprocessKind::Tf).apply(b.view_mut());
        assert!(b.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn decompression_bombs_and_garbage_are_refused_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.png");
        image::RgbImage::new(200, 200).save(&p).unwrap();
        match decode(&p, 1000) {
            Err(Error::BadImage { path, reason }) => {
                assert!(path == p && reason.contains("exceeds the limit"), "{reason}")
            }
            other => panic!("expected a bad image, got {:?}", other.err()),
        }
        let q = d.path().join("zero.jpg");
        std::fs::write(&q, b"").unwrap();
        assert!(matches!(decode(&q, u64::MAX), Err(Error::BadImage { path, .. }) if path == q));
    }
}
