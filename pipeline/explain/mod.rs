//! Grad-CAM (Selvaraju et al. 2017): where a classifier looks. The gradient of a class score
//! with respect to the last convolutional features, averaged over space per channel, weights
//! those features; the positive part of the weighted sum, scaled to 0..1, is the map.
//!
//! The gradient comes from tlearn's own training-graph compiler, not a second autodiff: a zero
//! parameter `δ` is added to the features (`A + δ`), and the compiled graph's gradient with
//! respect to `δ` is the gradient with respect to `A`. The loss gradient at the logits is
//! `(p − y)/N` for the labels `y` fed, so feeding `y = p + e_c` (p from a first pass) makes it
//! `−e_c/N`: minus the gradient of the class score `z_c` itself (for one sigmoid output, the
//! score of class 1 is `z` and of class 0 is `−z`). Works the same for a fine-tuned net and
//! for a frozen backbone + head fused into one model (the gradient flows through the head into
//! the backbone's feature map).

use crate::error::{Error, Result};
use crate::imageio::Interpolation;
use crate::onnx::cut::{self, Layout};
use crate::onnx::{self, proto::ModelProto};
use crate::runtime::{self, SessionOptions};
use crate::train::Trainer;
use image::RgbImage;
use ndarray::{Array2, Array3, ArrayD, Axis, IxDyn};
use std::path::{Path, PathBuf};

mod folder;
pub use folder::{explain_files, grad_cam, index_name, remove_listed, write_overlay_index, ExplainedFiles, INDEX};

/// The zero parameter added to the features.
const DELTA: &str = "gradcam/delta";
/// The features plus [`DELTA`], read by the nodes that read the features.
const SHIFTED: &str = "gradcam/features";

/// A classifier prepared for Grad-CAM maps.
pub struct GradCam {
    trainer: Trainer,
    /// Inference on the unchanged model, with the features as a second output.
    session: ort::session::Session,
    input: String,
    output: String,
    features: String,
    layout: Layout,
    /// Output width (1 for one sigmoid output).
    width: usize,
    pub size: u32,
    pub interpolation: Interpolation,
}

/// One image's map and what the model said.
pub struct Explained {
    /// (h, w) at the feature map's resolution, 0..1.
    pub cam: Array2<f32>,
    /// The class the map is for.
    pub class: usize,
    /// Class probabilities (as `metrics::class_probs`: two for one sigmoid output).
    pub probs: Vec<f32>,
}

