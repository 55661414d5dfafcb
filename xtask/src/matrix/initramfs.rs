//! The guest's initramfs: a newc cpio (what the kernel unpacks) with busybox, the kernel's
//! network modules, the checker and /init, written directly (no cpio tool needed).

use std::{fs, io::Write as _, path::Path};

use anyhow::{Context as _, Result};

/// Files and directories of the archive, in order (directories before their contents).
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry_rdev(name, mode, body, (0, 0));
    }

    fn entry_rdev(&mut self, name: &str, mode: u32, body: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    pub fn file(&mut self, name: &str, body: &[u8], executable: bool) {
        self.entry(name, if executable { 0o100_755 } else { 0o100_644 }, body);
    }

    /// A character device node (the kernel opens /dev/console for init before anything runs).
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry_rdev(name, 0o020_600, &[], (major, minor));
    }

    pub fn copy(&mut self, name: &str, from: &Path, executable: bool) -> Result<()> {
        let body = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.file(name, &body, executable);
        Ok(())
    }

    pub fn write(mut self, to: &Path) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        let mut f = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
        f.write_all(&self.data)?;
        Ok(())
    }
}
