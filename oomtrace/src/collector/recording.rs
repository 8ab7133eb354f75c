//! The collector's capture: every model input goes to the file as it is fed. When writing fails
//! (a full disk, a read-only remount), tracing goes on and the recording stops with one log
//! line; `record` then ends with the error, while the agent tries again every few seconds and
//! resumes in a new file (one more log line), counting what it could not record meanwhile.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::RecordTo;
use crate::{
    capture::{self, Header, WriterStats},
    model::input::ModelInput,
};

/// How often a stopped recording that may resume tries again.
const RESUME_EVERY: Duration = Duration::from_secs(10);

struct Stopped {
    why: anyhow::Error,
    last_try: Instant,
}

pub(super) struct Recording {
    to: RecordTo,
    /// The next file's header, kept while stopped.
    header: Header,
    writer: Option<capture::Writer>,
    stopped: Option<Stopped>,
    resume: bool,
    /// Totals of the writers before the current one.
    done: WriterStats,
    /// Inputs fed while stopped.
    pub unrecorded: u64,
}

impl Recording {
    /// A recording that cannot start is an error (a read-only or foreign DIR is a setting to
    /// fix), except for a full disk when it may resume: then it starts stopped.
    pub fn start(to: &RecordTo, header: Header) -> Result<Self> {
        let mut r = Self {
            to: to.clone(),
            header: header.clone(),
            writer: None,
            stopped: None,
            resume: to.resume,
            done: WriterStats::default(),
            unrecorded: 0,
        };
        match capture::Writer::create(&to.path, header, to.max_size, to.keep) {
            Ok(w) => r.writer = Some(w),
            Err(e) if to.resume && is_no_space(&e) => r.stop(e),
            Err(e) => return Err(e),
        }
        Ok(r)
    }

    pub fn push(&mut self, input: &ModelInput) {
        match self.writer.as_mut() {
            Some(w) => {
                if let Err(e) = w.push(input) {
                    self.stop(e);
                }
            }
            None => self.unrecorded += 1,
        }
    }

    /// At every tick: frame what is pending, rotate if due; or, stopped, try to resume.
    pub fn tick(&mut self, facts: impl FnOnce() -> Vec<ModelInput>) {
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.tick(facts) {
                self.stop(e);
            }
            return;
        }
        let Some(stopped) = self.stopped.as_mut() else {
            return;
        };
        if !self.resume || stopped.last_try.elapsed() < RESUME_EVERY {
            return;
        }
        stopped.last_try = Instant::now();
        let mut header = self.header.clone();
        header.sequence += 1;
        let to = &self.to;
        if let Ok(w) = capture::Writer::resume(&to.path, header, to.max_size, to.keep, &facts()) {
            log::warn!(
                "recording resumed in {} ({} inputs were not recorded while it was stopped)",
                to.path.display(),
                self.unrecorded
            );
            self.writer = Some(w);
            self.stopped = None;
        }
    }

    fn stop(&mut self, why: anyhow::Error) {
        if let Some(w) = self.writer.take() {
            self.header = w.header().clone();
            self.done = add(self.done, w.stats);
        }
        if self.resume {
            log::error!(
                "recording stopped: {why:#}; tracing and metrics go on, retrying every {} s",
                RESUME_EVERY.as_secs()
            );
        } else {
            log::error!("capture stopped: {why:#}");
        }
        self.stopped = Some(Stopped {
            why,
            last_try: Instant::now(),
        });
    }

    /// Why the recording is stopped, if it is.
    pub fn error(&self) -> Option<String> {
        self.stopped.as_ref().map(|s| format!("{:#}", s.why))
    }

    pub fn writer(&self) -> Option<&capture::Writer> {
        self.writer.as_ref()
    }

    /// Closes the file. A recording that stopped and may not resume is an error: its file is
    /// incomplete.
    pub fn finish(mut self) -> Result<WriterStats> {
        if let Some(w) = self.writer.take() {
            match w.finish() {
                Ok(stats) => self.done = add(self.done, stats),
                Err(e) if self.resume => log::error!("recording: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        match self.stopped {
            Some(s) if !self.resume => Err(s.why.context("the capture file is incomplete")),
            _ => Ok(self.done),
        }
    }
}

/// A full disk or an exhausted quota: conditions of the node that pass.
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|n| n == libc::ENOSPC || n == libc::EDQUOT)
    })
}

fn add(a: WriterStats, b: WriterStats) -> WriterStats {
    WriterStats {
        inputs: a.inputs + b.inputs,
        bytes: a.bytes + b.bytes,
        frames: a.frames + b.frames,
        files: a.files + b.files,
    }
}
