//! A MaxPool window over one (H, W) plane, and the plane functions of [`MAX_POOL`] and
//! [`MAX_POOL_GRAD`] (plain functions, tested beside them against MaxPool's definition).
//!
//! Windows that tile the plane (stride = window, no pads: Keras' MaxPooling2D) take loops that
//! vectorise; others (overlapping or padded: ResNet's 3×3 stride-2 stem pool) a general one, whose
//! gradient adds where windows share a position, in the order ScatterElements(add) does.

#[cfg(doc)]
use super::names::{MAX_POOL, MAX_POOL_GRAD};
use std::ops::Range;

/// A pooling window over one (H, W) plane: its size (kh, kw), strides (sh, sw), top and left pads
/// (pt, pl) and the pooled plane's size (oh, ow), MaxPool's floor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Window {
    /// The window `kernel` at `strides` over an (h, w) plane with `pads` (top, left, bottom,
    /// right), as ONNX MaxPool defines them.
    pub fn new((h, w): (usize, usize), kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4]) -> Window {
        let out =
            |n: usize, k: usize, s: usize, a: usize, b: usize| (n + a + b).checked_sub(k).map_or(0, |r| r / s + 1);
        let [kh, kw] = kernel;
        let [sh, sw] = strides;
        let (oh, ow) = (out(h, kh, sh, pads[0], pads[2]), out(w, kw, sw, pads[1], pads[3]));
        Window { h, w, kh, kw, sh, sw, pt: pads[0], pl: pads[1], oh, ow }
    }

    /// Windows side by side: stride = window, no pads.
    fn tiles(&self) -> bool {
        self.sh == self.kh && self.sw == self.kw && self.pt == 0 && self.pl == 0
    }
}

/// The outputs (of `outputs`) whose tap `j` (stride `s`, pad `pad`) lands inside an axis of `n`.
pub(super) fn span(outputs: usize, s: usize, pad: usize, j: usize, n: usize) -> Range<usize> {
    let lo = pad.saturating_sub(j).div_ceil(s);
    let hi = (n + pad).checked_sub(j + 1).map_or(0, |last| last / s + 1).min(outputs);
    lo..hi.max(lo)
}

/// Pool one plane `x` into `y`, with `a` the row-major offset in its window of each output's
/// first maximum (scanned in MaxPool's order, a later equal value never replacing it).
pub fn max_pool_argmax(x: &[f32], p: Window, y: &mut [f32], a: &mut [u8]) {
    match (p.tiles(), p.kw) {
        (true, 2) => tiled::<2>(x, p, y, a),
        (true, 3) => tiled::<3>(x, p, y, a),
        (true, _) => tiled::<0>(x, p, y, a),
        (false, _) if p.sw == 2 => general::<2>(x, p, y, a),
        (false, _) => general::<0>(x, p, y, a),
    }
}

/// [`max_pool_argmax`] for tiling windows `KW` wide (0: `p.kw`), branch-free so that it vectorises.
fn tiled<const KW: usize>(x: &[f32], p: Window, y: &mut [f32], a: &mut [u8]) {
    let kw = if KW == 0 { p.kw } else { KW };
    let ow = p.ow;
    for oy in 0..p.oh {
        let (yr, ar) = (&mut y[oy * ow..][..ow], &mut a[oy * ow..][..ow]);
        for i in 0..p.kh {
            let row = &x[(oy * p.kh + i) * p.w..][..ow * kw];
            for j in 0..kw {
                let k = (i * kw + j) as u8;
                let first = i + j == 0;
                for ((c, y), a) in row.chunks_exact(kw).zip(yr.iter_mut()).zip(ar.iter_mut()) {
                    let v = c[j];
                    let take = first || v > *y;
                    *y = if take { v } else { *y };
                    *a = if take { k } else { *a };
                }
            }
        }
    }
}

