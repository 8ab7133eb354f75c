//! `oomtrace explain`: find the kernel's OOM reports in log text and say what they mean.
//!
//! text → lines (bounded) → prefixes stripped → reports assembled → interpreted → printed,
//! one report at a time, so memory stays bounded whatever the input size.
pub mod interpret;
pub mod lines;
pub mod parse;
pub mod prefix;
pub mod render;
pub mod report;

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::fs::OpenOptionsExt,
};

use anyhow::{Context, Result, bail};

use crate::kubevirt::cmdline::{self, VmFacts};
pub use interpret::{Explanation, Hints, explain};

/// Longest line kept; the rest of a longer line is skipped with a warning.
const MAX_LINE: usize = 64 * 1024;

pub enum Source {
    Stdin,
    File(String),
    /// The running kernel's log (/dev/kmsg).
    KernelLog,
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Stdin => "standard input".into(),
            Source::File(p) => p.clone(),
            Source::KernelLog => "the kernel log (/dev/kmsg)".into(),
        }
    }
}

/// Reads /dev/kmsg without blocking: one record per read, multi-line records split back into
/// lines (the kernel escapes their newlines as "\x0a").
struct KmsgReader {
    file: File,
    pending: Vec<u8>,
    done: bool,
}

impl Read for KmsgReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() && !self.done {
            let mut rec = vec![0u8; 16 * 1024];
            match self.file.read(&mut rec) {
                Ok(0) => self.done = true,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&rec[..n]);
                    // Continuation lines (" SUBSYSTEM=...") are dictionary entries, not text.
                    let first = rec.lines().next().unwrap_or("");
                    let (head, msg) = first.split_once(';').unwrap_or(("", first));
                    // Written back in dmesg's form: "[seconds.micros] text".
                    let usec: u64 = head
                        .split(',')
                        .nth(2)
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let stamp = format!("[{:5}.{:06}] ", usec / 1_000_000, usec % 1_000_000);
                    for part in msg.split("\\x0a") {
                        self.pending.extend_from_slice(stamp.as_bytes());
                        self.pending.extend_from_slice(part.as_bytes());
                        self.pending.push(b'\n');
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.done = true,
                // EPIPE: records were overwritten while we read; carry on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

fn open(source: &Source) -> Result<Box<dyn BufRead>> {
    Ok(match source {
        Source::Stdin => Box::new(BufReader::new(io::stdin())),
        Source::File(p) => {
            let f = File::open(p).with_context(|| format!("cannot open {p}"))?;
            if f.metadata().is_ok_and(|m| m.is_dir()) {
                bail!("{p} is a directory; give a log file (e.g. journalctl -k > kernel.log)");
            }
            Box::new(BufReader::with_capacity(256 * 1024, f))
        }
        Source::KernelLog => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/dev/kmsg")
                .context(
                    "cannot read the kernel log (/dev/kmsg); run as root, or save the log and \
                     pass it: `journalctl -k > kernel.log; oomtrace explain kernel.log`",
                )?;
            Box::new(BufReader::new(KmsgReader {
                file,
                pending: Vec::new(),
                done: false,
            }))
        }
    })
}

/// VM facts that a log line shows: a qemu or virt-launcher command line (libvirt's qemu log,
/// virt-launcher's own log, `ps` output pasted into the file).
fn vm_facts_in_line(line: &str) -> Option<VmFacts> {
    let start = line
        .find("qemu-system-")
        .or_else(|| line.find("virt-launcher "))?;
    // Back up to the start of the path ("/usr/bin/qemu-system-x86_64").
    let begin = line[..start].rfind([' ', '"', '\'']).map_or(0, |i| i + 1);
    let argv: Vec<String> = line[begin..]
        .split_whitespace()
        .map(|a| a.trim_matches(['"', '\'', ',']).to_string())
        .collect();
    let f = cmdline::parse(&argv);
    (f != VmFacts::default()).then_some(f)
}

pub struct Options {
    pub source: Source,
    pub json: bool,
    pub hints: Hints,
}

/// Returns how many reports were found.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<usize> {
    let reader = open(&opts.source)?;
    run_on(reader, &opts.source.name(), opts, out)
}

/// `run` on text already open (`name` says where it came from): the fuzz targets' entry too.
pub fn run_on(
    reader: impl BufRead,
    name: &str,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<usize> {
    let mut lines = lines::BoundedLines::new(reader, MAX_LINE);
    let mut asm = parse::Assembler::new();
    let mut found = 0usize;
    let mut seen_vm = VmFacts::default();
    let mut emit =
        |report: report::OomReport, seen_vm: &VmFacts, out: &mut dyn Write| -> Result<()> {
            found += 1;
            let mut hints = opts.hints.clone();
            hints.vm.merge(seen_vm.clone());
            let e = explain(report, &hints);
            if opts.json {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            } else {
                // The report's fields are other tenants' text: escaped on the way out.
                let mut text = Vec::new();
                render::text(&mut text, found, &e)?;
                let text = String::from_utf8_lossy(&text);
                out.write_all(crate::visible::visible_lines(&text).as_bytes())?;
            }
            Ok(())
        };
    let mut line_no = 0u64;
    loop {
        let line = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                // Keep what was read: finish the open report, then say what went wrong.
                if let Some(r) = asm.finish() {
                    emit(r, &seen_vm, out)?;
                }
                return Err(e).with_context(|| format!("reading {name}"));
            }
        };
        line_no += 1;
        if let Some(f) = vm_facts_in_line(&line.text) {
            seen_vm = f;
        }
        let done = asm.push(&line.text);
        if line.cut {
            asm.warn(format!(
                "line {line_no} is longer than {MAX_LINE} bytes; its end was skipped"
            ));
        }
        if line.lossy {
            asm.warn(format!("line {line_no} holds bytes that are not UTF-8"));
        }
        if let Some(r) = done {
            emit(r, &seen_vm, out)?;
        }
    }
    if let Some(r) = asm.finish() {
        emit(r, &seen_vm, out)?;
    }
    if found == 0 {
        bail!(
            "no OOM report found in {name} ({line_no} lines read); a report starts with \"<comm> invoked oom-killer:\""
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn vm_facts_come_from_command_lines_quoted_in_logs() {
        let f = vm_facts_in_line(
            "2024-05-09 14:00:00.000+0000: starting up libvirt version: 10.0.0 LC_ALL=C /usr/bin/qemu-system-x86_64 -name guest=default_vm2,debug-threads=on -m size=1994752k -smp 2,sockets=1",
        )
        .unwrap();
        assert_eq!(f.display_name().as_deref(), Some("default/vm2"));
        assert_eq!(f.vcpus, Some(2));
        assert!(vm_facts_in_line("kernel: qemu-system-x86 invoked oom-killer").is_none());
    }
}
