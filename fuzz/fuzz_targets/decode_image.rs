//! Image decode + preprocess on arbitrary bytes: an error is fine, a panic, hang or huge
//! allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tlearn::imageio::{decode_bytes, to_rgb_array, Interpolation, Preprocess, PreprocessKind, View};

fuzz_target!(|data: &[u8]| {
    // 4 Mpx: the decoder refuses more before allocating (the stages' limit is configurable).
    if let Ok(img) = decode_bytes(data, Path::new("fuzz-input"), 4_000_000) {
        for interp in [Interpolation::Nearest, Interpolation::Bilinear] {
            let mut a = to_rgb_array(&img, (17, 23), interp);
            Preprocess::of(PreprocessKind::Caffe).apply(a.view_mut());
            let a = View::Rot180.apply(a);
            assert_eq!(a.shape(), &[17, 23, 3]);
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }
});
