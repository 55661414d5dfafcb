//! The accounting on disk, so that exported counters continue across agent restarts, upgrades
//! and reboots instead of starting again from zero.

use std::{fs, io::Write as _, path::Path};

use anyhow::Context as _;

use crate::{
    accounting::{Accounting, MAX_PLAUSIBLE},
    enrich::dhcp::SavedFingerprint,
    export::continued::SavedCounter,
    policy::eval::EvalState,
};

/// Format version of the state file: bumped when its meaning changes.
const VERSION: u32 = 1;

/// What the agent keeps across restarts: the exported counters, the policy's memory
/// (windows, alerts, learnt destinations and devices) and the clients' DHCP fingerprints.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Saved {
    pub accounting: Accounting,
    /// Absent in files written before the policy existed.
    #[serde(default)]
    pub policy: EvalState,
    /// The agent's own counters (absent in files written before they were continued).
    #[serde(default)]
    pub counters: Vec<SavedCounter>,
    /// Absent in files written before fingerprints existed.
    #[serde(default)]
    pub fingerprints: Vec<SavedFingerprint>,
}

impl Saved {
    /// The first counter that no real traffic reaches (above [`MAX_PLAUSIBLE`], or for the
    /// agent's own counters also negative), described; None when all are plausible.
    fn implausible(&self) -> Option<String> {
        self.accounting.implausible().or_else(|| {
            self.counters
                .iter()
                .find(|c| !(0.0..=MAX_PLAUSIBLE as f64).contains(&c.value))
                .map(|c| format!("{}{:?} {}", c.name, c.labels, c.value))
        })
    }
}

/// The state file's version alone: read only when the file does not parse as this version's
/// state, so that a file of another version is refused as such, not taken for a corrupt one.
#[derive(serde::Deserialize)]
struct Version {
    version: u32,
}

/// The state file, its fields listed rather than `Saved` flattened in: serde buffers a
/// flattened struct's content as a tree of owned values before deserializing it, several times
/// the file's size in memory (a restart after a scan peaked 30 MB above the running agent).
#[derive(serde::Deserialize)]
struct StateFile {
    version: u32,
    accounting: Accounting,
    #[serde(default)]
    policy: EvalState,
    #[serde(default)]
    counters: Vec<SavedCounter>,
    #[serde(default)]
    fingerprints: Vec<SavedFingerprint>,
}

/// What [`save`] writes: [`StateFile`], borrowing the accounting and the policy state (no copy).
#[derive(serde::Serialize)]
struct StateFileRef<'a> {
    version: u32,
    accounting: &'a Accounting,
    policy: &'a EvalState,
    counters: &'a [SavedCounter],
    fingerprints: &'a [SavedFingerprint],
}

/// Loads the state, or a fresh accounting when there is no file yet. A file that cannot be
/// read as state is kept aside (renamed `.corrupt`) rather than silently overwritten.
pub fn load(path: &Path) -> anyhow::Result<Saved> {
    // Streamed from the file (never held whole: with a full flow map it is megabytes).
    let Some(parsed) = read_json::<StateFile>(path)? else { return Ok(Saved::default()) };
    let version = match &parsed {
        Ok(file) => Some(file.version),
        // Unreadable as this version's state: another version's, or damaged?
        Err(_) => read_json::<Version>(path)?.and_then(Result::ok).map(|v| v.version),
    };
    if let Some(version) = version.filter(|v| *v != VERSION) {
        anyhow::bail!(
            "state file {} has version {version} but this agent reads version {VERSION}: move it away to start counting afresh",
            path.display(),
        );
    }
    let saved = parsed.map(|f| Saved {
        accounting: f.accounting,
        policy: f.policy,
        counters: f.counters,
        fingerprints: f.fingerprints,
    });
    match saved {
        Ok(saved) => match saved.implausible() {
            None => Ok(saved),
            // Continuing from it would export a counter that soon stops (saturates) or, added
            // to elsewhere, wraps: start afresh, the file kept for a look.
            Some(what) => {
                let aside = keep_aside(path)?;
                tracing::warn!(
                    "state file {} holds an implausible counter ({what}, above 2^62); kept as \
                     {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                Ok(Saved::default())
            }
        },
        Err(e) => {
            let aside = keep_aside(path)?;
            tracing::warn!(
                "state file {} is unreadable ({e}); kept as {} and starting afresh",
                path.display(),
                aside.display()
            );
            Ok(Saved::default())
        }
    }
}

/// Parses the JSON file at `path` as `T`, streamed; `None` when there is no file. Only a
/// regular file is read (a FIFO there would stall the start).
fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> anyhow::Result<Option<Result<T, serde_json::Error>>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
    };
    let metadata =
        file.metadata().with_context(|| format!("reading state file {}", path.display()))?;
    anyhow::ensure!(
        metadata.is_file(),
        "state file {} is not a regular file: point state_path at a file the agent may replace",
        path.display()
    );
    let reader = std::io::BufReader::with_capacity(1 << 16, file);
    Ok(Some(serde_json::from_reader(reader)))
}

