//! The feature cache: `<split>.npy` (N,h,w,c float32), `<split>.labels.npy` (int64),
//! `<split>.files.csv` and a JSON sidecar per split, as the extract stage writes them; loading
//! with every checksum and name checked; merging shard parts.
//!
//! Extra *views* (flips, for feature augmentation and test-time augmentation) are caches of their
//! own next to the plain one: `<split>.<view>.npy` with the same rows in the same order.

mod cache;
mod merge;
mod npy;
pub use cache::{
    concat_views, dataset_real, load, load_view, load_views, npy_bytes, open_view, recover_pending, sha256_raw, stem,
    view_npy_path, write_cache, CacheMeta, CacheRows, CompactRow, FeatureInfo, Features, FileRow, ListedRow, Skipped,
};
pub use merge::{merge, shard_parts};
pub use npy::{NpyRows, NpyWriter};
