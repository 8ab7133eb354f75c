//! Files oomtrace writes (captures, exports, kill directories) hold other tenants' process names
//! and command lines, and oomtrace runs as root: they are created 0600 and never opened through a
//! symlink (O_NOFOLLOW on the last component), so a link planted at the path cannot redirect the
//! write to another file.
use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context as _, Result};

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Creates `path`, or truncates the file already there (not a symlink).
pub fn create(path: &Path) -> Result<File> {
    said(options().create(true).truncate(true).open(path), path)
}

/// Creates `path`, which must not exist yet.
pub fn create_new(path: &Path) -> Result<File> {
    said(options().create_new(true).open(path), path)
}

fn said(opened: std::io::Result<File>, path: &Path) -> Result<File> {
    match opened {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(anyhow::anyhow!(
            "{} is a symlink: oomtrace does not write through one; remove it or choose another path",
            path.display()
        )),
        other => other.with_context(|| format!("cannot create {}", path.display())),
    }
}
