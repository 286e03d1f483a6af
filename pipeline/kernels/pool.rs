//! [`MAX_POOL`] and [`MAX_POOL_GRAD`]: a plane's kernels (plain functions, tested beside them) and
//! the operators that run them plane by plane on onnxruntime's intra-op threads.

use super::names::{MAX_POOL, MAX_POOL_GRAD, MAX_WINDOW};
use super::shared::Shared;
use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType as T;

/// One (H, W) plane and its pooling window, which is also its stride.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plane {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
}

impl Plane {
    /// The pooled plane's size: whole windows only (MaxPool's floor).
    pub fn pooled(&self) -> (usize, usize) {
        (self.h / self.kh, self.w / self.kw)
    }
}

/// Pool one plane `x` into `y`, with `a` the row-major offset in its window of each output's
/// first maximum (scanned in MaxPool's order, a later equal value never replacing it).
pub fn max_pool_argmax(x: &[f32], p: Plane, y: &mut [f32], a: &mut [u8]) {
    match p.kw {
        2 => pool_plane::<2>(x, p, y, a),
        3 => pool_plane::<3>(x, p, y, a),
        _ => pool_plane::<0>(x, p, y, a),
    }
}

/// [`max_pool_argmax`] for windows `KW` wide (0: `p.kw`), branch-free so that it vectorises.
fn pool_plane<const KW: usize>(x: &[f32], p: Plane, y: &mut [f32], a: &mut [u8]) {
    let kw = if KW == 0 { p.kw } else { KW };
    let (oh, ow) = p.pooled();
    for oy in 0..oh {
        let (yr, ar) = (&mut y[oy * ow..][..ow], &mut a[oy * ow..][..ow]);
        yr.fill(f32::NEG_INFINITY);
        ar.fill(0);
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

/// One plane's input gradient `dx` from the pooled gradient `dy` and the argmax bytes `a`: each
/// window's first maximum gets its output's gradient, every other position zero; with the pooled
/// map `y`, zero also where y ≤ 0 (the ReLU′ of a Relu feeding the pool).
pub fn max_pool_argmax_grad(dy: &[f32], a: &[u8], y: Option<&[f32]>, p: Plane, dx: &mut [f32]) {
    match (p.kw, y) {
        (2, None) => grad_plane::<2, false>(dy, a, dy, p, dx),
        (2, Some(y)) => grad_plane::<2, true>(dy, a, y, p, dx),
        (_, None) => grad_plane::<0, false>(dy, a, dy, p, dx),
        (_, Some(y)) => grad_plane::<0, true>(dy, a, y, p, dx),
    }
}

/// [`max_pool_argmax_grad`] for windows `KW` wide (0: `p.kw`), with ReLU′ from `y` if `RELU`:
/// a window row's input rows zeroed (memset), then each output's gradient stored at its argmax,
/// while those rows are in the cache.
fn grad_plane<const KW: usize, const RELU: bool>(dy: &[f32], a: &[u8], y: &[f32], p: Plane, dx: &mut [f32]) {
    let kw = if KW == 0 { p.kw } else { KW };
    let (oh, ow) = p.pooled();
    let (windows, rest) = dx.split_at_mut(oh * p.kh * p.w);
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

/// The operator of [`MAX_POOL`].
pub(super) struct Forward;
/// The operator of [`MAX_POOL_GRAD`].
pub(super) struct Backward;

impl Operator for Forward {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        MAX_POOL
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(T::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32), OperatorOutput::required(T::Uint8)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let window = window(k, MAX_POOL)?;
        Ok(Box::new(move |ctx: &ComputeContext| forward(ctx, window)))
    }
}

impl Operator for Backward {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        MAX_POOL_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(T::Float32),
            OperatorInput::required(T::Uint8),
            OperatorInput::required(T::Int64),
            OperatorInput::optional(T::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let window = window(k, MAX_POOL_GRAD)?;
        Ok(Box::new(move |ctx: &ComputeContext| backward(ctx, window)))
    }
}

fn window(k: &KernelContext<'_>, op: &str) -> ort::Result<(usize, usize)> {
    match k.get::<Vec<i64>>("kernel_shape").as_deref() {
        Some(&[kh, kw]) if kh > 0 && kw > 0 && kh * kw <= MAX_WINDOW => Ok((kh as usize, kw as usize)),
        _ => Err(ort::Error::new(format!(
            "{op}: kernel_shape must be two sizes, a window of 1 to {MAX_WINDOW} positions"
        ))),
    }
}

fn error(op: &str, what: &str) -> ort::Error {
    ort::Error::new(format!("{op}: {what}"))
}

/// An (N, C, H, W) shape as (planes, plane).
fn planes(shape: &[i64], (kh, kw): (usize, usize), op: &str) -> ort::Result<(usize, Plane)> {
    match *shape {
        [n, c, h, w] if [n, c, h, w].iter().all(|&d| d >= 0) => {
            Ok(((n * c) as usize, Plane { h: h as usize, w: w as usize, kh, kw }))
        }
        _ => Err(error(op, &format!("expected an (N, C, H, W) input, got shape {shape:?}"))),
    }
}

fn forward(ctx: &ComputeContext, window: (usize, usize)) -> ort::Result<()> {
    let x = ctx.input(0)?.ok_or_else(|| error(MAX_POOL, "no input"))?;
    let (shape, x) = x.try_extract_tensor::<f32>()?;
    let (count, p) = planes(shape, window, MAX_POOL)?;
    let (oh, ow) = p.pooled();
    let out = vec![shape[0], shape[1], oh as i64, ow as i64];
    let mut y = ctx.output(0, out.clone())?.ok_or_else(|| error(MAX_POOL, "no output Y"))?;
    let mut a = ctx.output(1, out)?.ok_or_else(|| error(MAX_POOL, "no output A"))?;
    let ys = Shared(y.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
    let as_ = Shared(a.try_extract_tensor_mut::<u8>()?.1.as_mut_ptr());
    let (inp, outp) = (p.h * p.w, oh * ow);
    ctx.par_for(count, 0, move |i| {
        // SAFETY: iteration i writes plane i of Y and A only; both hold `count` planes.
        let (yp, ap) = unsafe { (ys.part(i * outp, outp), as_.part(i * outp, outp)) };
        max_pool_argmax(&x[i * inp..][..inp], p, yp, ap);
    })
}

fn backward(ctx: &ComputeContext, window: (usize, usize)) -> ort::Result<()> {
    let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| error(MAX_POOL_GRAD, &format!("no input {what}")));
    let (dy, a, s) = (input(0, "dY")?, input(1, "A")?, input(2, "shape")?);
    let y = if ctx.num_inputs()? > 3 { ctx.input(3)? } else { None };
    let (dys, dy) = dy.try_extract_tensor::<f32>()?;
    let a = a.try_extract_tensor::<u8>()?.1;
    let shape = s.try_extract_tensor::<i64>()?.1.to_vec();
    let (count, p) = planes(&shape, window, MAX_POOL_GRAD)?;
    let (oh, ow) = p.pooled();
    let y = match &y {
        Some(v) => Some(v.try_extract_tensor::<f32>()?.1),
        None => None,
    };
    let outp = oh * ow;
    let pooled = [shape[0], shape[1], oh as i64, ow as i64];
    if **dys != pooled || a.len() != count * outp || y.is_some_and(|y| y.len() != count * outp) {
        let what = format!("dY {:?}, A and Y must have the pooled shape {pooled:?} of X {shape:?}", &**dys);
        return Err(error(MAX_POOL_GRAD, &what));
    }
    let mut dx = ctx.output(0, shape)?.ok_or_else(|| error(MAX_POOL_GRAD, "no output"))?;
    let dxs = Shared(dx.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
    let inp = p.h * p.w;
    ctx.par_for(count, 0, move |i| {
        // SAFETY: iteration i writes plane i of dX only, which holds `count` planes.
        let d = unsafe { dxs.part(i * inp, inp) };
        let yp = y.map(|y| &y[i * outp..][..outp]);
        max_pool_argmax_grad(&dy[i * outp..][..outp], &a[i * outp..][..outp], yp, p, d);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MaxPool by its definition, the argmax as MaxPool's `Indices` within the plane.
    fn reference(x: &[f32], p: Plane) -> (Vec<f32>, Vec<usize>) {
        let (oh, ow) = p.pooled();
        let mut out = (vec![], vec![]);
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (f32::MIN, 0);
                for i in 0..p.kh {
                    for j in 0..p.kw {
                        let k = (oy * p.kh + i) * p.w + ox * p.kw + j;
                        if x[k] > best {
                            (best, at) = (x[k], k);
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
    fn pools_and_routes_like_maxpool_with_indices_and_maxunpool() {
        // Odd sizes (a row and a column dropped), 2×2 and 3×2 windows, and ties (first wins).
        for p in [Plane { h: 7, w: 9, kh: 2, kw: 2 }, Plane { h: 6, w: 5, kh: 3, kw: 2 }] {
            let x: Vec<f32> = (0..p.h * p.w).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let (oh, ow) = p.pooled();
            let (mut y, mut a) = (vec![0.0; oh * ow], vec![0; oh * ow]);
            max_pool_argmax(&x, p, &mut y, &mut a);
            let (want_y, want_at) = reference(&x, p);
            assert_eq!(y, want_y);
            let dy: Vec<f32> = (0..oh * ow).map(|i| i as f32 + 1.0).collect();
            for relu in [false, true] {
                let mut dx = vec![f32::NAN; p.h * p.w];
                max_pool_argmax_grad(&dy, &a, relu.then_some(&y[..]), p, &mut dx);
                let mut want = vec![0.0; p.h * p.w];
                for (o, &at) in want_at.iter().enumerate() {
                    want[at] = if relu && y[o] <= 0.0 { 0.0 } else { dy[o] };
                }
                assert_eq!(dx, want, "{p:?}, relu {relu}");
            }
        }
    }
}
