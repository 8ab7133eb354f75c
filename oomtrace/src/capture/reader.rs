//! Reading a capture, streamed: frames are checked one by one; a corrupt region is skipped up to
//! the next frame that checks out, a torn last frame is ignored, and each is reported as a
//! warning. Only a file that is not a capture at all, or one from a newer format, is an error.
use std::{
    collections::VecDeque,
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

use super::format::{self, FRAME_HEAD, Header, KIND_BLOCK, KIND_HEADER, Parsed};
use crate::model::input::ModelInput;

/// A decompressed block may not exceed this (a writer's block is 256 KiB).
const MAX_BLOCK: usize = 64 << 20;
const MAX_WARNINGS: usize = 50;

pub struct Reader {
    src: Box<dyn Read>,
    name: String,
    buf: Vec<u8>,
    /// File offset of buf[0].
    offset: u64,
    eof: bool,
    pending: VecDeque<ModelInput>,
    pub header: Option<Header>,
    pub warnings: Vec<String>,
    /// Bytes that were skipped as corrupt.
    pub skipped_bytes: u64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            bail!("{} is a directory, not an oomtrace capture", path.display());
        }
        Self::from_reader(Box::new(BufReader::new(f)), &path.display().to_string())
    }

    pub fn from_reader(mut src: Box<dyn Read>, name: &str) -> Result<Self> {
        let mut head = [0u8; 10];
        let mut got = 0;
        while got < head.len() {
            match src.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {name}")),
            }
        }
        if got == 0 {
            bail!("{name} is empty: not an oomtrace capture");
        }
        if got < 10 || &head[..8] != format::MAGIC {
            bail!("{name} is not an oomtrace capture (no OOMTRACE magic at its start)");
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version > format::VERSION {
            bail!(
                "{name} was written by a newer oomtrace (capture format {version}); this one reads format {}",
                format::VERSION
            );
        }
        let mut r = Self {
            src,
            name: name.to_string(),
            buf: Vec::new(),
            offset: 10,
            eof: false,
            pending: VecDeque::new(),
            header: None,
            warnings: Vec::new(),
            skipped_bytes: 0,
        };
        // The header is the first frame; read until it (or the first block) shows up.
        while r.header.is_none() && r.pending.is_empty() && r.next_frame()? {}
        if r.header.is_none() {
            r.warn(format!(
                "{name}: the header frame is missing or corrupt; events are read without it"
            ));
        }
        Ok(r)
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        }
    }

    fn fill(&mut self, want: usize) -> Result<()> {
        while !self.eof && self.buf.len() < want {
            let mut chunk = vec![0u8; (want - self.buf.len()).max(64 * 1024)];
            match self.src.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.name)),
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.offset += n as u64;
    }

    /// Reads one frame (or skips one corrupt region). False at the end of the file.
    fn next_frame(&mut self) -> Result<bool> {
        self.fill(FRAME_HEAD)?;
        if self.buf.is_empty() {
            return Ok(false);
        }
        // Enough for the frame the length field announces (bounded by MAX_PAYLOAD).
        if self.buf.len() >= 8 && &self.buf[..4] == format::SYNC {
            let len =
                u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if len <= format::MAX_PAYLOAD {
                self.fill(FRAME_HEAD + len)?;
            }
        }
        match format::parse_frame(&self.buf) {
            Parsed::Frame { kind, payload, len } => {
                let payload = payload.to_vec();
                self.consume(len);
                self.decode(kind, &payload);
                Ok(true)
            }
            Parsed::Incomplete if self.eof => {
                let n = self.buf.len();
                let at = self.offset;
                self.warn(format!(
                    "{}: the last frame is torn ({n} bytes at offset {at}, e.g. the recorder was killed); ignored",
                    self.name
                ));
                self.skipped_bytes += n as u64;
                self.consume(n);
                Ok(false)
            }
            Parsed::Incomplete => Ok(true),
            Parsed::Bad => {
                let start = self.offset;
                let skipped = self.resync()?;
                self.skipped_bytes += skipped as u64;
                self.warn(format!(
                    "{}: {skipped} corrupt bytes at offset {start} skipped",
                    self.name
                ));
                Ok(true)
            }
        }
    }

    /// Drops bytes up to the next SYNC that starts a valid frame; returns how many.
    fn resync(&mut self) -> Result<usize> {
        let mut skipped = 0;
        loop {
            // Skip at least one byte, then look for the next SYNC.
            let from = 1.min(self.buf.len());
            let next = self.buf[from..]
                .windows(4)
                .position(|w| w == format::SYNC)
                .map(|p| p + from);
            match next {
                Some(p) => {
                    self.consume(p);
                    skipped += p;
                    if self.buf.len() >= 8 {
                        let len = u32::from_le_bytes([
                            self.buf[4],
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                        ]) as usize;
                        if len <= format::MAX_PAYLOAD {
                            self.fill(FRAME_HEAD + len)?;
                        }
                    }
                    match format::parse_frame(&self.buf) {
                        Parsed::Frame { .. } => return Ok(skipped),
                        Parsed::Incomplete if self.eof => return Ok(skipped),
                        _ => continue,
                    }
                }
                None => {
                    // Keep the last 3 bytes: they may start a SYNC.
                    let keep = self.buf.len().min(3);
                    let drop = self.buf.len() - keep;
                    self.consume(drop);
                    skipped += drop;
                    if self.eof {
                        let n = self.buf.len();
                        self.consume(n);
                        return Ok(skipped + n);
                    }
                    self.fill(self.buf.len() + 64 * 1024)?;
                }
            }
        }
    }

    fn decode(&mut self, kind: u8, payload: &[u8]) {
        match kind {
            KIND_HEADER => match postcard::from_bytes::<Header>(payload) {
                Ok(h) => {
                    if self.header.is_none() {
                        self.header = Some(h);
                    }
                }
                Err(e) => self.warn(format!("{}: unreadable header frame: {e}", self.name)),
            },
            KIND_BLOCK => {
                // The frame says its decompressed size: allocate that, not the bound.
                let size = zstd::zstd_safe::get_frame_content_size(payload)
                    .ok()
                    .flatten()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n <= MAX_BLOCK)
                    .unwrap_or(MAX_BLOCK);
                let raw = match zstd::bulk::decompress(payload, size) {
                    Ok(r) => r,
                    Err(e) => {
                        self.warn(format!(
                            "{}: a block does not decompress: {e}; skipped",
                            self.name
                        ));
                        return;
                    }
                };
                let mut rest: &[u8] = &raw;
                while !rest.is_empty() {
                    match postcard::take_from_bytes::<ModelInput>(rest) {
                        Ok((input, tail)) => {
                            self.pending.push_back(input);
                            rest = tail;
                        }
                        Err(e) => {
                            let n = rest.len();
                            self.warn(format!(
                                "{}: a block holds {n} undecodable bytes ({e}); the rest of it is skipped",
                                self.name
                            ));
                            break;
                        }
                    }
                }
            }
            other => self.warn(format!(
                "{}: unknown frame kind {other}; skipped",
                self.name
            )),
        }
    }

    /// The next model input, in recorded order; None at the end.
    pub fn next_input(&mut self) -> Result<Option<ModelInput>> {
        loop {
            if let Some(i) = self.pending.pop_front() {
                return Ok(Some(i));
            }
            if !self.next_frame()? {
                return Ok(None);
            }
        }
    }
}
