//! Errors in the YAML files a user writes, located in the file: one form for the config and
//! the policy, so `check-config` prints both alike.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// An error in a file the user wrote (the config, the policy), located: `path:line:col`,
/// what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub struct LocatedError {
    pub path: PathBuf,
    /// 1-based line and column, where known.
    pub location: Option<(usize, usize)>,
    pub message: String,
    pub hint: Option<String>,
}

impl LocatedError {
    /// A YAML parse error of the file at `path`, located, with the hint `hint_for` finds for
    /// its message.
    pub fn from_yaml(
        e: &serde_yaml::Error,
        path: &Path,
        hint_for: fn(&str) -> Option<String>,
    ) -> LocatedError {
        let message = e.to_string();
        // serde_yaml appends " at line X column Y"; the location is already in front.
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        LocatedError {
            path: path.to_owned(),
            location: e.location().map(|l| (l.line(), l.column())),
            hint: hint_for(&message),
            message,
        }
    }
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}
