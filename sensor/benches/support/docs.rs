//! docs/benchmarks.md is written by two benchmarks: the datapath bench owns the file, the scale
//! bench owns a marked section at its end. Each keeps the other's part as it is.

use std::path::PathBuf;

pub const SCALE_BEGIN: &str = "<!-- scale-limits:begin -->";
pub const SCALE_END: &str = "<!-- scale-limits:end -->";

pub fn benchmarks_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md")
}

/// The scale section of `doc`, markers included, if it has one.
#[allow(dead_code)]
pub fn scale_section(doc: &str) -> Option<&str> {
    let start = doc.find(SCALE_BEGIN)?;
    let end = doc[start..].find(SCALE_END)? + start + SCALE_END.len();
    Some(&doc[start..end])
}

/// `doc` with its scale section replaced by `section` (which carries the markers), or with
/// `section` appended when it has none.
#[allow(dead_code)]
pub fn with_scale_section(doc: &str, section: &str) -> String {
    match scale_section(doc) {
        Some(old) => doc.replacen(old, section, 1),
        None => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}
