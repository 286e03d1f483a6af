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
