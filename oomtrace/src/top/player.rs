//! A capture played into the model at a position that moves (play, pause, step, seek). Going
//! forward feeds the next inputs; going back replays from the start (the model only moves
//! forward). The position follows `report --at`'s rule: every input up to the first one past
//! it is fed, and the views are taken at the position.
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    capture::{Header, Reader},
    model::Model,
    replay,
};

pub struct Player {
    path: PathBuf,
    reader: Reader,
    pub model: Model,
    pub header: Option<Header>,
    pub start_ns: u64,
    /// The newest stamp in the capture.
    pub end_ns: u64,
    /// When each kill of the capture happened, oldest first.
    pub kills_ns: Vec<u64>,
    position_ns: u64,
    /// The newest stamp fed.
    last_ts: u64,
    done: bool,
    pub warnings: Vec<String>,
}

impl Player {
    /// Reads the capture once to learn its end and its kills, then stands at its start.
    pub fn open(path: &Path) -> Result<Self> {
        let whole = replay::replay(&[path.to_path_buf()], false, |_, _, _| {
            Ok(replay::Flow::Continue)
        })?;
        let start_ns = whole.header.as_ref().map_or(0, |h| h.start_mono_ns);
        let kills_ns = whole.model.oom_rows().iter().map(|o| o.ts_ns).collect();
        let mut p = Self::at_start(path, start_ns)?;
        p.end_ns = whole.last_ts.max(start_ns);
        p.kills_ns = kills_ns;
        p.warnings = whole.warnings;
        Ok(p)
    }

    fn at_start(path: &Path, start_ns: u64) -> Result<Self> {
        let reader = Reader::open(path)?;
        let mut model = Model::new();
        model.set_quiet_charges(true);
        Ok(Self {
            path: path.to_path_buf(),
            header: reader.header.clone(),
            reader,
            model,
            start_ns,
            end_ns: start_ns,
            kills_ns: Vec::new(),
            position_ns: start_ns,
            last_ts: 0,
            done: false,
            warnings: Vec::new(),
        })
    }

    pub fn position_ns(&self) -> u64 {
        self.position_ns
    }

    /// When the views are taken: the position, or the capture's end once past it (as
    /// `report --at` does).
    pub fn now_ns(&self) -> u64 {
        self.position_ns.min(self.last_ts.max(self.start_ns))
    }

    pub fn at_end(&self) -> bool {
        self.done || self.position_ns >= self.end_ns
    }

    /// Moves to `target_ns` (clamped to the capture).
    pub fn seek(&mut self, target_ns: u64) -> Result<()> {
        let target = target_ns.clamp(self.start_ns, self.end_ns.max(self.start_ns));
        if target < self.position_ns {
            let keep = (self.end_ns, std::mem::take(&mut self.kills_ns));
            let warnings = std::mem::take(&mut self.warnings);
            *self = Self::at_start(&self.path, self.start_ns)?;
            (self.end_ns, self.kills_ns) = keep;
            self.warnings = warnings;
        }
        while !self.done && self.last_ts <= target {
            match self.reader.next_input()? {
                Some(input) => {
                    if let Some(ts) = input.ts_ns() {
                        self.last_ts = self.last_ts.max(ts);
                    }
                    self.model.feed(&input);
                }
                None => self.done = true,
            }
        }
        self.position_ns = target;
        Ok(())
    }
}