/// [`max_pool_argmax`] for any window, strides `SW` wide (0: `p.sw`): each tap row by row over
/// the outputs it reaches, its inputs read as the first of each group of `sw` columns, so that
/// the loop vectorises.
fn general<const SW: usize>(x: &[f32], p: Window, y: &mut [f32], a: &mut [u8]) {
    let sw = if SW == 0 { p.sw } else { SW };
    y.fill(f32::NEG_INFINITY);
    a.fill(0);
    for oy in 0..p.oh {
        let (yr, ar) = (&mut y[oy * p.ow..][..p.ow], &mut a[oy * p.ow..][..p.ow]);
        for i in 0..p.kh {
            let Some(yy) = (oy * p.sh + i).checked_sub(p.pt).filter(|&r| r < p.h) else { continue };
            let row = &x[yy * p.w..][..p.w];
            for j in 0..p.kw {
                let k = (i * p.kw + j) as u8;
                let outs = span(p.ow, sw, p.pl, j, p.w);
                let Some(first) = (outs.start * sw + j).checked_sub(p.pl).filter(|_| !outs.is_empty()) else {
                    continue;
                };
                let take = |v: f32, y: &mut f32, a: &mut u8| {
                    let t = v > *y;
                    *y = if t { v } else { *y };
                    *a = if t { k } else { *a };
                };
                // Whole groups of sw columns, then the last tap alone where its group is short.
                let groups = row[first..].chunks_exact(sw);
                let whole = groups.len().min(outs.len());
                let (ys, as_) = (&mut yr[outs.clone()], &mut ar[outs.clone()]);
                for ((c, y), a) in groups.zip(ys.iter_mut()).zip(as_.iter_mut()) {
                    take(c[0], y, a);
                }
                if whole < outs.len() {
                    take(row[first + whole * sw], &mut ys[whole], &mut as_[whole]);
                }
            }
        }
    }
}

/// One plane's input gradient `dx` from the pooled gradient `dy` and the argmax bytes `a`: each
/// window's first maximum gets its output's gradient (summed where windows share it), every
/// other position zero; with the pooled map `y`, zero also where y ≤ 0 (the ReLU′ of a Relu
/// feeding the pool).
pub fn max_pool_argmax_grad(dy: &[f32], a: &[u8], y: Option<&[f32]>, p: Window, dx: &mut [f32]) {
    match (p.tiles(), p.kw, y) {
        (true, 2, None) => tiled_grad::<2, false>(dy, a, dy, p, dx),
        (true, 2, Some(y)) => tiled_grad::<2, true>(dy, a, y, p, dx),
        (true, _, None) => tiled_grad::<0, false>(dy, a, dy, p, dx),
        (true, _, Some(y)) => tiled_grad::<0, true>(dy, a, y, p, dx),
        (false, _, None) => general_grad::<false>(dy, a, dy, p, dx),
        (false, _, Some(y)) => general_grad::<true>(dy, a, y, p, dx),
    }
}

/// [`max_pool_argmax_grad`] for tiling windows `KW` wide (0: `p.kw`), with ReLU′ from `y` if
/// `RELU`: a window row's input rows zeroed (memset), then each output's gradient stored at its
/// argmax, while those rows are in the cache.
fn tiled_grad<const KW: usize, const RELU: bool>(dy: &[f32], a: &[u8], y: &[f32], p: Window, dx: &mut [f32]) {
    let kw = if KW == 0 { p.kw } else { KW };
    let ow = p.ow;
    let (windows, rest) = dx.split_at_mut(p.oh * p.kh * p.w);
    rest.fill(0.0);
    for (oy, rows) in windows.chunks_exact_mut(p.kh * p.w).enumerate() {
        rows.fill(0.0);
        let (dyr, ar, yr) = (&dy[oy * ow..][..ow], &a[oy * ow..][..ow], &y[oy * ow..][..ow]);
        for ox in 0..ow {
            let g = if !RELU || yr[ox] > 0.0 { dyr[ox] } else { 0.0 };
            let at = ar[ox] as usize;
            rows[(at / kw) * p.w + ox * kw + at % kw] = g;
        }
    }
}

