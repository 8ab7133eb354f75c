//! Writing a capture: model inputs are postcard-encoded into a block, and each block becomes one
//! zstd-compressed, CRC-checked frame, written whole. What reached the file survives SIGKILL; the
//! file is synced to disk every few seconds and at the end. Rotation keeps at most `keep` older
//! files of at most `max_size` bytes each.
use std::{
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::format::{self, Header, KIND_BLOCK, KIND_HEADER};
use crate::model::input::ModelInput;

/// A block is framed when it reaches this size (uncompressed), or at every collector tick.
const BLOCK_BYTES: usize = 256 * 1024;
const SYNC_EVERY: Duration = Duration::from_secs(5);
const ZSTD_LEVEL: i32 = 3;

#[derive(Clone, Copy, Debug, Default)]
pub struct WriterStats {
    pub inputs: u64,
    /// Bytes written to all files of this recording.
    pub bytes: u64,
    pub frames: u64,
    pub files: u32,
}

pub struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
    header: Header,
    block: Vec<u8>,
    file_bytes: u64,
    max_size: Option<u64>,
    keep: usize,
    last_sync: Instant,
    /// Writing to standard output: nothing to sync or rotate.
    to_stdout: bool,
    pub stats: WriterStats,
}

impl Writer {
    /// `path` `-`: standard output (no rotation, no syncs).
    pub fn create(path: &Path, header: Header, max_size: Option<u64>, keep: usize) -> Result<Self> {
        let to_stdout = crate::private_file::is_stdout(path);
        if to_stdout && max_size.is_some() {
            anyhow::bail!("a capture on standard output cannot rotate: drop --max-size");
        }
        let file = if to_stdout {
            crate::private_file::stdout(true)?
        } else {
            crate::private_file::create(path)?
        };
        let mut w = Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            header,
            block: Vec::with_capacity(BLOCK_BYTES),
            file_bytes: 0,
            max_size,
            keep,
            last_sync: Instant::now(),
            to_stdout,
            stats: WriterStats {
                files: 1,
                ..Default::default()
            },
        };
        w.start_file(&[])?;
        Ok(w)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file_bytes += bytes.len() as u64;
        self.stats.bytes += bytes.len() as u64;
        Ok(())
    }

    fn start_file(&mut self, facts: &[ModelInput]) -> Result<()> {
        self.write_raw(&format::file_head())?;
        let header = postcard::to_stdvec(&self.header).context("cannot encode the header")?;
        self.write_raw(&format::frame(KIND_HEADER, &header))?;
        for f in facts {
            self.push(f)?;
        }
        self.flush_block()
    }

    pub fn push(&mut self, input: &ModelInput) -> Result<()> {
        postcard::to_io(input, &mut self.block).context("cannot encode a capture record")?;
        self.stats.inputs += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Frames the pending block and hands it to the OS.
    pub fn flush_block(&mut self) -> Result<()> {
        if !self.block.is_empty() {
            let packed = zstd::bulk::compress(&self.block, ZSTD_LEVEL)
                .context("cannot compress a capture block")?;
            self.block.clear();
            self.write_raw(&format::frame(KIND_BLOCK, &packed))?;
            self.stats.frames += 1;
        }
        self.file.flush().context("cannot write the capture file")?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.last_sync = Instant::now();
            let _ = self.file.get_ref().sync_data();
        }
        Ok(())
    }

    /// At a tick: frames what is pending and rotates when the file is full. `facts` gives what a
    /// new file must start with to be read on its own.
    pub fn tick(&mut self, facts: impl FnOnce() -> Vec<ModelInput>) -> Result<()> {
        self.flush_block()?;
        if self.max_size.is_some_and(|m| self.file_bytes >= m) {
            self.rotate(&facts())?;
        }
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self, facts: &[ModelInput]) -> Result<()> {
        let _ = self.file.get_ref().sync_data();
        self.shift_old_files()?;
        let file = crate::private_file::create(&self.path)?;
        self.file = BufWriter::new(file);
        self.file_bytes = 0;
        self.header.sequence += 1;
        self.stats.files += 1;
        self.start_file(facts)
    }

    /// The current file becomes `.1`, `.1` becomes `.2`, ..., the oldest beyond `keep` goes.
    fn shift_old_files(&self) -> Result<()> {
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
            return Ok(());
        }
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        match fs::rename(&self.path, self.rotated(1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot rotate {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Starts a new file after the recording stopped (a full disk, say). It is written under a
    /// temporary name first, so a failed attempt moves and removes nothing; then the files
    /// before it rotate as usual and keep what they hold (the last may end in a torn frame,
    /// which readers skip).
    pub fn resume(
        path: &Path,
        header: Header,
        max_size: Option<u64>,
        keep: usize,
        facts: &[ModelInput],
    ) -> Result<Self> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let attempt = || -> Result<Self> {
            let mut w = Self::create(&tmp, header, max_size, keep)?;
            for f in facts {
                w.push(f)?;
            }
            w.flush_block()?;
            w.path = path.to_path_buf();
            w.shift_old_files()?;
            fs::rename(&tmp, path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
            Ok(w)
        };
        attempt().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// The header the next file would carry (its sequence continues this recording's).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Frames what is pending and syncs the file to disk.
    pub fn finish(mut self) -> Result<WriterStats> {
        self.flush_block()?;
        if self.to_stdout {
            self.file
                .flush()
                .context("cannot write to standard output")?;
        } else {
            self.file
                .get_ref()
                .sync_all()
                .with_context(|| format!("cannot sync {}", self.path.display()))?;
        }
        Ok(self.stats)
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
}
