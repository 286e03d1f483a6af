//! `--freeze-stride S`: the layers before a net reaches stride S keep their pretrained weights.
//! Early layers see the image at its largest, where a training step spends most of its time, and
//! hold its most generic features (edges, textures); a frozen prefix has no backward pass at all
//! (the compiler differentiates only what leads from a trained parameter to the loss), so the step
//! gets much cheaper, for some accuracy (docs/RESULTS.md measures both on ELPV).

use crate::error::{Error, Result};
use crate::onnx::{self, cut, proto::ModelProto};
use crate::runs::finetune::input_shape;
use std::collections::HashSet;
use std::path::Path;

/// Where a `--freeze-stride` cut falls: the parameters frozen and where the net reaches the stride.
#[derive(Debug)]
pub struct FrozenPrefix {
    /// Initializer names of every layer before the cut (the ancestors of the layers that reach it).
    pub params: HashSet<String>,
    /// The output of the first layer that reaches the stride, and its side.
    pub first: String,
    pub side: usize,
}

/// The ops whose (N, C, H, W) output can be smaller than their input: where a net's stride grows.
const DOWNSAMPLING: &[&str] = &["Conv", "MaxPool", "AveragePool"];

/// The parameters of the layers before `model` reaches stride `stride`: the ancestors of every
/// convolution or pool that takes a map larger than the input's side over `stride` (rounded up,
/// as "SAME" padding rounds) to one at most that large — all of them, so a residual block's
/// shortcut and main branch cut alike whatever their order. Maps of side 1 (global pools,
/// squeeze-excite branches) never count. A stride the net does not reach, or one that would freeze
/// nothing, is refused, naming the strides that work.
pub fn frozen_before_stride(model: &ModelProto, what: &Path, stride: u32) -> Result<FrozenPrefix> {
    frozen_at(model, what, stride, input_shape(model, what)?)
}

/// [`frozen_before_stride`] for a backbone, whose input takes any size, at `size`×`size` images:
/// it refuses exactly what a fine-tune of a model made from the backbone at that size would
/// (the prefix's names are the backbone's own, without the fused model's prefix), before
/// anything is extracted or trained.
pub fn backbone_frozen_before_stride(bb: &crate::backbone::Backbone, size: u32, stride: u32) -> Result<FrozenPrefix> {
    let model = onnx::decode_model(&bb.bytes, &bb.path)?;
    frozen_at(&model, &bb.path, stride, [size as usize, size as usize, 3])
}

