//! The project's docs as tests and benchmarks use them. Generated sections of a Markdown file
//! (docs/benchmarks.md): each benchmark of `cargo xtask bench` rewrites its own section,
//! between markers, and leaves the rest of the file as it is, and says when and on what
//! machine it ran, all in the same words. And the metrics reference (docs/metrics.md), which
//! tests hold the agent's catalogue and real scrapes to.

use std::{collections::BTreeMap, fs, path::Path, process::Command};

use anyhow::Context as _;

/// The machine a benchmark ran on, as its section reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs this process may use ("?" when unknown).
    pub cpus: String,
    /// /proc/cpuinfo's first `model name` ("unknown" when absent, as on some ARM kernels).
    pub cpu_model: String,
    pub kernel: String,
    /// /proc/loadavg's 1, 5 and 15 minute averages: how busy the machine was.
    pub load: String,
}

impl Machine {
    /// This machine, now (the load average changes: read it when the run ends).
    pub fn current() -> Machine {
        let read = |path: &str| fs::read_to_string(path).ok();
        Machine {
            cpus: std::thread::available_parallelism()
                .map_or_else(|_| "?".into(), |n| n.to_string()),
            cpu_model: read("/proc/cpuinfo")
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown".into()),
            kernel: read("/proc/sys/kernel/osrelease")
                .map_or_else(|| "?".into(), |s| s.trim().to_string()),
            load: read("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "?".into()),
        }
    }

    /// `4 CPUs, <model>, kernel <release>`.
    pub fn summary(&self) -> String {
        format!("{} CPUs, {}, kernel {}", self.cpus, self.cpu_model, self.kernel)
    }
}

/// The date and time in UTC to the minute (`2025-01-31 14:05 UTC`), from date(1).
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown date".into())
}

fn begin(id: &str) -> String {
    format!(
        "<!-- begin generated section `{id}`: rewritten by `cargo xtask bench`, do not edit by hand -->"
    )
}

fn end(id: &str) -> String {
    format!("<!-- end generated section `{id}` -->")
}

/// `text` with section `id` set to `body` (Markdown, its own heading included): the section is
/// replaced where its markers are, or appended at the end.
pub fn with_section(text: &str, id: &str, body: &str) -> anyhow::Result<String> {
    let (b, e) = (begin(id), end(id));
    let section = format!("{b}\n\n{}\n\n{e}\n", body.trim());
    match (text.find(&b), text.find(&e)) {
        (Some(start), Some(stop)) if start < stop => {
            let after =
                text[stop + e.len()..].strip_prefix('\n').unwrap_or(&text[stop + e.len()..]);
            Ok(format!("{}{section}{after}", &text[..start]))
        }
        (None, None) => {
            let text = text.trim_end();
            Ok(if text.is_empty() { section } else { format!("{text}\n\n{section}") })
        }
        _ => {
            anyhow::bail!("the markers of section `{id}` are broken (one missing, or out of order)")
        }
    }
}

/// Rewrites section `id` of the file at `path` (created if missing).
pub fn write_section(path: &Path, id: &str, body: &str) -> anyhow::Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = with_section(&text, id, body).with_context(|| path.display().to_string())?;
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// Every family docs/metrics.md documents, `name → type`, from its tables' rows
/// (`| \`gwsensor_x\` | counter | ...`). A name with two rows is an error.
pub fn metric_reference(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, ..] = cells.as_slice() else { continue };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        if !name.starts_with("gwsensor_") {
            continue;
        }
        if rows.insert(name.to_string(), kind.to_string()).is_some() {
            anyhow::bail!("{}: {name} has two rows", path.display());
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_a_new_section_and_replaces_it_in_place_later() {
        let text = "# Benchmarks\n\nIntro.\n";
        let one = with_section(text, "a", "## A\n\nfirst").unwrap();
        assert_eq!(
            one,
            format!("# Benchmarks\n\nIntro.\n\n{}\n\n## A\n\nfirst\n\n{}\n", begin("a"), end("a"))
        );
        let two = with_section(&one, "b", "## B\n\nbee\n").unwrap();
        let three = with_section(&two, "a", "## A\n\nsecond").unwrap();
        assert_eq!(
            three,
            format!(
                "# Benchmarks\n\nIntro.\n\n{}\n\n## A\n\nsecond\n\n{}\n\n{}\n\n## B\n\nbee\n\n{}\n",
                begin("a"),
                end("a"),
                begin("b"),
                end("b")
            )
        );
        // Rewriting with the same body changes nothing.
        assert_eq!(with_section(&three, "b", "## B\n\nbee").unwrap(), three);
    }

    #[test]
    fn the_machine_and_the_date_are_filled_in() {
        let m = Machine::current();
        assert!(m.summary().contains(" CPUs, "), "{m:?}");
        assert_eq!(m.load.split_whitespace().count(), 3, "{m:?}");
        assert!(now_utc().ends_with(" UTC"));
    }

    #[test]
    fn broken_markers_are_an_error_not_a_duplicate() {
        let text = format!("x\n{}\n", begin("a"));
        assert!(with_section(&text, "a", "body").is_err());
        let text = format!("{}\n{}\n", end("a"), begin("a"));
        assert!(with_section(&text, "a", "body").is_err());
    }
}
