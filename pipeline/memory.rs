//! Memory budgets: how much a batch of a backbone at a given input size needs, measured before
//! the batch is allocated, so an absurd `--size` or `--batch` ends in a clear error (or a
//! smaller batch) instead of the kernel's OOM killer.

use crate::error::{Error, Result};
use crate::onnx::{self, cut, proto::ModelProto};
use std::path::Path;

/// Bytes the system can still hand out (`MemAvailable`), if the platform says.
pub fn available_bytes() -> Option<u64> {
    meminfo("MemAvailable:")
}

/// The memory this process may use: the machine's (`MemTotal`), or less where a cgroup (a
/// container, a Slurm job) limits it; None where the platform does not say.
pub fn limit_bytes() -> Option<u64> {
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        .min();
    match (meminfo("MemTotal:"), cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The side a backbone is probed at: its default, or less when the target is smaller.
const PROBE_SIDE: u32 = 224;

/// Bytes one image of `size`×`size` needs in a run of the cut backbone `model`: its decoded and
/// preprocessed input, plus three times the largest float tensor of the graph (an op's input, its
/// output and the runtime's arena slack). The largest tensor is measured on a probe image no
/// larger than [`PROBE_SIDE`] and scaled with the pixel count (a graph that only takes its own
/// size is measured at it). None when the probe cannot run.
pub fn per_image_bytes(model: &ModelProto, what: &Path, size: u32) -> Option<u64> {
    per_image_bytes_at(model, what, cut::IMAGE, cut::Layout::Nhwc, 3, size)
}

/// [`per_image_bytes`] of any graph whose image input `input` (`channels`, in `layout`) takes a
/// free height and width.
pub fn per_image_bytes_at(
    model: &ModelProto,
    what: &Path,
    input: &str,
    layout: cut::Layout,
    channels: usize,
    size: u32,
) -> Option<u64> {
    let names = onnx::float_outputs(onnx::graph(model));
    let largest_at = |side: usize| -> Option<u64> {
        let x = match layout {
            cut::Layout::Nhwc => ndarray::Array4::<f32>::zeros((1, side, side, channels)),
            cut::Layout::Nchw => ndarray::Array4::<f32>::zeros((1, channels, side, side)),
        }
        .into_dyn();
        let shapes = onnx::probe::shapes(model, what, vec![(input, x.view())], &names).ok()?;
        shapes.values().map(|s| s.iter().product::<usize>() as u64).max()
    };
    // A graph of one fixed input size is measured at that size (one image).
    let (probe, largest) = match largest_at(size.min(PROBE_SIDE) as usize) {
        Some(l) => (size.min(PROBE_SIDE), l),
        None if size > PROBE_SIDE => (size, largest_at(size as usize)?),
        None => return None,
    };
    let scale = (size as f64 / probe as f64).powi(2);
    let pixels = size as u64 * size as u64;
    Some((largest as f64 * scale * 4.0 * 3.0) as u64 + pixels * channels as u64 * 4 * 2)
}

/// The batch to run: `batch`, or fewer images when `batch` of `per_image` bytes would take more
/// than half the available memory (logged); an error when not even one image fits.
pub fn fit_batch(batch: usize, per_image: Option<u64>, size: u32, what: &Path) -> Result<usize> {
    let (Some(need), Some(avail)) = (per_image, available_bytes()) else { return Ok(batch) };
    let budget = avail / 2;
    let fits = (budget / need.max(1)) as usize;
    let gb = |b: u64| b as f64 / 1e9;
    if fits == 0 {
        return Err(Error::BadData {
            path: what.into(),
            reason: format!(
                "one {size}×{size} image needs about {:.1} GB in this network; {:.1} GB are available \
                 (use a smaller --size)",
                gb(need),
                gb(avail)
            ),
        });
    }
    if fits < batch {
        tracing::warn!(
            "{}: a batch of {batch} at {size}×{size} would need about {:.1} GB ({:.1} GB available); \
             running batches of {fits}",
            what.display(),
            gb(need.saturating_mul(batch as u64)),
            gb(avail)
        );
        return Ok(fits);
    }
    Ok(batch)
}

/// Refuse to run `m` (any image model) on one `size`×`size` image when its free height and width
/// would take `size` and that image cannot fit in memory (as a Keras-style summary does).
pub fn check_one_image(m: &ModelProto, what: &Path, size: u32) -> Result<()> {
    let (input, layout) = cut::image_input(m, what)?;
    let vi = onnx::graph(m).input.iter().find(|i| i.name == input).expect("image_input found it");
    let dims = onnx::vi_shape(vi).1;
    let (h, w, c) = match layout {
        cut::Layout::Nhwc => (dims[1], dims[2], dims[3]),
        cut::Layout::Nchw => (dims[2], dims[3], dims[1]),
    };
    if h.is_some() && w.is_some() {
        return Ok(());
    }
    cut::check_size(size)?;
    let need = per_image_bytes_at(m, what, &input, layout, c.unwrap_or(3) as usize, size);
    fit_batch(1, need, size, what).map(|_| ())
}
