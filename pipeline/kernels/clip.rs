//! [`CLIP_GRAD`]: the gradient of a Relu or Clip from its output, in one pass (the standard form
//! is a comparison or two, a Cast and a Mul: three to five passes over the map).

use super::attrs::error;
use super::names::CLIP_GRAD;
use super::shared::Shared;
use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType as T;

/// Elements per task of `par_for`: large enough that a task's overhead does not show.
const CHUNK: usize = 1 << 15;

/// dx = dy where lo < y (and y < hi, with `hi`), else 0: a Relu's (lo = 0) or a Clip's gradient,
/// taken on its output y, as the training compiler's standard form defines it.
pub fn clip_grad(dy: &[f32], y: &[f32], lo: f32, hi: Option<f32>, dx: &mut [f32]) {
    match hi {
        Some(hi) => pass::<true>(dy, y, lo, hi, dx),
        None => pass::<false>(dy, y, lo, f32::INFINITY, dx),
    }
}

fn pass<const HI: bool>(dy: &[f32], y: &[f32], lo: f32, hi: f32, dx: &mut [f32]) {
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d = if v > lo && (!HI || v < hi) { g } else { 0.0 };
    }
}

/// The operator of [`CLIP_GRAD`]: `ClipGrad(dY, Y) → dX`, attributes `min` and, optional, `max`.
pub(super) struct ClipGrad;

impl Operator for ClipGrad {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        CLIP_GRAD
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(T::Float32), OperatorInput::required(T::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(T::Float32)]
    }

    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let lo = k.get::<f32>("min").ok_or_else(|| error(CLIP_GRAD, "no attribute min"))?;
        let hi = k.get::<f32>("max");
        Ok(Box::new(move |ctx: &ComputeContext| run(ctx, lo, hi)))
    }
}

fn run(ctx: &ComputeContext, lo: f32, hi: Option<f32>) -> ort::Result<()> {
    let input = |i: usize| ctx.input(i)?.ok_or_else(|| error(CLIP_GRAD, &format!("no input {i}")));
    let (dy, y) = (input(0)?, input(1)?);
    let (shape, dy) = dy.try_extract_tensor::<f32>()?;
    let (yshape, y) = y.try_extract_tensor::<f32>()?;
    if shape != yshape {
        return Err(error(CLIP_GRAD, &format!("dY {:?} and Y {:?} differ in shape", &**shape, &**yshape)));
    }
    let mut dx = ctx.output(0, shape.to_vec())?.ok_or_else(|| error(CLIP_GRAD, "no output"))?;
    let out = Shared(dx.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
    let n = dy.len();
    ctx.par_for(n.div_ceil(CHUNK), 0, move |i| {
        let (start, len) = (i * CHUNK, CHUNK.min(n - i * CHUNK));
        // SAFETY: task i writes elements [i·CHUNK, i·CHUNK + len) of dX only.
        let d = unsafe { out.part(start, len) };
        clip_grad(&dy[start..][..len], &y[start..][..len], lo, hi, d);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_gradient_strictly_inside_the_bounds() {
        let y = [-1.0, 0.0, 0.5, 6.0, 7.0, f32::INFINITY, f32::NAN];
        let dy = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let mut dx = [f32::NAN; 7];
        clip_grad(&dy, &y, 0.0, None, &mut dx);
        assert_eq!(dx, [0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 0.0]);
        clip_grad(&dy, &y, 0.0, Some(6.0), &mut dx);
        assert_eq!(dx, [0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
