//! On-the-fly augmentation with Keras `ImageDataGenerator` semantics: one affine transform per
//! image (rotation, shifts, shear, zoom) about the image centre, sampled bilinearly (Keras'
//! `interpolation_order=1`) with a fill mode for the outside, then the flips, then `rescale`.
//! Each image gets its own ChaCha8 stream seeded from the batch stream, so a batch is the same
//! whatever the number of threads.

use ndarray::{Array4, ArrayD, ArrayView3, ArrayView4, ArrayViewMut3, Axis};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// What lies outside the input after a transform (scipy's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    /// The nearest edge pixel (Keras' default).
    #[default]
    Nearest,
    /// `cval`.
    Constant,
    /// Mirror about the edge (d c b a | a b c d | d c b a).
    Reflect,
    /// Periodic.
    Wrap,
}

impl crate::params::Choice for FillMode {
    const ALL: &'static [(Self, &'static str, &'static str)] = &[
        (FillMode::Nearest, "nearest", "The nearest edge pixel (Keras' default)"),
        (FillMode::Constant, "constant", "`cval`"),
        (FillMode::Reflect, "reflect", "Mirror about the edge (d c b a | a b c d | d c b a)"),
        (FillMode::Wrap, "wrap", "Periodic"),
    ];
}

/// Random transform ranges, as in `ImageDataGenerator(...)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Augment {
    /// Degrees: θ ~ U(−r, r).
    pub rotation_range: f32,
    /// Fraction of the width (< 1) or pixels (≥ 1).
    pub width_shift_range: f32,
    /// Fraction of the height (< 1) or pixels (≥ 1).
    pub height_shift_range: f32,
    /// Shear angle in degrees: U(−s, s).
    pub shear_range: f32,
    /// Zoom factors U(1 − z, 1 + z), drawn for rows and columns independently.
    pub zoom_range: f32,
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    pub fill_mode: FillMode,
    /// The value outside the input with `FillMode::Constant` (0..255 scale).
    pub cval: f32,
    /// A random multiple of 90° after the flips (square images; others get 0° or 180°): with
    /// the flips, all eight symmetries of the square.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rot90: bool,
    /// Keras' `brightness_range` (lo, hi): pixels times a factor U(lo, hi), clipped to 0..255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brightness_range: Option<(f32, f32)>,
    /// Contrast factor U(1 − c, 1 + c) about the image's mean (PIL's `ImageEnhance.Contrast`),
    /// clipped to 0..255; applied before the brightness.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub contrast_range: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// One drawn transform.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    pub theta: f32,
    pub tx: f32,
    pub ty: f32,
    pub shear: f32,
    pub zx: f32,
    pub zy: f32,
    pub flip_h: bool,
    pub flip_v: bool,
    /// Quarter turns (0..4) counter-clockwise after the flips.
    pub rot90: u8,
    pub brightness: f32,
    pub contrast: f32,
}

impl Transform {
    /// The transform that changes nothing.
    pub fn identity() -> Self {
        Transform {
            theta: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip_h: false,
            flip_v: false,
            rot90: 0,
            brightness: 1.0,
            contrast: 1.0,
        }
    }
}

fn uniform(rng: &mut impl Rng, r: f32) -> f32 {
    if r > 0.0 {
        rng.gen_range(-r..r)
    } else {
        0.0
    }
}

impl Augment {
    /// The classic cats-vs-dogs setting of "Deep Learning with Python" (5.2.5).
    pub fn classic() -> Self {
        Augment {
            rotation_range: 40.0,
            width_shift_range: 0.2,
            height_shift_range: 0.2,
            shear_range: 0.2,
            zoom_range: 0.2,
            horizontal_flip: true,
            ..Default::default()
        }
    }

    pub fn is_identity(&self) -> bool {
        self.rotation_range == 0.0
            && self.width_shift_range == 0.0
            && self.height_shift_range == 0.0
            && self.shear_range == 0.0
            && self.zoom_range == 0.0
            && !self.horizontal_flip
            && !self.vertical_flip
            && !self.rot90
            && self.brightness_range.is_none()
            && self.contrast_range == 0.0
    }

