//! [`UNFOLD`]: the im2col columns of a convolution's input for its weight gradient, rows copied
//! (the standard form is a grouped Conv with one-hot filters: a multiply-add per tap).

use super::attrs::{error, Attrs};
use super::names::UNFOLD;
use super::shared::Shared;
use super::window::{span, Window};
use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType as T;

/// One input plane's columns: `out` holds kh·kw planes of (oh, ow), plane i·kw + j the input at
/// tap (i, j) of each output position, zero where it falls in the pads.
pub fn unfold_plane(x: &[f32], p: Window, out: &mut [f32]) {
    let ohw = p.oh * p.ow;
    for (tap, dst) in out.chunks_exact_mut(ohw).enumerate().take(p.kh * p.kw) {
        let (i, j) = (tap / p.kw, tap % p.kw);
        let xs = span(p.ow, p.sw, p.pl, j, p.w);
        let first = (xs.start * p.sw + j).saturating_sub(p.pl);
        for (oy, row) in dst.chunks_exact_mut(p.ow).enumerate() {
            let Some(yy) = (oy * p.sh + i).checked_sub(p.pt).filter(|&r| r < p.h) else {
                row.fill(0.0);
                continue;
            };
            let src = &x[yy * p.w..][..p.w];
            row[..xs.start].fill(0.0);
            row[xs.end..].fill(0.0);
            let cols = &mut row[xs.clone()];
            if p.sw == 1 {
                cols.copy_from_slice(&src[first..][..cols.len()]);
            } else {
                for (d, s) in cols.iter_mut().zip(src[first..].iter().step_by(p.sw)) {
                    *d = *s;
                }
            }
        }
    }
}

/// The operator of [`UNFOLD`]: `Unfold(X) → columns (N, C·kh·kw, oh, ow)`, attributes
/// `kernel_shape`, `strides` and `pads` (a convolution's, no dilation).
pub(super) struct Unfold;

impl Operator for Unfold {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        UNFOLD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(T::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let attrs = Attrs::read(k, UNFOLD)?;
        Ok(Box::new(move |ctx: &ComputeContext| run(ctx, attrs)))
    }
}

fn run(ctx: &ComputeContext, attrs: Attrs) -> ort::Result<()> {
    let x = ctx.input(0)?.ok_or_else(|| error(UNFOLD, "no input"))?;
    let (shape, x) = x.try_extract_tensor::<f32>()?;
    let (count, p) = attrs.over(shape, UNFOLD)?;
    let kk = (p.kh * p.kw) as i64;
    let out = vec![shape[0], shape[1] * kk, p.oh as i64, p.ow as i64];
    let mut cols = ctx.output(0, out)?.ok_or_else(|| error(UNFOLD, "no output"))?;
    let dst = Shared(cols.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
    let (inp, outp) = (p.h * p.w, p.kh * p.kw * p.oh * p.ow);
    ctx.par_for(count, 0, move |i| {
        // SAFETY: plane i (image n, channel c) writes columns (n, c·kk .. (c+1)·kk) only: one
        // contiguous block of its own.
        let d = unsafe { dst.part(i * outp, outp) };
        unfold_plane(&x[i * inp..][..inp], p, d);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_the_taps_of_each_output_position() {
        for p in [
            Window::new((5, 6), [3, 3], [1, 1], [1, 1, 1, 1]),
            Window::new((7, 7), [7, 7], [2, 2], [3, 3, 3, 3]),
            Window::new((6, 5), [2, 3], [2, 1], [0, 1, 1, 0]),
        ] {
            let x: Vec<f32> = (0..p.h * p.w).map(|v| v as f32 + 1.0).collect();
            let mut out = vec![f32::NAN; p.kh * p.kw * p.oh * p.ow];
            unfold_plane(&x, p, &mut out);
            for (k, v) in out.iter().enumerate() {
                let (tap, o) = (k / (p.oh * p.ow), k % (p.oh * p.ow));
                let yy = ((o / p.ow) * p.sh + tap / p.kw).checked_sub(p.pt).filter(|&r| r < p.h);
                let xx = ((o % p.ow) * p.sw + tap % p.kw).checked_sub(p.pl).filter(|&c| c < p.w);
                let want = match (yy, xx) {
                    (Some(yy), Some(xx)) => x[yy * p.w + xx],
                    _ => 0.0,
                };
                assert_eq!(*v, want, "{p:?}: column {k}");
            }
        }
    }
}