impl GradCam {
    /// `model`: one image input (N, size, size, C) in whatever scale it takes, one
    /// probability output ending in Sigmoid/Softmax (a deployable model without TTA views).
    pub fn new(
        model: &ModelProto,
        what: &Path,
        size: u32,
        interpolation: Interpolation,
        opts: &SessionOptions,
    ) -> Result<GradCam> {
        let (features, layout) = cut::conv_base_end(model, what, size)?;
        let (input, _) = cut::image_input(model, what)?;
        let vi = onnx::graph(model).input.iter().find(|i| i.name == input).expect("image input");
        let channels = onnx::vi_shape(vi).1.get(3).copied().flatten().filter(|&c| c > 0).unwrap_or(3) as usize;
        let sample = [size as usize, size as usize, channels];
        let zero = ArrayD::<f32>::zeros(IxDyn(&[&[1][..], &sample[..]].concat()));
        let output = onnx::graph(model)
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| Error::BadModel { path: what.into(), reason: "no output".into() })?;
        let names = [features.clone(), output.clone()];
        let shapes = onnx::probe::shapes(model, what, vec![(&input, zero.view())], &names)?;
        let fshape = shapes[&features].clone();
        let width = shapes[&output].last().copied().unwrap_or(1).max(1);
        let shifted = with_delta(model, &features, &fshape[1..]);
        let classes = if width == 1 { 2 } else { width };
        let trainer = Trainer::with_trainable(&shifted, what, &sample, classes, opts, &|n| n == DELTA)?;
        let mut probe = model.clone();
        let fdims: Vec<onnx::Dim> = fshape.iter().map(|_| onnx::Dim::named("?")).collect();
        probe.graph.as_mut().expect("graph").output.push(onnx::value_info(
            &features,
            onnx::proto::dtype::FLOAT,
            &fdims,
        ));
        let session = runtime::open(&onnx::encode_model(&probe), what, opts)?.session;
        Ok(GradCam { trainer, session, input, output, features, layout, width, size, interpolation })
    }

    /// The map of `class` (None: the predicted one) for one image (size, size, C) as the model
    /// takes it.
    pub fn explain(&mut self, image: &Array3<f32>, class: Option<usize>) -> Result<Explained> {
        let x = image.clone().insert_axis(Axis(0)).into_dyn();
        let mut out =
            runtime::run_f32(&mut self.session, vec![(&self.input, x.view())], &[&self.output, &self.features])?;
        let a = out.pop().expect("features");
        let p = out.pop().expect("probabilities");
        let row = p.index_axis(Axis(0), 0);
        let probs: Vec<f32> = if self.width == 1 { vec![1.0 - row[0], row[0]] } else { row.iter().copied().collect() };
        let class = match class {
            Some(c) if c >= probs.len() => {
                return Err(Error::Other(format!("Grad-CAM of class {c}: the model has {} classes", probs.len())))
            }
            Some(c) => c,
            None => crate::metrics::predicted_class(row.clone().into_dimensionality().expect("(N, k)")),
        };
        // y = p + e_c (one sigmoid output: class 1 → p + 1, class 0 → p − 1).
        let mut y = p.clone();
        if self.width == 1 {
            y[[0, 0]] += if class == 1 { 1.0 } else { -1.0 };
        } else {
            y[[0, class]] += 1.0;
        }
        let masks: Vec<ArrayD<f32>> = self
            .trainer
            .train
            .masks
            .iter()
            .map(|m| ArrayD::ones(IxDyn(&[&[p.shape()[0]][..], &m.shape[..]].concat())))
            .collect();
        let (_, _, grads) = self.trainer.gradients(x.view(), &y, &masks)?;
        let g = grads[0].mapv(|v| -v);
        Ok(Explained { cam: cam(&a, &g, self.layout), class, probs })
    }
}

/// `m` with `A + δ` (δ zeros of `shape`, broadcast over the batch) read wherever `A` was.
fn with_delta(m: &ModelProto, features: &str, shape: &[usize]) -> ModelProto {
    let mut m = m.clone();
    let g = m.graph.as_mut().expect("graph");
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| *i == features) {
            *i = SHIFTED.into();
        }
    }
    for o in g.output.iter_mut().filter(|o| o.name == features) {
        o.name = SHIFTED.into();
    }
    let at = g.node.iter().position(|n| n.output.iter().any(|o| o == features)).map(|i| i + 1).unwrap_or(0);
    let add = onnx::proto::NodeProto {
        name: "gradcam/add".into(),
        op_type: "Add".into(),
        input: vec![features.into(), DELTA.into()],
        output: vec![SHIFTED.into()],
        ..Default::default()
    };
    g.node.insert(at, add);
    let delta = ArrayD::<f32>::zeros(IxDyn(&[&[1][..], shape].concat()));
    g.initializer.push(onnx::tensor_f32(DELTA, &delta));
    m
}

