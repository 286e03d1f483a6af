//! The operators of [`MAX_POOL`] and [`MAX_POOL_GRAD`]: their attributes read once per node, their
//! shapes checked, the plane functions of `window.rs` run plane by plane on onnxruntime's
//! intra-op threads.

use super::attrs::{error, Attrs};
use super::names::{MAX_POOL, MAX_POOL_GRAD};
use super::shared::Shared;
use super::window::{max_pool_argmax, max_pool_argmax_grad};
use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType as T;

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
        let attrs = Attrs::read(k, MAX_POOL)?;
        Ok(Box::new(move |ctx: &ComputeContext| forward(ctx, attrs)))
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
        let attrs = Attrs::read(k, MAX_POOL_GRAD)?;
        Ok(Box::new(move |ctx: &ComputeContext| backward(ctx, attrs)))
    }
}

fn forward(ctx: &ComputeContext, attrs: Attrs) -> ort::Result<()> {
    let x = ctx.input(0)?.ok_or_else(|| error(MAX_POOL, "no input"))?;
    let (shape, x) = x.try_extract_tensor::<f32>()?;
    let (count, p) = attrs.over(shape, MAX_POOL)?;
    let out = vec![shape[0], shape[1], p.oh as i64, p.ow as i64];
    let mut y = ctx.output(0, out.clone())?.ok_or_else(|| error(MAX_POOL, "no output Y"))?;
    let mut a = ctx.output(1, out)?.ok_or_else(|| error(MAX_POOL, "no output A"))?;
    let ys = Shared(y.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
    let as_ = Shared(a.try_extract_tensor_mut::<u8>()?.1.as_mut_ptr());
    let (inp, outp) = (p.h * p.w, p.oh * p.ow);
    ctx.par_for(count, 0, move |i| {
        // SAFETY: iteration i writes plane i of Y and A only; both hold `count` planes.
        let (yp, ap) = unsafe { (ys.part(i * outp, outp), as_.part(i * outp, outp)) };
        max_pool_argmax(&x[i * inp..][..inp], p, yp, ap);
    })
}

fn backward(ctx: &ComputeContext, attrs: Attrs) -> ort::Result<()> {
    let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| error(MAX_POOL_GRAD, &format!("no input {what}")));
    let (dy, a, s) = (input(0, "dY")?, input(1, "A")?, input(2, "shape")?);
    let y = if ctx.num_inputs()? > 3 { ctx.input(3)? } else { None };
    let (dys, dy) = dy.try_extract_tensor::<f32>()?;
    let a = a.try_extract_tensor::<u8>()?.1;
    let shape = s.try_extract_tensor::<i64>()?.1.to_vec();
    let (count, p) = attrs.over(&shape, MAX_POOL_GRAD)?;
    let y = match &y {
        Some(v) => Some(v.try_extract_tensor::<f32>()?.1),
        None => None,
    };
    let outp = p.oh * p.ow;
    let pooled = [shape[0], shape[1], p.oh as i64, p.ow as i64];
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
