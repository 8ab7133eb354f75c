//! Files oomtrace writes (captures, exports, kill directories) hold other tenants' process names
//! and command lines, and oomtrace runs as root: they are created 0600 and never opened through a
//! symlink (O_NOFOLLOW on the last component), so a link planted at the path cannot redirect the
//! write to another file. A file already there is overwritten only when it is a regular file of
//! the caller's own (not another user's file planted in /tmp, not a device or a FIFO), and the
//! user is told. `-` is standard output, where that makes sense.
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

/// The path that means standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Standard output as a file of its own (a duplicate descriptor), for `-o -`; refused on a
/// terminal when what would be written is binary.
pub fn stdout(binary: bool) -> Result<File> {
    use std::{io::IsTerminal as _, os::fd::AsFd as _};
    let out = std::io::stdout();
    if binary && out.is_terminal() {
        anyhow::bail!("this output is binary: redirect standard output to a file or a pipe");
    }
    let fd = out
        .as_fd()
        .try_clone_to_owned()
        .context("cannot use standard output")?;
    Ok(File::from(fd))
}

/// Creates `path`, or overwrites the file already there when it is a regular file the caller
/// owns (never a symlink, a device, a FIFO or another user's file), saying so.
pub fn create(path: &Path) -> Result<File> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // O_NONBLOCK: opening a FIFO planted at the path must not wait for a reader.
    let f = said(
        options()
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path),
        path,
    )?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.file_type().is_file() {
        anyhow::bail!(
            "{} is not a regular file: oomtrace writes only to one; choose another path",
            path.display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        anyhow::bail!(
            "{} belongs to uid {}: oomtrace overwrites only its caller's own files; remove it or \
             choose another path",
            path.display(),
            meta.uid()
        );
    }
    if meta.len() > 0 {
        log::warn!("overwriting {}", path.display());
    }
    f.set_len(0)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    // Writes block again (O_NONBLOCK only mattered for the open).
    // SAFETY: fcntl on a descriptor this File owns; F_SETFL takes an int.
    unsafe {
        let flags = libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::F_SETFL,
                flags & !libc::O_NONBLOCK,
            );
        }
    }
    Ok(f)
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
        // A FIFO with no reader (opened O_NONBLOCK for writing).
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(anyhow::anyhow!(
            "{} is not a regular file: oomtrace writes only to one; choose another path",
            path.display()
        )),
        other => other.with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("oomtrace-pf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).ok();
        d
    }

    #[test]
    fn overwrites_only_regular_files_of_the_caller_never_links_fifos_or_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = scratch("create");
        // A file of ours, 0644 with content: emptied, made 0600.
        let mine = d.join("mine");
        std::fs::write(&mine, "old").ok();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).ok();
        assert!(create(&mine).is_ok());
        let meta = std::fs::metadata(&mine).ok();
        assert_eq!(meta.as_ref().map(|m| m.len()), Some(0));
        assert_eq!(meta.map(|m| m.permissions().mode() & 0o777), Some(0o600));
        // A symlink to it: refused, the target untouched.
        std::fs::write(&mine, "keep").ok();
        let link = d.join("link");
        std::os::unix::fs::symlink(&mine, &link).ok();
        let e = create(&link)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&mine).ok().as_deref(), Some("keep"));
        // A FIFO: refused at once, not waited on.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).ok();
        // SAFETY: a valid NUL-terminated path.
        let made = c.is_some_and(|c| unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0);
        assert!(made);
        let e = create(&fifo)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not a regular file"), "{e}");
        // Another user's file (as root, a file chowned to nobody): refused, untouched.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = d.join("theirs");
            std::fs::write(&theirs, "theirs").ok();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).ok();
            let e = create(&theirs)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("belongs to uid 65534"), "{e}");
            assert_eq!(
                std::fs::read_to_string(&theirs).ok().as_deref(),
                Some("theirs")
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
