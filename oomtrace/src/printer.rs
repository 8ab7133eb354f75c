//! Which changes are shown and how: one text or JSON line each, the post-mortem under an OOM
//! line, the periodic snapshot. Shared by the live collector and every replay of a capture.
use std::{collections::HashMap, io::Write};

use anyhow::{Context as _, Result};

use crate::{
    model::{Change, Model},
    output::{self, Clock},
    render::{self, By},
};

/// A thread at the limit reclaims on every charge: one text line per second per thread says as
/// much (JSON keeps every pass).
const RECLAIM_LINE_NS: u64 = 1_000_000_000;

pub struct Printer {
    pub json: bool,
    /// Charge lines at all (off: only OOM, reclaim, exits and summaries).
    pub charges: bool,
    /// Only this process's rows.
    pub pid_filter: Option<u32>,
    /// Watching a subtree: OOM kills elsewhere are not shown.
    pub scoped: bool,
    pub clock: Clock,
    reclaim_shown: HashMap<u32, u64>,
}

impl Printer {
    pub fn new(
        json: bool,
        charges: bool,
        pid_filter: Option<u32>,
        scoped: bool,
        clock: Clock,
    ) -> Self {
        Self {
            json,
            charges,
            pid_filter,
            scoped,
            clock,
            reclaim_shown: HashMap::new(),
        }
    }

    pub fn show(&mut self, out: &mut dyn Write, model: &Model, change: &Change) -> Result<()> {
        let shown = match change {
            Change::Charge(r) => self.charges && self.pid_filter.is_none_or(|p| p == r.pid),
            Change::Reclaim(r) => {
                let last = self.reclaim_shown.get(&r.tid).copied();
                let quiet =
                    !self.json && last.is_some_and(|t| r.ts_ns.saturating_sub(t) < RECLAIM_LINE_NS);
                if !quiet {
                    self.reclaim_shown.insert(r.tid, r.ts_ns);
                }
                !quiet && self.pid_filter.is_none_or(|p| p == r.pid)
            }
            Change::Exit(e) => self.pid_filter.is_none_or(|p| p == e.pid),
            Change::Exec(e) => self.pid_filter.is_none_or(|p| p == e.pid),
            Change::KillSignal(k) => self.pid_filter.is_none_or(|p| p == k.pid),
            Change::OomAttempt(o) => !self.scoped || model.knows_memcg(o.memcg_id),
            // With a target, only kills that involve it (another memcg's OOM is not ours).
            Change::Oom(o) => !self.scoped || o.memcg_id != 0 || model.knows_process(o.victim_pid),
            // Shown where its OOM was.
            Change::OomGroupVictim(_) => true,
        };
        if !shown {
            return Ok(());
        }
        let line = if self.json {
            output::json_line(&self.clock, change)
        } else {
            output::text_line(&self.clock, change)
        };
        writeln!(out, "{line}").context("cannot write output")?;
        if let (Change::Oom(o), false) = (change, self.json)
            && let Some(pm) = &o.post_mortem
        {
            render::post_mortem(out, pm).context("cannot write output")?;
        }
        Ok(())
    }

    /// A thread is gone for good: forget when its reclaim line was shown.
    pub fn forget(&mut self, tid: u32) {
        self.reclaim_shown.remove(&tid);
    }

    pub fn shrink(&mut self) {
        if self.reclaim_shown.len() * 4 < self.reclaim_shown.capacity() {
            self.reclaim_shown.shrink_to_fit();
        }
    }

    pub fn snapshot(&self, out: &mut dyn Write, model: &Model, now_ns: u64, by: By) -> Result<()> {
        let snap = model.snapshot(now_ns);
        if self.json {
            let line = serde_json::to_string(&snap).context("cannot encode snapshot")?;
            writeln!(out, "{line}").context("cannot write output")?;
        } else {
            render::snapshot(out, &snap, by, self.clock.since_start(now_ns))
                .context("cannot write output")?;
        }
        Ok(())
    }
}
