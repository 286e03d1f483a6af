//! Hyper-parameters checked once (linfa's `ParamGuard`): a settings type implements
//! [`ParamGuard`]; what the library runs takes [`Checked`] settings, which only
//! [`ParamGuard::check`] (or deserialising, which checks too) can make. So a value is checked
//! where it enters — a command line, a run record read back — and never again.

use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Settings that can be checked.
pub trait ParamGuard: Sized {
    /// `Err` naming the first value out of range.
    fn check_ref(&self) -> Result<()>;

    fn check(self) -> Result<Checked<Self>> {
        self.check_ref()?;
        Ok(Checked(self))
    }
}

/// Settings that passed their check; read through `Deref`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Checked<T>(T);

impl<T> Checked<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Checked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: ParamGuard + Deserialize<'de>> Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        T::deserialize(d)?.check().map_err(serde::de::Error::custom)
    }
}

/// A setting chosen by name from a fixed list: every value with the name a command line spells
/// it with and a line of help (empty: none). The library says what the choices are; the CLI layer
/// (`cli.rs`) turns them into command-line values, so the library knows no argument parser.
pub trait Choice: Copy + PartialEq + 'static {
    const ALL: &'static [(Self, &'static str, &'static str)];

    /// The name a command line spells this value with.
    fn name(self) -> &'static str {
        Self::ALL.iter().find(|c| c.0 == self).map(|c| c.1).expect("every value is listed in ALL")
    }

    /// The value named `name`, if any.
    fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|c| c.1 == name).map(|c| c.0)
    }
}

/// The known name to suggest for `given`, a name that names nothing (a typo, a missing suffix):
/// one that starts with it, else the nearest within a third of its length in edits (case aside);
/// None when none is that close.
pub fn nearest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let given = given.to_lowercase();
    let close = (given.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| {
            let lower = k.to_lowercase();
            (!lower.starts_with(&given), strsim::damerau_levenshtein(&given, &lower), k)
        })
        .filter(|&(not_prefix, d, _)| !not_prefix || d <= close)
        .min()
        .map(|(_, _, k)| k)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn nearest_suggests_a_completion_or_a_near_typo_and_nothing_far() {
        let known = ["efficientnet-lite0", "efficientnet-lite1", "vgg16", "resnet50-thin"];
        assert_eq!(nearest("efficientnet-lite", known), Some("efficientnet-lite0"));
        assert_eq!(nearest("vgg61", known), Some("vgg16"));
        assert_eq!(nearest("VGG16", known), Some("vgg16"));
        assert_eq!(nearest("resnet", known), Some("resnet50-thin"));
        assert_eq!(nearest("mobilenet", known), None);
        assert_eq!(nearest("x", [] as [&str; 0]), None);
    }
}
