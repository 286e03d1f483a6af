//! The ONNX reader and cutter on arbitrary bytes: decode, find the image input, cut at
//! every node output, read tlearn metadata and initializers. Errors are fine; panics are bugs.
//! (Nothing here runs onnxruntime: its own robustness is not what this fuzzes.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tlearn::onnx::{self, cut};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.onnx");
    let Ok(m) = onnx::decode_model(data, path) else { return };
    let _ = tlearn::runs::meta(&m, path);
    let _ = cut::param_count(&m);
    for t in onnx::graph(&m).initializer.iter().take(16) {
        let _ = onnx::tensor_to_f32(t);
    }
    let Ok((_, layout)) = cut::image_input(&m, path) else { return };
    let outs: Vec<String> = onnx::graph(&m).node.iter().flat_map(|n| n.output.clone()).take(8).collect();
    for o in outs {
        if let Ok(c) = cut::cut_model(&m, path, &o, layout) {
            let bytes = onnx::encode_model(&c);
            onnx::decode_model(&bytes, path).expect("a cut model decodes");
        }
    }
});