/// ReLU(Σ_k α_k A_k), α_k the spatial mean of the gradient G_k; scaled to max 1 (all zero when
/// nothing speaks for the class). `a`, `g`: (1, C, h, w) or (1, h, w, C).
fn cam(a: &ArrayD<f32>, g: &ArrayD<f32>, layout: Layout) -> Array2<f32> {
    let (a, g) = match layout {
        Layout::Nchw => (a.index_axis(Axis(0), 0).to_owned(), g.index_axis(Axis(0), 0).to_owned()),
        Layout::Nhwc => {
            let t = |x: &ArrayD<f32>| x.index_axis(Axis(0), 0).permuted_axes(IxDyn(&[2, 0, 1])).to_owned();
            (t(a), t(g))
        }
    };
    let (c, h, w) = (a.shape()[0], a.shape()[1], a.shape()[2]);
    let mut map = Array2::<f32>::zeros((h, w));
    for k in 0..c {
        let gk = g.index_axis(Axis(0), k);
        let alpha = gk.mean().unwrap_or(0.0);
        map.scaled_add(alpha, &a.index_axis(Axis(0), k).into_dimensionality::<ndarray::Ix2>().expect("2-D"));
    }
    map.mapv_inplace(|v| v.max(0.0));
    let max = map.fold(0f32, |m, &v| m.max(v));
    if max > 0.0 {
        map /= max;
    }
    map
}

/// `image` (RGB) with `cam` upsampled (bilinear) over it as a blue → red heat map, half opaque.
pub fn overlay(image: &RgbImage, cam: &Array2<f32>) -> RgbImage {
    let (w, h) = image.dimensions();
    let (ch, cw) = cam.dim();
    let mut out = image.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        // Pixel centres onto the map's cell centres.
        let fy = ((y as f32 + 0.5) * ch as f32 / h as f32 - 0.5).clamp(0.0, (ch - 1) as f32);
        let fx = ((x as f32 + 0.5) * cw as f32 / w as f32 - 0.5).clamp(0.0, (cw - 1) as f32);
        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(ch - 1), (x0 + 1).min(cw - 1));
        let (dy, dx) = (fy - y0 as f32, fx - x0 as f32);
        let v = (1.0 - dy) * ((1.0 - dx) * cam[[y0, x0]] + dx * cam[[y0, x1]])
            + dy * ((1.0 - dx) * cam[[y1, x0]] + dx * cam[[y1, x1]]);
        let heat = jet(v);
        for (p, h) in px.0.iter_mut().zip(heat) {
            *p = (0.5 * *p as f32 + 0.5 * h).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// The "jet" colour map: 0 blue → 0.5 green → 1 red.
fn jet(v: f32) -> [f32; 3] {
    let f = |d: f32| (1.5 - (4.0 * v - d).abs()).clamp(0.0, 1.0) * 255.0;
    [f(3.0), f(2.0), f(1.0)]
}

/// The map of `class` (None: the predicted one) for the image file `path` (decoded — up to
/// `max_pixels` — and resized as the model is fed), its overlay written to `png` as PNG; returns
/// the map and the PNG bytes.
pub fn file(
    cam: &mut GradCam,
    path: &Path,
    class: Option<usize>,
    max_pixels: u64,
    png: &Path,
) -> Result<(Explained, Vec<u8>)> {
    let size = (cam.size, cam.size);
    let x = crate::imageio::with_decoded(path, max_pixels, |img| {
        crate::imageio::to_rgb_array(img, size, cam.interpolation)
    })?;
    let e = cam.explain(&x, class)?;
    let (h, w) = (x.shape()[0] as u32, x.shape()[1] as u32);
    let rgb = RgbImage::from_fn(w, h, |c, r| image::Rgb([0, 1, 2].map(|k| x[[r as usize, c as usize, k]] as u8)));
    let bytes = write_png(png, &overlay(&rgb, &e.cam))?;
    Ok((e, bytes))
}

/// Where [`write_png`] puts the overlay of image number `i` named `name`.
/// Characters of an image's stem kept in its overlay's name.
pub const MAX_STEM: usize = 80;

pub fn png_path(dir: &Path, i: usize, name: &str) -> PathBuf {
    let stem: String = Path::new(name)
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                // Bounded, so a long name never makes a file name past the file system's limit.
                .take(MAX_STEM)
                .collect()
        })
        .unwrap_or_default();
    dir.join(format!("{i:05}-{stem}.png"))
}

/// The overlay as PNG bytes, written atomically to `path`.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(vec![]);
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    let bytes = buf.into_inner();
    crate::fsutil::write_bytes_atomic(path, &bytes)?;
    Ok(bytes)
}
