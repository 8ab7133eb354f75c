//! What one `top` screen shows, built from the model (live at a tick, or a replay at its
//! position) by the same views `tail --by` and `report` print. Every number and every piece of
//! text is made here, once per frame, so drawing only lays out what is ready.
use std::sync::Arc;

use crate::{
    model::{Model, OomRow, views},
    output::{Clock, bytes},
    render,
    visible::visible,
};

/// A kill's row flashes this long after it.
const FLASH_NS: u64 = 5_000_000_000;

pub struct PodRow {
    pub memcg_id: u64,
    /// VM, else namespace/pod, else the memcg path (escaped).
    pub name: String,
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub guest: i64,
    pub headroom: Option<i64>,
    pub rate_10s: Option<f64>,
    /// Text of the cells: usage, limit, headroom, 10 s rate, 60 s rate, time to the limit.
    pub cells: [String; 6],
    /// Usage over the last minute as block characters.
    pub spark: String,
    pub kills: usize,
    /// Killed in the last few seconds.
    pub flash: bool,
}

pub struct KillEntry {
    pub ts_ns: u64,
    pub memcg_id: u64,
    /// One line for the kills pane (escaped).
    pub summary: String,
    /// The post-mortem as `tail` prints it, by line (escaped).
    pub text: Vec<String>,
}

#[derive(Default)]
pub struct Frame {
    /// Kernel, hooks, events/s, self-cost.
    pub header: String,
    /// Where the frame comes from: "live", or the capture and the position in it.
    pub source: String,
    pub drops: u64,
    pub pods: Vec<PodRow>,
    /// The selected pod's detail, as `tail --by class` and `--by thread` print it (escaped).
    pub detail: Option<(u64, Vec<String>)>,
    /// Oldest first; shared with the builder (rendered once per kill).
    pub kills: Vec<Arc<KillEntry>>,
}

/// Builds frames; keeps what carries from one to the next (kills already rendered, the event
/// count of the last frame).
pub struct FrameBuilder {
    clock: Clock,
    kernel: String,
    hooks: String,
    kills: Vec<Arc<KillEntry>>,
    last_events: Option<(u64, u64)>,
    last_cpu: Option<(u64, f64)>,
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(
        || "-".into(),
        |r| {
            let v = r as i64;
            if v > 0 {
                format!("+{}/s", bytes(v))
            } else {
                format!("{}/s", bytes(v))
            }
        },
    )
}

fn opt(v: Option<u64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| bytes(v as i64))
}

/// Block characters for a series, scaled between its minimum and maximum.
fn spark(samples: &[u64], width: usize) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &samples[samples.len().saturating_sub(width)..];
    let (lo, hi) = tail
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    tail.iter()
        .map(|v| {
            let i = if hi > lo {
                ((v - lo) * 7 / (hi - lo)) as usize
            } else {
                0
            };
            BLOCKS[i.min(7)]
        })
        .collect()
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

