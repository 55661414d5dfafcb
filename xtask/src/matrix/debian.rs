//! Debian packages for the matrix guests (kernels, arm64 busybox), fetched with `apt-get
//! download` through a private apt setup per suite and architecture under target/matrix/apt/
//! (the host's own apt state is not touched). The archive addresses are the host's own Debian
//! sources. Downloads are kept in target/matrix/debs/, so a rerun fetches nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{output, run};

const LABEL: &str = "matrix";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt for one suite (and its security updates) and architecture.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(cache: &Path, suite: &str, arch: &str) -> Result<Apt> {
        let dir = cache.join("apt").join(format!("{suite}-{arch}"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let (main, security) = host_mirrors()?;
        let opts = format!("[arch={arch} signed-by={KEYRING}]");
        let sources = format!(
            "deb {opts} {main} {suite} main\ndeb {opts} {security} {suite}-security main\n"
        );
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, sources)?;
            let _ = fs::remove_file(dir.join("updated"));
        }
        let apt = Apt { dir };
        if !apt.dir.join("updated").exists() {
            apt.update()?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = |p: &str| self.dir.join(p).display().to_string();
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "-o".into(),
            format!("Dir::Etc::sourcelist={}", d("sources.list")),
            "-o".into(),
            "Dir::Etc::sourceparts=-".into(),
            "-o".into(),
            format!("Dir::State::Lists={}", d("lists")),
            "-o".into(),
            format!("Dir::Cache={}", d("cache")),
            "-o".into(),
            format!("APT::Architectures={}", self.arch()),
            "-o".into(),
            "Debug::NoLocking=1".into(),
        ]);
        cmd
    }

    fn arch(&self) -> String {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned());
        name.and_then(|n| n.rsplit('-').next().map(str::to_owned)).unwrap_or_default()
    }

    fn update(&self) -> Result<()> {
        let what = format!("package lists for {}", self.dir.display());
        run(LABEL, &what, self.command("apt-get").arg("update"))?;
        fs::write(self.dir.join("updated"), "")?;
        Ok(())
    }

    /// The package and version that `meta` (e.g. linux-image-amd64) currently depends on
    /// first: the suite's newest kernel.
    pub fn resolve(&self, meta: &str) -> Result<(String, String)> {
        let shown = output(self.command("apt-cache").args(["show", "--no-all-versions", meta]))?;
        let depends = shown
            .lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .with_context(|| format!("{meta} has no Depends"))?;
        // "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
        let first = depends.split(',').next().unwrap_or_default().trim();
        let (name, version) = first
            .split_once(" (= ")
            .with_context(|| format!("{meta}'s dependency {first:?} has no exact version"))?;
        Ok((name.to_owned(), version.trim_end_matches(')').to_owned()))
    }

    /// The .deb of `package` (`name=version`, or a name for the candidate), downloaded once
    /// into `debs`.
    pub fn download(&self, debs: &Path, package: &str) -> Result<PathBuf> {
        fs::create_dir_all(debs)?;
        let (name, version) = package.split_once('=').unwrap_or((package, ""));
        let arch = self.arch();
        let find = || {
            fs::read_dir(debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                let f = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                f.starts_with(&format!("{name}_"))
                    && f.contains(&version.replace(':', "%3a"))
                    && (f.ends_with(&format!("_{arch}.deb")) || f.ends_with("_all.deb"))
            })
        };
        if let Some(found) = find() {
            return Ok(found);
        }
        let qualified = format!(
            "{name}:{arch}{}",
            if version.is_empty() { String::new() } else { format!("={version}") }
        );
        let mut fetch = self.command("apt-get");
        fetch.current_dir(debs).args(["download", &qualified]);
        if run(LABEL, &format!("downloading {qualified}"), &mut fetch).is_err() {
            // The lists may be older than the archive (a superseded security update).
            self.update()?;
            let mut fetch = self.command("apt-get");
            run(
                LABEL,
                &format!("downloading {qualified}"),
                fetch.current_dir(debs).args(["download", &qualified]),
            )?;
        }
        find().with_context(|| {
            format!("apt-get download {qualified} wrote no .deb in {}", debs.display())
        })
    }
}

/// The host's Debian archive and security archive addresses, from its apt sources (deb822 or
/// one-line form), so that the matrix uses the mirror this machine is configured for.
fn host_mirrors() -> Result<(String, String)> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let (mut main, mut security) = (None, None);
    for text in &texts {
        for (uri, suites) in entries(text) {
            if !uri.contains("debian") {
                continue;
            }
            if suites.iter().any(|s| s.ends_with("-security")) {
                security.get_or_insert(uri);
            } else if !suites.is_empty() {
                main.get_or_insert(uri);
            }
        }
    }
    match (main, security) {
        (Some(m), Some(s)) => Ok((m, s)),
        (m, s) => bail!(
            "the kernel matrix downloads Debian kernels through this host's apt sources, which name no Debian archive{}: add one to /etc/apt/sources.list.d/",
            if m.is_some() && s.is_none() { " for security updates" } else { "" }
        ),
    }
}

/// (URI, suites) of every source entry: deb822 stanzas and one-line `deb URI suite ...`.
fn entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        };
        if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
            for uri in uris {
                out.push((uri, suites.clone()));
            }
        }
    }
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
            .collect();
        if let [uri, suite, ..] = rest.as_slice() {
            out.push(((*uri).to_owned(), vec![(*suite).to_owned()]));
        }
    }
    out
}

/// Unpacks a .deb once into `dir`.
pub fn extract(deb: &Path, dir: &Path) -> Result<()> {
    if dir.join(".extracted").exists() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    fs::write(dir.join(".extracted"), "")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_source_forms() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        let e = entries(deb822);
        assert_eq!(e[0].0, "http://mirror.example/debian");
        assert_eq!(e[1].1, vec!["bookworm-security".to_string()]);
        let one = "deb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(entries(one), vec![("http://m.example/debian".into(), vec!["bookworm".into()])]);
    }
}
