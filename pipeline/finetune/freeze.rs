//! `--freeze-stride S`: the layers before a net's first convolution at stride S keep their
//! pretrained weights. Early layers see the image at its largest, where a training step spends
//! most of its time, and hold its most generic features (edges, textures); a frozen prefix has no
//! backward pass at all (the compiler differentiates only what leads from a trained parameter to
//! the loss), so the step gets much cheaper for little accuracy.

use crate::error::{Error, Result};
use crate::onnx::{self, cut, proto::ModelProto};
use crate::runs::finetune::input_shape;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Where a `--freeze-stride` cut falls: the parameters frozen and the first layer still trained.
#[derive(Debug)]
pub struct FrozenPrefix {
    /// Initializer names of every layer before `first` (its ancestors in the graph).
    pub params: HashSet<String>,
    /// The output of the first convolution at the stride (the first layer that trains), and its side.
    pub first: String,
    pub side: usize,
}

/// The parameters of the layers before `model`'s first convolution whose output side is at most
/// the input's over `stride` (rounded up, as "SAME" padding rounds). A stride no convolution
/// reaches, or one that would freeze nothing, is refused, naming the strides there are.
pub fn frozen_before_stride(model: &ModelProto, what: &Path, stride: u32) -> Result<FrozenPrefix> {
    let [h, w, c] = input_shape(model, what)?;
    let g = onnx::graph(model);
    let convs: Vec<_> = g.node.iter().filter(|n| n.op_type == "Conv" && !n.output.is_empty()).collect();
    let names: Vec<String> = convs.iter().map(|n| n.output[0].clone()).collect();
    let (input, _) = cut::image_input(model, what)?;
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, h, w, c]));
    let shapes = onnx::probe::shapes(model, what, vec![(&input, x.view())], &names)?;
    // ONNX Conv outputs are (N, C, H, W): the side is dimension 2.
    let side = |n: &str| shapes.get(n).filter(|s| s.len() == 4).map(|s| s[2]);
    let target = h.div_ceil(stride as usize);
    let refuse = |reason: String| Error::Param { name: "freeze-stride", value: stride.to_string(), reason };
    let Some((at, first)) = convs.iter().enumerate().find(|(_, n)| side(&n.output[0]).is_some_and(|s| s <= target))
    else {
        let smallest = names.iter().filter_map(|n| side(n)).min().unwrap_or(h);
        return Err(refuse(format!(
            "{}'s convolutions reach stride {} at most (their smallest output is {smallest}×{smallest} of a {h}×{h} \
             input); give a smaller stride",
            what.display(),
            h / smallest.max(1)
        )));
    };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let params = ancestor_params(g, &first.input[0], &inits);
    if !convs[..at].iter().any(|n| n.input.iter().any(|i| params.contains(i))) {
        return Err(refuse(format!(
            "it freezes nothing: {}'s first convolution already works at stride {stride} or more; give a larger \
             stride to freeze its early layers",
            what.display()
        )));
    }
    let side = side(&first.output[0]).expect("found by its side");
    Ok(FrozenPrefix { params, first: first.output[0].clone(), side })
}

/// The initializers feeding the nodes that `tensor` is computed from (its ancestors).
fn ancestor_params(g: &onnx::proto::GraphProto, tensor: &str, inits: &HashSet<&str>) -> HashSet<String> {
    let producer: HashMap<&str, usize> =
        g.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let (mut seen, mut stack, mut params) = (HashSet::new(), vec![tensor], HashSet::new());
    while let Some(t) = stack.pop() {
        let Some(&i) = producer.get(t) else { continue };
        if !seen.insert(i) {
            continue;
        }
        for input in &g.node[i].input {
            if inits.contains(input.as_str()) {
                params.insert(input.clone());
            } else {
                stack.push(input.as_str());
            }
        }
    }
    params
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
        let two = at(2);
        assert_eq!(names(&two), ["conv2d/bias", "conv2d/kernel"]);
        assert_eq!((two.first.as_str(), two.side), ("mnist/conv2d_1/Conv", 11));
        let four = at(4);
        assert_eq!(four.side, 3);
        assert_eq!(names(&four), ["conv2d/bias", "conv2d/kernel", "conv2d_1/bias", "conv2d_1/kernel"]);
        let e = frozen_before_stride(&mnist(), Path::new("mnist.onnx"), 16).unwrap_err().to_string();
        assert!(e.contains("stride 9 at most") && e.contains("3×3 of a 28×28"), "{e}");
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