impl FrameBuilder {
    /// `hooks`: (hook, tier) of each hook (from the collector, or a capture's header).
    pub fn new<'a>(
        clock: Clock,
        kernel: &str,
        hooks: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let used: Vec<String> = hooks
            .into_iter()
            .filter(|(_, tier)| *tier != "off")
            .map(|(hook, tier)| format!("{hook} {tier}"))
            .collect();
        Self {
            clock,
            kernel: visible(kernel).into_owned(),
            hooks: used.join(", "),
            kills: Vec::new(),
            last_events: None,
            last_cpu: None,
        }
    }

    /// The frame at `now_ns`; `selected`: the pod whose detail is shown; `source`: where it
    /// comes from; `self_cost`: measure this process's CPU and memory (live only).
    pub fn build(
        &mut self,
        model: &Model,
        now_ns: u64,
        selected: Option<u64>,
        source: String,
        self_cost: bool,
    ) -> Frame {
        let oom_rows = model.oom_rows();
        if oom_rows.len() < self.kills.len() {
            // A replay went back in time.
            self.kills.clear();
        }
        for row in &oom_rows[self.kills.len()..] {
            self.kills.push(Arc::new(self.kill_entry(row)));
        }
        let memcgs = model.memcg_views(now_ns);
        let pods = views::pod_rows(&memcgs)
            .into_iter()
            .map(|m| self.pod_row(model, m))
            .collect();
        let detail = selected.and_then(|id| {
            let snap = model.snapshot_of(id, now_ns)?;
            let mut text = Vec::new();
            render::snapshot(
                &mut text,
                &snap,
                render::By::Class,
                self.clock.since_start(now_ns),
            )
            .ok()?;
            render::snapshot_tables(&mut text, &snap).ok()?;
            Some((id, lines_of(&text)))
        });
        let c = &model.counters;
        let drops = c.ring_drops + c.rare_drops + c.map_full + c.decode_errors;
        let events_per_s = match self.last_events {
            Some((t, n)) if now_ns > t => {
                (c.events.saturating_sub(n)) as f64 / ((now_ns - t) as f64 / 1e9)
            }
            _ => 0.0,
        };
        self.last_events = Some((now_ns, c.events));
        // Live: how long it has run (a replay's source says its position).
        let source = if self_cost {
            format!("{source} · {:.1} s", self.clock.since_start(now_ns))
        } else {
            source
        };
        // What moves first (the line is cut at the terminal's edge), the hooks last.
        let mut header = format!("{events_per_s:.0} events/s · drops {drops}");
        if self_cost {
            let (cpu_s, rss) = crate::procfs::self_cost();
            let wall = crate::output::monotonic_ns();
            let pct = match self.last_cpu {
                Some((t, cpu)) if wall > t => (cpu_s - cpu) / ((wall - t) as f64 / 1e9) * 100.0,
                _ => 0.0,
            };
            self.last_cpu = Some((wall, cpu_s));
            header.push_str(&format!(" · oomtrace {pct:.1}% CPU, {}", bytes(rss)));
        }
        header.push_str(&format!(" · kernel {} · {}", self.kernel, self.hooks));
        Frame {
            header,
            source,
            drops,
            pods,
            detail,
            kills: self.kills.clone(),
        }
        .flashing(now_ns)
    }

    fn pod_row(&self, model: &Model, m: &views::MemcgView) -> PodRow {
        let name =
            m.vm.as_ref()
                .map(|vm| format!("VM {vm}"))
                .or_else(|| m.pod_name.clone())
                .unwrap_or_else(|| m.memcg.clone());
        let kills = self
            .kills
            .iter()
            .filter(|k| k.memcg_id == m.memcg_id)
            .count();
        PodRow {
            memcg_id: m.memcg_id,
            name: visible(&name).into_owned(),
            usage: m.usage,
            limit: m.limit,
            guest: m.guest,
            headroom: m.headroom,
            rate_10s: m.rate_10s,
            cells: [
                opt(m.usage, "-"),
                opt(m.limit, "none"),
                m.headroom.map_or_else(|| "-".into(), bytes),
                rate(m.rate_10s),
                rate(m.rate_60s),
                m.time_to_limit_s
                    .map_or_else(|| "-".into(), |s| format!("{s:.0} s")),
            ],
            spark: spark(&model.usage_samples(m.memcg_id), 20),
            kills,
            flash: false,
        }
    }

    fn kill_entry(&self, row: &OomRow) -> KillEntry {
        let mut text = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = render::kill(&mut text, &self.clock, row);
        let who = row
            .post_mortem
            .as_ref()
            .and_then(|p| p.memcg.vm.clone().or_else(|| p.memcg.pod_name.clone()))
            .unwrap_or_else(|| row.memcg.clone());
        KillEntry {
            ts_ns: row.ts_ns,
            memcg_id: row
                .post_mortem
                .as_ref()
                .map_or(row.memcg_id, |p| p.memcg.memcg_id),
            summary: format!(
                "{:>8.1} s  {}: {} ({}){} killed; invoked by {} ({}, {})",
                self.clock.since_start(row.ts_ns),
                visible(&who),
                visible(&row.victim_comm),
                row.victim_pid,
                match row.group_victims.len() {
                    0 => String::new(),
                    n => format!(" and {n} more of its memory.oom.group"),
                },
                visible(&row.invoker_comm),
                row.invoker_pid,
                row.invoker_class.name()
            ),
            text: lines_of(&text),
        }
    }
}

impl Frame {
    /// Rows of pods killed in the last few seconds flash.
    fn flashing(mut self, now_ns: u64) -> Self {
        for p in &mut self.pods {
            p.flash = self.kills.iter().any(|k| {
                k.memcg_id == p.memcg_id && now_ns >= k.ts_ns && now_ns - k.ts_ns < FLASH_NS
            });
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_scales_between_the_series_extremes() {
        assert_eq!(spark(&[1, 1, 1], 10), "▁▁▁");
        assert_eq!(spark(&[0, 7, 14], 10), "▁▄█");
        assert_eq!(spark(&[5, 0, 7, 14], 3), "▁▄█");
        assert_eq!(spark(&[], 3), "");
    }
}