    /// Draw a transform for an image of `h`×`w` (Keras' `get_random_transform` order).
    pub fn draw(&self, rng: &mut impl Rng, h: usize, w: usize) -> Transform {
        let theta = uniform(rng, self.rotation_range);
        // A range < 1 is a fraction of the size, else pixels.
        let pixels = |v: f32, r: f32, n: usize| if r < 1.0 { v * n as f32 } else { v.round() };
        let tx = pixels(uniform(rng, self.height_shift_range), self.height_shift_range, h);
        let ty = pixels(uniform(rng, self.width_shift_range), self.width_shift_range, w);
        let shear = uniform(rng, self.shear_range);
        let (zx, zy) = if self.zoom_range > 0.0 {
            (
                rng.gen_range(1.0 - self.zoom_range..1.0 + self.zoom_range),
                rng.gen_range(1.0 - self.zoom_range..1.0 + self.zoom_range),
            )
        } else {
            (1.0, 1.0)
        };
        let flip_h = self.horizontal_flip && rng.gen::<f32>() < 0.5;
        let flip_v = self.vertical_flip && rng.gen::<f32>() < 0.5;
        // Drawn after Keras' own, so settings without them draw the same stream as before.
        let rot90 = match self.rot90 {
            true if h == w => rng.gen_range(0..4u8),
            true => 2 * rng.gen_range(0..2u8),
            false => 0,
        };
        let brightness = self.brightness_range.map(|(lo, hi)| if hi > lo { rng.gen_range(lo..hi) } else { lo });
        let contrast = if self.contrast_range > 0.0 { 1.0 + uniform(rng, self.contrast_range) } else { 1.0 };
        Transform {
            theta,
            tx,
            ty,
            shear,
            zx,
            zy,
            flip_h,
            flip_v,
            rot90,
            brightness: brightness.unwrap_or(1.0),
            contrast,
        }
    }

    /// Augmented float batch of rows `idx` of `x` (N,H,W,C), multiplied by `rescale`.
    pub fn batch(&self, x: ArrayView4<'_, u8>, idx: &[usize], rescale: f32, rng: &mut impl Rng) -> ArrayD<f32> {
        let (_, h, w, c) = x.dim();
        let seeds: Vec<u64> = idx.iter().map(|_| rng.gen()).collect();
        let mut out = Array4::<f32>::zeros((idx.len(), h, w, c));
        out.axis_iter_mut(Axis(0)).into_par_iter().zip(idx.par_iter().zip(seeds.par_iter())).for_each(
            |(mut o, (&i, &seed))| {
                let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let t = self.draw(&mut r, h, w);
                apply(&t, x.index_axis(Axis(0), i), o.view_mut(), self.fill_mode, self.cval);
                o.mapv_inplace(|v| v * rescale);
            },
        );
        out.into_dyn()
    }
}

/// Map a coordinate outside [0, n) into it per the fill mode; None = constant.
fn fold(i: i64, n: i64, mode: FillMode) -> Option<usize> {
    if (0..n).contains(&i) {
        return Some(i as usize);
    }
    Some(match mode {
        FillMode::Constant => return None,
        FillMode::Nearest => i.clamp(0, n - 1) as usize,
        FillMode::Wrap => i.rem_euclid(n) as usize,
        FillMode::Reflect => {
            let p = i.rem_euclid(2 * n);
            (if p < n { p } else { 2 * n - 1 - p }) as usize
        }
    })
}

