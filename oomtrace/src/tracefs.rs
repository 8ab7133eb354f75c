//! Where tracefs is, mounting it when allowed, and parsing tracepoint `format` files.
//!
//! Field offsets of the tracepoints we attach come from here and are injected into the eBPF
//! programs, so a kernel that moved a field still gets correct reads (Rust eBPF has no CO-RE).
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

const CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds a mounted tracefs; mounts it at /sys/kernel/tracing when none is and `mount` is true.
pub fn find(mount: bool) -> Result<PathBuf> {
    for dir in CANDIDATES {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    if !mount {
        bail!("tracefs is not mounted; run `mount -t tracefs nodev /sys/kernel/tracing`");
    }
    let target = CANDIDATES[0];
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", target])
        .status()
        .context("tracefs is not mounted and `mount` could not be run")?;
    if !status.success() || !Path::new(target).join("events").is_dir() {
        bail!(
            "tracefs is not mounted and mounting it at {target} failed; run \
             `mount -t tracefs nodev {target}` as root"
        );
    }
    Ok(PathBuf::from(target))
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The parsed `format` file of one tracepoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is not available ({})",
                path.display()
            )
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses lines like `\tfield:u64 id;\toffset:8;\tsize:8;\tsigned:0;`. Lines that do not have
    /// that shape are skipped, so an unexpected line never fails the whole format.
    pub fn parse(text: &str) -> Self {
        let mut fields = Vec::new();
        for line in text.lines() {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size)
                && let Some(name) = field_name(decl)
            {
                fields.push(Field { name, offset, size });
            }
        }
        Self { fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field, or an error naming the tracepoint when it is missing.
    pub fn offset(&self, tracepoint: &str, name: &str) -> Result<u32> {
        match self.field(name) {
            Some(f) => Ok(f.offset),
            None => bail!("tracepoint {tracepoint} has no field `{name}` on this kernel"),
        }
    }

    /// Offset of an optional field, -1 when absent.
    pub fn offset_or_missing(&self, name: &str) -> i32 {
        self.field(name).map_or(-1, |f| f.offset as i32)
    }
}

/// `unsigned long total_vm` → `total_vm`; `char comm[16]` → `comm`; `__data_loc char[] comm` → `comm`.
fn field_name(decl: &str) -> Option<String> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?;
    if name.is_empty() {
        None
    } else {
        Some(name.to_string())
    }
}

/// Whether a tracepoint exists on this kernel.
pub fn has_tracepoint(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs.join("events").join(category).join(name).is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_VICTIM: &str = "name: mark_victim\nID: 609\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:char comm2[16];\toffset:24;\tsize:16;\tsigned:0;\n\n\
print fmt: \"pid=%d\", REC->pid\n";

    #[test]
    fn format_parse_finds_plain_array_and_data_loc_fields() {
        let f = Format::parse(MARK_VICTIM);
        assert_eq!(f.field("pid").map(|f| f.offset), Some(8));
        assert_eq!(f.field("comm").map(|f| (f.offset, f.size)), Some((12, 4)));
        assert_eq!(f.field("total_vm").map(|f| f.offset), Some(16));
        assert_eq!(f.field("comm2").map(|f| f.size), Some(16));
        assert_eq!(f.field("common_type").map(|f| f.offset), Some(0));
    }

    #[test]
    fn format_parse_skips_garbage_lines_and_reports_missing_fields() {
        let f =
            Format::parse("field:\noffset:x;\n\tfield:int a;\toffset:zz;\tsize:4;\n\u{0}\u{ff}");
        assert!(f.fields.is_empty());
        assert_eq!(f.offset_or_missing("a"), -1);
        assert!(f.offset("t:p", "a").is_err());
    }
}
