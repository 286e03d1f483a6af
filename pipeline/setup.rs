//! `tlearn setup`: the pinned ONNX Runtime library into the per-user folder
//! ([`crate::runtime::user_library`]), so an installed tlearn runs from any folder without a
//! clone's `.ort/`. The same wheel as the Makefile's `setup` (version and sha256 pinned alike),
//! fetched over HTTPS from PyPI (no Python needed) or given as a local file.

use crate::download::{self, Pinned, Source};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::progress::Sink;
use crate::runtime::{ORT_LIB, ORT_VERSION};
use std::path::{Path, PathBuf};

/// The wheel the library comes out of: `onnxruntime==1.31.1` for CPython 3.11 on x86-64 Linux
/// (the Makefile's `ORT_WHEEL` and `ORT_SHA256`).
pub const ORT_WHEEL: &str = "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
pub const ORT_SHA256: &str = "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f";
pub const ORT_WHEEL_BYTES: u64 = 23_753_652;
/// PyPI's stable address of a wheel (`/packages/<python tag>/<initial>/<project>/<file>`), which
/// redirects to wherever the file is stored.
pub const ORT_URL: &str =
    "https://files.pythonhosted.org/packages/cp311/o/onnxruntime/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl";
/// The library inside the wheel.
const MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    /// The library, where tlearn now finds it.
    pub library: PathBuf,
    /// The wheel it came from (the local one given, or the downloaded copy kept in `<home>/cache/`).
    pub wheel: PathBuf,
    /// The same library was there already (nothing written).
    pub unchanged: bool,
}

/// Put the pinned library into `<home>/ort/`: out of `local_wheel` when given, else out of the
/// wheel cached in `<home>/cache/` or downloaded there; the wheel's sha256 is checked either way.
/// The library is written to a temporary sibling and renamed into place, so a process loading it
/// meanwhile sees the old file or the new one, never part of one.
pub fn install(home: &Path, local_wheel: Option<&Path>, sink: &dyn Sink) -> Result<Installed> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(Error::Other(format!(
            "the pinned onnxruntime {ORT_VERSION} wheel is built for x86-64 Linux; on this machine install \
             onnxruntime {ORT_VERSION} another way and set ORT_DYLIB_PATH to its library"
        )));
    }
    let cached = home.join("cache").join(ORT_WHEEL);
    let pinned = Pinned { url: ORT_URL, bytes: ORT_WHEEL_BYTES, sha256: ORT_SHA256 };
    let wheel = download::pinned_file(local_wheel, cached, ORT_SHA256, Source::Https(pinned, sink))?;
    let bytes = download::read_zip_member(&wheel, MEMBER)?;
    let library = home.join("ort").join(ORT_LIB);
    let unchanged = library.is_file() && fsutil::sha256_file(&library)? == fsutil::sha256_bytes(&bytes);
    if !unchanged {
        fsutil::write_bytes_atomic(&library, &bytes)?;
    }
    Ok(Installed { library, wheel, unchanged })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pins_name_one_release() {
        use super::*;
        assert!(ORT_LIB.ends_with(ORT_VERSION) && MEMBER.ends_with(ORT_LIB));
        assert!(ORT_WHEEL.starts_with(&format!("onnxruntime-{ORT_VERSION}-")) && ORT_URL.ends_with(ORT_WHEEL));
    }
}