/// Apply `t` to one HWC image (Keras' `apply_affine_transform`, then flips) into `out`.
pub fn apply(t: &Transform, src: ArrayView3<'_, u8>, mut out: ArrayViewMut3<'_, f32>, mode: FillMode, cval: f32) {
    let (h, w, c) = src.dim();
    // Output (row, col) → input (row, col): M = R(θ)·T(tx,ty)·Shear·Zoom about the centre.
    let (th, sh) = (t.theta.to_radians() as f64, t.shear.to_radians() as f64);
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut m = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        m
    };
    let mut m = [[th.cos(), -th.sin(), 0.0], [th.sin(), th.cos(), 0.0], [0.0, 0.0, 1.0]];
    m = mul(m, [[1.0, 0.0, t.tx as f64], [0.0, 1.0, t.ty as f64], [0.0, 0.0, 1.0]]);
    m = mul(m, [[1.0, -sh.sin(), 0.0], [0.0, sh.cos(), 0.0], [0.0, 0.0, 1.0]]);
    m = mul(m, [[t.zx as f64, 0.0, 0.0], [0.0, t.zy as f64, 0.0], [0.0, 0.0, 1.0]]);
    let (oy, ox) = (h as f64 / 2.0 - 0.5, w as f64 / 2.0 - 0.5);
    m = mul([[1.0, 0.0, oy], [0.0, 1.0, ox], [0.0, 0.0, 1.0]], m);
    m = mul(m, [[1.0, 0.0, -oy], [0.0, 1.0, -ox], [0.0, 0.0, 1.0]]);
    let (hi, wi) = (h as i64, w as i64);
    for r in 0..h {
        for col in 0..w {
            let (rf, cf) = (r as f64, col as f64);
            let y = m[0][0] * rf + m[0][1] * cf + m[0][2];
            let x = m[1][0] * rf + m[1][1] * cf + m[1][2];
            let (y0, x0) = (y.floor() as i64, x.floor() as i64);
            let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
            let orow = if t.flip_v { h - 1 - r } else { r };
            let ocol = if t.flip_h { w - 1 - col } else { col };
            // Where (orow, ocol) lands after the quarter turns (np.rot90's direction).
            let (orow, ocol) = match t.rot90 % 4 {
                0 => (orow, ocol),
                1 => (w - 1 - ocol, orow),
                2 => (h - 1 - orow, w - 1 - ocol),
                _ => (ocol, h - 1 - orow),
            };
            for ch in 0..c {
                let px = |yy: i64, xx: i64| match (fold(yy, hi, mode), fold(xx, wi, mode)) {
                    (Some(a), Some(b)) => src[[a, b, ch]] as f32,
                    _ => cval,
                };
                let v = (1.0 - fy) * ((1.0 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
                    + fy * ((1.0 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1));
                out[[orow, ocol, ch]] = v;
            }
        }
    }
    photometric(t, out);
}

/// Contrast about the mean, then brightness, each clipped to 0..255 (PIL's enhancers).
fn photometric(t: &Transform, mut out: ArrayViewMut3<'_, f32>) {
    if t.contrast != 1.0 {
        let mean = out.mean().unwrap_or(0.0);
        out.mapv_inplace(|v| (mean + t.contrast * (v - mean)).clamp(0.0, 255.0));
    }
    if t.brightness != 1.0 {
        out.mapv_inplace(|v| (v * t.brightness).clamp(0.0, 255.0));
    }
}

/// Write a grid (4×4) of augmented versions of `img` at the model's input (H, W, C) to `out` (PNG).
pub fn preview(
    img: &std::path::Path,
    aug: &Augment,
    input: [usize; 3],
    interp: crate::imageio::Interpolation,
    seed: u64,
    out: &std::path::Path,
) -> crate::Result<()> {
    let [h, w, _] = input;
    let decoded = crate::imageio::decode(img, crate::imageio::DEFAULT_MAX_PIXELS)?;
    let a = crate::imageio::to_rgb_array(&decoded, (h as u32, w as u32), interp).mapv(|v| v.round() as u8);
    let x = a.insert_axis(Axis(0)).to_owned();
    let (cols, rows, pad) = (4usize, 4usize, 4usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let batch = aug.batch(x.view(), &vec![0; cols * rows], 1.0, &mut rng);
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for (k, v) in batch.axis_iter(Axis(0)).enumerate() {
        let (ox, oy) = (pad + (k % cols) * (w + pad), pad + (k / cols) * (h + pad));
        for y in 0..h {
            for xx in 0..w {
                let p = |c: usize| v[[y, xx, c]].round().clamp(0.0, 255.0) as u8;
                grid.put_pixel((ox + xx) as u32, (oy + y) as u32, image::Rgb([p(0), p(1), p(2)]));
            }
        }
    }
    let mut bytes = std::io::Cursor::new(vec![]);
    grid.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| crate::Error::Other(e.to_string()))?;
    crate::fsutil::write_bytes_atomic(out, bytes.get_ref())
}