/// [`max_pool_argmax_grad`] for any window: dX zeroed, then each output's gradient added at its
/// argmax, outputs in row-major order.
fn general_grad<const RELU: bool>(dy: &[f32], a: &[u8], y: &[f32], p: Window, dx: &mut [f32]) {
    dx.fill(0.0);
    for (o, ((&d, &at), &yv)) in dy.iter().zip(a).zip(y).enumerate().take(p.oh * p.ow) {
        let g = if !RELU || yv > 0.0 { d } else { 0.0 };
        let (i, j) = (at as usize / p.kw, at as usize % p.kw);
        let yy = ((o / p.ow) * p.sh + i).checked_sub(p.pt).filter(|&r| r < p.h);
        let xx = ((o % p.ow) * p.sw + j).checked_sub(p.pl).filter(|&c| c < p.w);
        if let (Some(yy), Some(xx)) = (yy, xx) {
            dx[yy * p.w + xx] += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MaxPool by its definition: each output's value and the plane position of its first maximum.
    fn reference(x: &[f32], p: Window) -> (Vec<f32>, Vec<usize>) {
        let mut out = (vec![], vec![]);
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                let (mut best, mut at) = (f32::MIN, usize::MAX);
                for (i, j) in (0..p.kh).flat_map(|i| (0..p.kw).map(move |j| (i, j))) {
                    let yy = (oy * p.sh + i).checked_sub(p.pt).filter(|&r| r < p.h);
                    let xx = (ox * p.sw + j).checked_sub(p.pl).filter(|&c| c < p.w);
                    if let (Some(yy), Some(xx)) = (yy, xx) {
                        if x[yy * p.w + xx] > best {
                            (best, at) = (x[yy * p.w + xx], yy * p.w + xx);
                        }
                    }
                }
                out.0.push(best);
                out.1.push(at);
            }
        }
        out
    }

    #[test]
    fn pools_and_routes_like_maxpool_with_indices_and_its_scatter() {
        let windows = [
            // Tiling, odd sizes (a row and a column dropped), 2×2 and 3×2.
            Window::new((7, 9), [2, 2], [2, 2], [0; 4]),
            Window::new((6, 5), [3, 2], [3, 2], [0; 4]),
            // Overlapping (ResNet's stem pool) and padded, odd and even.
            Window::new((9, 8), [3, 3], [2, 2], [0; 4]),
            Window::new((7, 6), [3, 3], [2, 2], [1, 1, 1, 1]),
            Window::new((5, 7), [2, 3], [1, 2], [0, 1, 1, 0]),
        ];
        for p in windows {
            // Ties (values mod 13): the first maximum wins.
            let x: Vec<f32> = (0..p.h * p.w).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let (mut y, mut a) = (vec![0.0; p.oh * p.ow], vec![0; p.oh * p.ow]);
            max_pool_argmax(&x, p, &mut y, &mut a);
            let (want_y, want_at) = reference(&x, p);
            assert_eq!(y, want_y, "{p:?}");
            let dy: Vec<f32> = (0..p.oh * p.ow).map(|i| i as f32 + 1.0).collect();
            for relu in [false, true] {
                let mut dx = vec![f32::NAN; p.h * p.w];
                max_pool_argmax_grad(&dy, &a, relu.then_some(&y[..]), p, &mut dx);
                let mut want = vec![0.0; p.h * p.w];
                for (o, &at) in want_at.iter().enumerate() {
                    want[at] += if relu && y[o] <= 0.0 { 0.0 } else { dy[o] };
                }
                assert_eq!(dx, want, "{p:?}, relu {relu}");
            }
        }
    }

    #[test]
    fn counts_whole_windows_and_the_taps_inside() {
        assert_eq!(Window::new((114, 114), [3, 3], [2, 2], [0; 4]).oh, 56);
        assert_eq!(Window::new((7, 7), [3, 3], [2, 2], [1, 1, 1, 1]).ow, 4);
        assert_eq!(Window::new((1, 1), [2, 2], [2, 2], [0; 4]).oh, 0);
        // Tap 0 with a pad of 1 reaches from output 1; tap 2 of an axis of 7 at stride 2 up to 3.
        assert_eq!(span(4, 2, 1, 0, 7), 1..4);
        assert_eq!(span(4, 2, 1, 2, 7), 0..3);
    }
}