/// How many unreadable state files are kept: `state.corrupt`, then `state.corrupt.1` to
/// `state.corrupt.9`.
const CORRUPT_KEPT: usize = 10;

/// Moves a state file that is not continued from (unreadable, or implausible) aside under the first of its [`CORRUPT_KEPT`] names that is
/// free, so that a second corrupt file never replaces the first (the first is usually the one
/// that tells what went wrong). When all are taken the last name is reused: the disk holds at
/// most [`CORRUPT_KEPT`] of them, however often it happens.
fn keep_aside(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let first = path.with_extension("corrupt");
    let names = std::iter::once(first.clone()).chain((1..CORRUPT_KEPT).map(|i| {
        let mut name = first.clone().into_os_string();
        name.push(format!(".{i}"));
        std::path::PathBuf::from(name)
    }));
    let mut aside = first.clone();
    for name in names {
        aside = name;
        // symlink_metadata: a name held by a dangling symlink counts as taken too.
        if fs::symlink_metadata(&aside).is_err() {
            break;
        }
    }
    fs::rename(path, &aside)
        .with_context(|| format!("moving state file {} aside", path.display()))?;
    Ok(aside)
}

/// Writes the state atomically: a crash mid-write leaves the previous file intact.
pub fn save(
    path: &Path,
    accounting: &Accounting,
    policy: &EvalState,
    counters: &[SavedCounter],
    fingerprints: &[SavedFingerprint],
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // Streamed: with a full flow map the file is tens of megabytes, not worth holding twice.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    serde_json::to_writer(
        &mut out,
        &StateFileRef { version: VERSION, accounting, policy, counters, fingerprints },
    )
    .map_err(std::io::Error::from)
    .and_then(|()| out.flush())
    .and_then(|()| out.get_ref().sync_all())
    .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing state file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_before_the_policy_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut a = Accounting::default();
        a.flow_evictions = 3;
        let old = serde_json::json!({"version": VERSION, "accounting": a});
        fs::write(&path, old.to_string()).unwrap();
        assert_eq!(load(&path).unwrap().accounting.flow_evictions, 3);
    }

    #[test]
    fn missing_file_is_a_fresh_start_and_save_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let fresh = load(&path).unwrap();
        assert!(fresh.accounting.clients.is_empty());
        let mut a = Accounting::default();
        a.flow_evictions = 7;
        let counters = vec![SavedCounter {
            name: "gwsensor_events_dropped_total".into(),
            help: "Events dropped.".into(),
            labels: vec![],
            value: 4.0,
        }];
        let fingerprint = crate::enrich::dhcp::SavedFingerprint {
            mac: [2, 0, 0, 0, 0, 1],
            fingerprint: crate::enrich::dhcp::Fingerprint {
                v4: Some(crate::enrich::dhcp::Request {
                    vendor_class: "android-dhcp-13".into(),
                    ..Default::default()
                }),
                v6: None,
                seen: 9,
            },
        };
        save(&path, &a, &EvalState::default(), &counters, std::slice::from_ref(&fingerprint))
            .unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.accounting.flow_evictions, 7);
        assert_eq!(loaded.counters, counters);
        assert_eq!(loaded.fingerprints, [fingerprint], "DHCP fingerprints are kept");
    }

    #[test]
    fn corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).unwrap().accounting.clients.is_empty());
        assert_eq!(fs::read(dir.path().join("state.corrupt")).unwrap(), b"{not json");
    }

    /// A file of another version is refused with a message saying so (not kept aside as
    /// corrupt, though this version cannot parse it), and a FIFO at the path refuses the
    /// start at once instead of waiting for a writer.
    #[test]
    fn another_version_and_a_fifo_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, br#"{"version": 2, "accounting": "a shape of the future"}"#).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("has version 2 but this agent reads version 1"), "{err}");
        assert!(path.exists(), "the file of another version was moved");

        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = format!("{:#}", load(&fifo).unwrap_err());
        assert!(err.contains("is not a regular file"), "{err}");
    }

    /// A counter no traffic reaches (restored, it would soon wrap or stop) refuses the file:
    /// kept aside like a corrupt one, counting starts afresh. Up to 2^62 is kept.
    #[test]
    fn implausible_counters_refuse_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let with_totals = |bytes: u64| {
            let text = serde_json::json!({"version": VERSION, "accounting": {
                "clients": [[[2, 0, 0, 0, 0, 1], {
                    "totals": {"packets": [3, 1], "bytes": [bytes, 100]},
                    "remotes": {"entries": [], "other": {"packets": [0, 0], "bytes": [0, 0]}},
                    "destinations": {"entries": [], "other": {"packets": [0, 0], "bytes": [0, 0]}},
                    "last_seen": 105}]],
                "flow_evictions": 0, "flows_last": [], "clients_last": [], "last_update": 105}});
            fs::write(&path, text.to_string()).unwrap();
        };
        with_totals(MAX_PLAUSIBLE);
        let kept = load(&path).unwrap();
        assert_eq!(kept.accounting.clients[&[2, 0, 0, 0, 0, 1]].totals.bytes, [MAX_PLAUSIBLE, 100]);
        assert_eq!(kept.accounting.implausible(), None);

        with_totals(u64::MAX - 5);
        let saved = load(&path).unwrap();
        assert!(saved.accounting.clients.is_empty());
        assert!(!path.exists());
        let aside = fs::read_to_string(dir.path().join("state.corrupt")).unwrap();
        let refused: StateFile = serde_json::from_str(&aside).unwrap();
        assert_eq!(
            refused.accounting.implausible().as_deref(),
            Some("client 02:00:00:00:00:01 totals: upload bytes 18446744073709551610")
        );

        // The agent's own counters: negative or beyond 2^62.
        let a = Accounting::default();
        for value in [-1.0, 1e19] {
            let counter = SavedCounter {
                name: "gwsensor_events_dropped_total".into(),
                help: "Events dropped.".into(),
                labels: vec![("kind".into(), "dns".into())],
                value,
            };
            save(&path, &a, &EvalState::default(), &[counter], &[]).unwrap();
            assert!(load(&path).unwrap().counters.is_empty());
        }
        assert!(dir.path().join("state.corrupt.2").exists());
    }

    /// Each corrupt file gets a name of its own: the second does not replace the first; at
    /// most ten are kept, the last name taking the newest.
    #[test]
    fn a_second_corrupt_file_does_not_replace_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for i in 0..12 {
            fs::write(&path, format!("{{corrupt {i}")).unwrap();
            assert!(load(&path).unwrap().accounting.clients.is_empty());
            assert!(!path.exists());
        }
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("state.corrupt"), "{corrupt 0");
        assert_eq!(read("state.corrupt.1"), "{corrupt 1");
        assert_eq!(read("state.corrupt.8"), "{corrupt 8");
        assert_eq!(read("state.corrupt.9"), "{corrupt 11");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 10, "{names:?}");
    }
}
