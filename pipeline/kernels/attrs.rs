//! What every kernel's operator shares: a node's window attributes ([`Attrs`], read once when
//! onnxruntime makes the kernel) and errors that name the operator.

use super::names::MAX_WINDOW;
use super::window::Window;
use ort::operator::KernelContext;

/// A node's window attributes (a MaxPool's, or a convolution's for `Unfold`): `kernel_shape`,
/// `strides` (default: 1) and `pads` (default: 0).
#[derive(Clone, Copy, Debug)]
pub struct Attrs {
    kernel: [usize; 2],
    strides: [usize; 2],
    pads: [usize; 4],
}

impl Attrs {
    pub fn read(k: &KernelContext<'_>, op: &str) -> ort::Result<Attrs> {
        let ints = |name: &str, n: usize, default: i64| -> ort::Result<Vec<usize>> {
            let v = k.get::<Vec<i64>>(name).unwrap_or_else(|| vec![default; n]);
            match v.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>() {
                Ok(v) if v.len() == n => Ok(v),
                _ => Err(error(op, &format!("{name} must be {n} non-negative integers, got {v:?}"))),
            }
        };
        let k_ = ints("kernel_shape", 2, 0)?;
        let (s, p) = (ints("strides", 2, 1)?, ints("pads", 4, 0)?);
        let area = k_[0] * k_[1];
        if area == 0 || area > MAX_WINDOW as usize || s.contains(&0) {
            return Err(error(
                op,
                &format!("a window of 1 to {MAX_WINDOW} positions and positive strides, got {k_:?}, {s:?}"),
            ));
        }
        Ok(Attrs { kernel: [k_[0], k_[1]], strides: [s[0], s[1]], pads: [p[0], p[1], p[2], p[3]] })
    }

    /// The window over the planes of an (N, C, H, W) `shape`, and their count N·C.
    pub fn over(&self, shape: &[i64], op: &str) -> ort::Result<(usize, Window)> {
        match *shape {
            [n, c, h, w] if [n, c, h, w].iter().all(|&d| d >= 0) => {
                Ok(((n * c) as usize, Window::new((h as usize, w as usize), self.kernel, self.strides, self.pads)))
            }
            _ => Err(error(op, &format!("expected an (N, C, H, W) input, got shape {shape:?}"))),
        }
    }
}

/// An error of operator `op`.
pub fn error(op: &str, what: &str) -> ort::Error {
    ort::Error::new(format!("{op}: {what}"))
}
