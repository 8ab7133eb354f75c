//! Every OOM kill kept: DIR/kills/<UTC time>-<VM, pod or memcg>/ holds the `oom` JSON row, the
//! post-mortem as `tail` prints it, and, once `--after` has passed, a capture cut from the
//! flight recorder from `--before` the kill to `--after` it. The cut starts with the facts the
//! model had at its start, so `report` reads it alone, long after the recorder rotated past it.
use std::{
    io::Write as _,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};

use crate::{
    capture::{Reader, Writer},
    model::{Model, OomRow},
    output::Clock,
    render,
};

struct Pending {
    dir: PathBuf,
    from_ns: u64,
    to_ns: u64,
    /// Wall-clock time of `from_ns`: recorder files last written before it hold nothing of it.
    from_wall: SystemTime,
}

pub struct Kills {
    dir: PathBuf,
    flight: PathBuf,
    keep: usize,
    before: Duration,
    after: Duration,
    pending: Vec<Pending>,
}

/// A file name part from text other tenants control: letters, digits, `.`, `_`, `-` only.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect()
}

/// Who was killed, for the directory name: the VM, else the pod, else the memcg's leaf.
fn subject(row: &OomRow) -> String {
    let pm = row.post_mortem.as_deref();
    if let Some(vm) = pm.and_then(|p| p.memcg.vm.as_deref()) {
        return file_safe(&vm.replace('/', "_"));
    }
    if let Some(uid) = pm.and_then(|p| p.memcg.pod.as_ref()?.pod_uid.as_deref()) {
        return file_safe(&format!("pod{uid}"));
    }
    let leaf = row
        .memcg
        .rsplit('/')
        .find(|c| !c.is_empty())
        .unwrap_or("memcg");
    file_safe(leaf)
}

/// A new file, 0600, never through a symlink.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = crate::private_file::create_new(path)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn utc_name(unix_s: f64) -> String {
    let ns = (unix_s * 1e9) as i128;
    match jiff::Timestamp::from_nanosecond(ns) {
        Ok(t) => t.strftime("%Y%m%dT%H%M%S%.3fZ").to_string(),
        Err(_) => format!("{ns}"),
    }
}

impl Kills {
    pub fn new(
        dir: PathBuf,
        flight: PathBuf,
        keep: usize,
        before: Duration,
        after: Duration,
    ) -> Self {
        Self {
            dir,
            flight,
            keep: keep.max(1),
            before,
            after,
            pending: Vec::new(),
        }
    }

    /// The kill's directory with its row and post-mortem, now; its capture after `--after`.
    pub fn record(&mut self, clock: &Clock, row: &OomRow, json_line: &str) -> Result<()> {
        let base = format!(
            "{}-{}",
            utc_name(clock.unix_seconds(row.ts_ns)),
            subject(row)
        );
        let mut dir = self.dir.join(&base);
        let mut n = 1;
        loop {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    dir = self.dir.join(format!("{base}.{n}"));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()));
                }
            }
        }
        write_private(&dir.join("oom.json"), format!("{json_line}\n").as_bytes())?;
        let mut text = Vec::new();
        render::kill(&mut text, clock, row)?;
        write_private(&dir.join("post-mortem.txt"), &text)?;
        let from_ns = row.ts_ns.saturating_sub(self.before.as_nanos() as u64);
        let from_unix = clock.unix_seconds(from_ns).max(0.0);
        self.pending.push(Pending {
            dir,
            from_ns,
            to_ns: row.ts_ns.saturating_add(self.after.as_nanos() as u64),
            from_wall: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(from_unix),
        });
        self.prune();
        Ok(())
    }

    /// Cuts the captures whose window has closed by `now_ns`.
    pub fn cut_due(&mut self, now_ns: u64) -> Result<()> {
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.to_ns <= now_ns);
        self.pending = wait;
        let mut first_error = None;
        for p in due {
            if let Err(e) = cut(&self.flight, &p) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// At the end: every pending kill gets what the recorder holds so far.
    pub fn cut_all(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            if let Err(e) = cut(&self.flight, &p) {
                log::error!("cannot cut a kill's capture: {e:#}");
            }
        }
    }

    /// Keeps the newest `keep` kill directories (names start with their UTC time).
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        let excess = dirs.len().saturating_sub(self.keep);
        for d in dirs.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                log::warn!("cannot remove old kill directory {}: {e}", d.display());
            }
        }
    }
}

/// The recorder's inputs from `from_ns` to `to_ns` into DIR/capture.otr, after the facts the
/// model had learned by `from_ns` (from the newest file that started before it).
fn cut(flight: &Path, p: &Pending) -> Result<()> {
    let files: Vec<PathBuf> = super::flight_files(flight)
        .into_iter()
        .filter(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= p.from_wall)
        })
        .collect();
    let out_path = p.dir.join("capture.otr");
    let mut model = Model::new();
    model.set_quiet_charges(true);
    let mut writer: Option<Writer> = None;
    let mut header = None;
    'files: for f in &files {
        let mut r = Reader::open(f)?;
        if header.is_none() {
            header = r.header.clone();
        }
        while let Some(input) = r.next_input()? {
            let ts = input.ts_ns();
            if ts.is_some_and(|t| t > p.to_ns) {
                break 'files;
            }
            match writer.as_mut() {
                Some(w) => w.push(&input)?,
                None if ts.is_some_and(|t| t >= p.from_ns) => {
                    let mut w = new_cut(&out_path, header.clone())?;
                    for fact in model.facts() {
                        w.push(&fact)?;
                    }
                    w.push(&input)?;
                    writer = Some(w);
                }
                None => {
                    model.feed(&input);
                }
            }
        }
    }
    let w = match writer {
        Some(w) => w,
        None => {
            let mut w = new_cut(&out_path, header)?;
            for fact in model.facts() {
                w.push(&fact)?;
            }
            w
        }
    };
    w.finish()?;
    Ok(())
}

fn new_cut(path: &Path, header: Option<crate::capture::Header>) -> Result<Writer> {
    let header = header.context("the flight recorder has no readable file")?;
    Writer::create(path, header, None, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_other_tenants_become_safe_file_names() {
        assert_eq!(file_safe("default/vm1"), "default_vm1");
        assert_eq!(file_safe("../../etc\n\u{1b}[31m"), ".._.._etc___31m");
        assert_eq!(file_safe(&"x".repeat(500)).len(), 96);
    }
}
