//! The legacy `.pth` reader and the EfficientNet-Lite builder on arbitrary bytes: an error is
//! fine, a panic, hang or huge allocation is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(sd) = tlearn::pth::parse_state_dict(data, Path::new("fuzz-input.pth")) {
        let _ = tlearn::efficientnet::lite(&sd, Path::new("fuzz-input.pth"));
    }
});