/// The prefix of `model` fed (1, h, w, c) images.
fn frozen_at(model: &ModelProto, what: &Path, stride: u32, [h, w, c]: [usize; 3]) -> Result<FrozenPrefix> {
    let g = onnx::graph(model);
    let names = onnx::float_outputs(g);
    let (input, _) = cut::image_input(model, what)?;
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, h, w, c]));
    let shapes = onnx::probe::shapes(model, what, vec![(&input, x.view())], &names)?;
    // These ops' tensors are (N, C, H, W): the side is dimension 2.
    let side = |t: &str| shapes.get(t).filter(|s| s.len() == 4).map(|s| s[2]);
    let steps: Vec<(&onnx::proto::NodeProto, usize, usize)> = g
        .node
        .iter()
        .filter(|n| DOWNSAMPLING.contains(&n.op_type.as_str()) && !n.input.is_empty() && !n.output.is_empty())
        .filter_map(|n| Some((n, side(&n.input[0])?, side(&n.output[0])?)))
        .filter(|&(_, from, to)| to < from && to > 1)
        .collect();
    let crossing = |s: usize| {
        let target = h.div_ceil(s);
        steps.iter().filter(move |&&(_, from, to)| from > target && to <= target)
    };
    let refuse = |reason: String| Error::Param { name: "freeze-stride", value: stride.to_string(), reason };
    let cut: Vec<_> = crossing(stride as usize).collect();
    let Some(&&(first, _, to)) = cut.first() else {
        return Err(refuse(match (2..=h).rev().find(|&s| crossing(s).next().is_some()) {
            Some(most) => format!(
                "{} reaches stride {most} at most at {h}×{h}; give --freeze-stride {most} or less",
                what.display()
            ),
            None => format!("{} keeps its maps at the image's size: it has no early layers to freeze", what.display()),
        }));
    };
    let inputs: Vec<String> = cut.iter().map(|(n, _, _)| n.input[0].clone()).collect();
    let params = cut::initializers_feeding(model, what, &inputs)?;
    if crate::train::graph::select_params(g, &|n| params.contains(n)).is_empty() {
        return Err(refuse(format!(
            "it freezes nothing: {} reaches stride {stride} at its first layer with weights; give a larger stride to \
             freeze its early layers",
            what.display()
        )));
    }
    Ok(FrozenPrefix { params, first: first.output[0].clone(), side: to })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::A;
    use crate::onnx::{Dim, GraphBuilder};
    use ndarray::{ArrayD, IxDyn};

    fn mnist() -> ModelProto {
        crate::convnet::build(&crate::convnet::spec("mnist").unwrap(), 1).unwrap()
    }

    #[test]
    fn a_stride_freezes_the_layers_before_the_first_convolution_that_reaches_it() {
        // The mnist net's 3×3 valid convolutions give 26, 11 and 3 px of 28 (pools between).
        let at = |s| frozen_before_stride(&mnist(), Path::new("mnist.onnx"), s).unwrap();
        let names = |f: &FrozenPrefix| {
            let mut v: Vec<String> = f.params.iter().cloned().collect();
            v.sort();
            v
        };
        // The pools make the strides: 26 → 13 reaches stride 2, 11 → 5 stride 4 (up to 6).
        let two = at(2);
        assert_eq!(names(&two), ["conv2d/bias", "conv2d/kernel"]);
        assert_eq!((two.first.as_str(), two.side), ("mnist/max_pooling2d/MaxPool", 13));
        let four = at(4);
        assert_eq!(four.side, 5);
        assert_eq!(names(&four), ["conv2d/bias", "conv2d/kernel", "conv2d_1/bias", "conv2d_1/kernel"]);
        // The last convolution, 5 → 3, reaches up to stride 13 (⌈28 / 13⌉ = 3); 14 asks for 2.
        assert_eq!(at(13).side, 3);
        let e = frozen_before_stride(&mnist(), Path::new("mnist.onnx"), 14).unwrap_err().to_string();
        assert!(e.contains("reaches stride 13 at most") && e.contains("--freeze-stride 13 or less"), "{e}");
    }

    #[test]
    fn a_stride_the_first_convolution_already_has_freezes_nothing_and_is_refused() {
        let mut b = GraphBuilder::new("s");
        b.input(cut::IMAGE, &[Dim::named("N"), Dim::Fixed(8), Dim::Fixed(8), Dim::Fixed(1)]);
        b.node("Transpose", &[cut::IMAGE], &["x"], vec![("perm", A::Ints(vec![0, 3, 1, 2]))]);
        let mut x = "x".to_string();
        for i in 0..2 {
            let k = b.init_f32(&format!("k{i}"), &ArrayD::from_elem(IxDyn(&[1, 1, 1, 1]), 1.0));
            let y = format!("y{i}");
            b.node(
                "Conv",
                &[&x, &k],
                &[&y],
                vec![("kernel_shape", A::Ints(vec![1, 1])), ("strides", A::Ints(vec![2, 2]))],
            );
            x = y;
        }
        b.output(&x, &[Dim::named("N"), Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
        let m = crate::onnx::model(b.finish(), "test");
        let e = frozen_before_stride(&m, Path::new("s.onnx"), 2).unwrap_err().to_string();
        assert!(e.contains("freezes nothing"), "{e}");
        let f = frozen_before_stride(&m, Path::new("s.onnx"), 4).unwrap();
        assert_eq!((f.params.into_iter().collect::<Vec<_>>(), f.side), (vec!["k0".to_string()], 2));
    }
}
