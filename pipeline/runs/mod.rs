//! A run folder (`runs/<name>/`) as a domain type: the one versioned record every kind of run
//! writes (`run.json`), what the run predicts on a split, and its deployable model. Training
//! stages produce a [`Run`]; evaluate, score and explain take one, whatever kind it is.
//!
//! Knows no stage: it does not train, evaluate or score; it knows only what a finished run left.

pub mod deployable;
pub mod ensemble;
pub mod finetune;
pub mod fit;
mod fuse;
pub mod head;
mod predict;
mod record;
mod run;

pub use deployable::{check_current, check_current_as, check_differentiable, ModelInfo, MODEL};
pub use ensemble::{fuse_mean, EnsembleRecord, Member};
pub use finetune::{FinetuneConfig, FinetuneRecord, TrunkInfo};
pub use fit::{Balance, FitRecord, FitSettings, FoldScore};
pub use fuse::{deployable, fuse, meta, plain, ModelMeta, INPUT, OUTPUT};
pub use head::{HeadRecord, HEAD};
pub use record::{find_record, model_dir, read_fit, write_fit_record, write_record, Record, FORMAT, RECORD};
pub use run::{list, name_of, unknown_run, PredictOptions, Predictions, Run};
