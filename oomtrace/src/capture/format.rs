//! The capture file format (docs/capture-format.md): a file magic and version, then frames.
//!
//! frame = SYNC (4 bytes "OTFR") | payload length (u32 LE) | CRC-32 of kind+payload (u32 LE) |
//!         kind (u8) | payload
//!
//! kind 1: the header (postcard `Header`); kind 2: a block of model inputs, each postcard-encoded
//! back to back, zstd-compressed as one. Every frame stands alone, so a torn last frame or a
//! corrupt one in the middle costs only that frame: the reader finds the next SYNC.
use serde::{Deserialize, Serialize};

use crate::bpf::HookChoice;

pub const MAGIC: &[u8; 8] = b"OOMTRACE";
pub const VERSION: u16 = 1;
pub const SYNC: &[u8; 4] = b"OTFR";
pub const FRAME_HEAD: usize = 4 + 4 + 4 + 1;
/// No writer makes bigger frames; a larger length field is corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

pub const KIND_HEADER: u8 = 1;
pub const KIND_BLOCK: u8 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub host: String,
    pub kernel: String,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC at start (ns): event stamps → wall time.
    pub realtime_offset_ns: i64,
    /// CLOCK_MONOTONIC at start (ns).
    pub start_mono_ns: u64,
    /// What the collector watched ("all", a cgroup path, "pid N").
    pub target: String,
    /// The program chosen for each hook, or why none was.
    pub hooks: Vec<SavedHook>,
    /// Files before this one in a rotation (0 for the first).
    pub sequence: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedHook {
    pub hook: String,
    pub tracepoint: String,
    pub tier: String,
    pub reason: String,
}

impl From<&HookChoice> for SavedHook {
    fn from(h: &HookChoice) -> Self {
        Self {
            hook: h.hook.to_string(),
            tracepoint: h.target.clone(),
            tier: h.tier.to_string(),
            reason: h.reason.clone(),
        }
    }
}

pub fn file_head() -> [u8; 10] {
    let mut h = [0u8; 10];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// One frame's bytes.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    let mut out = Vec::with_capacity(FRAME_HEAD + payload.len());
    out.extend_from_slice(SYNC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// What the bytes at the start of `buf` are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Frame {
        kind: u8,
        payload: &'a [u8],
        len: usize,
    },
    /// More bytes are needed (at the end of a file: a torn frame).
    Incomplete,
    /// Not a valid frame here.
    Bad,
}

pub fn parse_frame(buf: &[u8]) -> Parsed<'_> {
    if buf.len() < FRAME_HEAD {
        return if SYNC.starts_with(&buf[..buf.len().min(4)]) {
            Parsed::Incomplete
        } else {
            Parsed::Bad
        };
    }
    if &buf[..4] != SYNC {
        return Parsed::Bad;
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Bad;
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let total = FRAME_HEAD + len;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let kind = buf[12];
    let payload = &buf[FRAME_HEAD..total];
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    if h.finalize() != crc {
        return Parsed::Bad;
    }
    Parsed::Frame {
        kind,
        payload,
        len: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_parses_back_and_any_flipped_byte_is_caught() {
        let f = frame(KIND_BLOCK, b"hello world");
        assert_eq!(
            parse_frame(&f),
            Parsed::Frame {
                kind: KIND_BLOCK,
                payload: b"hello world",
                len: f.len()
            }
        );
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            assert!(
                !matches!(
                    parse_frame(&g),
                    Parsed::Frame {
                        payload: b"hello world",
                        kind: KIND_BLOCK,
                        ..
                    }
                ),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn a_cut_frame_is_incomplete_not_bad() {
        let f = frame(KIND_BLOCK, &[7u8; 100]);
        for cut in 0..f.len() {
            assert_eq!(parse_frame(&f[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }
}
