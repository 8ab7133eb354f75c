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

/// A capture holds other tenants' process names and command lines: created 0600, and never
/// through a symlink (O_NOFOLLOW on the last component).
fn create_private(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create capture file {}", path.display()))
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
    pub stats: WriterStats,
}

impl Writer {
    pub fn create(path: &Path, header: Header, max_size: Option<u64>, keep: usize) -> Result<Self> {
        let file = create_private(path)?;
        let mut w = Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            header,
            block: Vec::with_capacity(BLOCK_BYTES),
            file_bytes: 0,
            max_size,
            keep,
            last_sync: Instant::now(),
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
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            let _ = fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            fs::rename(&self.path, self.rotated(1))
                .with_context(|| format!("cannot rotate {}", self.path.display()))?;
        }
        let file = create_private(&self.path)?;
        self.file = BufWriter::new(file);
        self.file_bytes = 0;
        self.header.sequence += 1;
        self.stats.files += 1;
        self.start_file(facts)
    }

    /// Frames what is pending and syncs the file to disk.
    pub fn finish(mut self) -> Result<WriterStats> {
        self.flush_block()?;
        self.file
            .get_ref()
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(self.stats)
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
}
