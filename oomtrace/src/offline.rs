//! The commands that read captures, without BPF or root: `report`, `export`, `tail --from`.
//! Each is a replay (replay.rs) with a different view.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{
    model::{Change, input::ModelInput},
    output, perfetto,
    printer::Printer,
    render::By,
    replay::{self, Flow},
};

fn ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

fn header_lines(out: &mut dyn Write, paths: &[PathBuf], r: &replay::Replayed) -> Result<()> {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match &r.header {
        Some(h) => {
            let clock = replay::clock(Some(h));
            writeln!(
                out,
                "capture {}: host {}, kernel {}, started at unix time {:.0}, watching {}, {} records over {:.1} s",
                names.join(", "),
                h.host,
                h.kernel,
                clock.unix_seconds(h.start_mono_ns),
                h.target,
                r.inputs,
                clock.since_start(r.last_ts)
            )?;
            let hooks: Vec<String> = h
                .hooks
                .iter()
                .map(|k| format!("{} {}", k.hook, k.tier))
                .collect();
            writeln!(out, "  hooks: {}", hooks.join(", "))?;
        }
        None => writeln!(
            out,
            "capture {}: {} records (no header)",
            names.join(", "),
            r.inputs
        )?,
    }
    for w in &r.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    Ok(())
}

pub struct ReportOptions {
    pub files: Vec<PathBuf>,
    pub json: bool,
    /// Seconds after the capture's start to stop and show the state.
    pub at: Option<f64>,
    /// With `at`: also list the changes of this many seconds before it.
    pub window: Option<f64>,
    /// Also show the state every this many seconds of capture time.
    pub every: Option<f64>,
    pub by: By,
}

pub fn report(opts: &ReportOptions, out: &mut dyn Write) -> Result<()> {
    let first = opts
        .files
        .first()
        .context("give at least one capture file")?;
    let (header, _) = replay::header_of(first)?;
    let clock = replay::clock(header.as_ref());
    let start = header.as_ref().map_or(0, |h| h.start_mono_ns);
    let stop_at = opts.at.map(|a| start + ns(a));
    let window_from = match (stop_at, opts.window) {
        (Some(t), Some(w)) => Some(t.saturating_sub(ns(w))),
        _ => None,
    };
    let mut printer = Printer::new(opts.json, window_from.is_some(), None, false, clock);
    let mut next_snapshot = opts.every.map(|e| start + ns(e));
    let mut last_ts = 0u64;
    let mut body: Vec<u8> = Vec::new();
    let r = replay::replay(
        &opts.files,
        window_from.is_some(),
        |model, input, change| {
            if let Some(ts) = input.ts_ns() {
                last_ts = last_ts.max(ts);
                if stop_at.is_some_and(|t| ts > t) {
                    return Ok(Flow::Stop);
                }
            }
            if let Some(c) = change {
                let in_window = window_from.is_some_and(|w| last_ts >= w);
                if matches!(c, Change::Oom(_)) || in_window {
                    printer.show(&mut body, model, c)?;
                }
            }
            if let (Some(due), ModelInput::Tick(t)) = (next_snapshot, input)
                && *t >= due
            {
                printer.snapshot(&mut body, model, *t, opts.by)?;
                next_snapshot = opts.every.map(|e| *t + ns(e));
            }
            Ok(Flow::Continue)
        },
    )?;
    if opts.json {
        let head = serde_json::json!({
            "type": "capture",
            "files": opts.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "header": r.header,
            "records": r.inputs,
            "warnings": r.warnings,
        });
        writeln!(out, "{head}")?;
    } else {
        header_lines(out, &opts.files, &r)?;
    }
    out.write_all(&body)?;
    let now = stop_at.unwrap_or(r.last_ts).min(r.last_ts.max(start));
    if !opts.json {
        match opts.at {
            Some(a) => writeln!(out, "state at {a:.1} s:")?,
            None => writeln!(out, "state at the end:")?,
        }
    }
    printer.snapshot(out, &r.model, now, opts.by)?;
    output::write_summary(out, opts.json, &r.model.summary())?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Perfetto,
}

/// CSV columns: the union of `tail --json` fields, by the same names.
const CSV_COLUMNS: &[&str] = &[
    "type",
    "time",
    "ts_ns",
    "memcg",
    "memcg_id",
    "pid",
    "tid",
    "comm",
    "process",
    "class",
    "delta",
    "total",
    "anon",
    "file",
    "kernel",
    "guest",
    "usage",
    "limit",
    "invoker_pid",
    "invoker_tid",
    "invoker_comm",
    "invoker_class",
    "victim_pid",
    "victim_comm",
    "victim_class",
    "victim_anon_rss_kb",
    "victim_charged_anon",
    "duration_ns",
    "nr_reclaimed",
    "group_dead",
];

pub fn export(file: &Path, format: ExportFormat, out: &mut dyn Write) -> Result<()> {
    let (header, _) = replay::header_of(file)?;
    let clock = replay::clock(header.as_ref());
    let files = [file.to_path_buf()];
    match format {
        ExportFormat::Jsonl => {
            let mut printer = Printer::new(true, true, None, false, clock);
            let r = replay::replay(&files, true, |model, _, change| {
                if let Some(c) = change {
                    printer.show(out, model, c)?;
                }
                Ok(Flow::Continue)
            })?;
            output::write_summary(out, true, &r.model.summary())?;
            warn_all(&r.warnings);
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(CSV_COLUMNS)?;
            let r = replay::replay(&files, true, |_, _, change| {
                if let Some(c) = change {
                    let line = output::json_line(&clock, c);
                    let v: serde_json::Value = serde_json::from_str(&line)?;
                    let row: Vec<String> = CSV_COLUMNS
                        .iter()
                        .map(|k| match &v[*k] {
                            serde_json::Value::Null => String::new(),
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    w.write_record(&row)?;
                }
                Ok(Flow::Continue)
            })?;
            w.flush()?;
            warn_all(&r.warnings);
        }
        ExportFormat::Perfetto => {
            let mut b = perfetto::Builder::new();
            let r = replay::replay(&files, false, |model, input, change| {
                if let Some(c) = change {
                    b.change(c);
                }
                if let ModelInput::Tick(t) = input {
                    b.counters(*t, &model.snapshot(*t));
                }
                Ok(Flow::Continue)
            })?;
            out.write_all(&b.finish())?;
            warn_all(&r.warnings);
        }
    }
    Ok(())
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("oomtrace: warning: {}", crate::visible::Visible(w));
    }
}

/// `tail --from FILE`: the capture's changes as `tail` printed them, paced by their stamps.
pub fn tail_from(
    file: &Path,
    json: bool,
    speed: Option<f64>,
    by: Option<By>,
    every: Duration,
    out: &mut dyn Write,
) -> Result<()> {
    if speed.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        bail!("--speed must be a positive factor");
    }
    let (header, _) = replay::header_of(file)?;
    let clock = replay::clock(header.as_ref());
    let mut printer = Printer::new(json, true, None, false, clock);
    let mut prev: Option<u64> = None;
    let mut next_snapshot: Option<u64> = None;
    let r = replay::replay(&[file.to_path_buf()], true, |model, input, change| {
        if let (Some(speed), Some(ts)) = (speed, input.ts_ns()) {
            if let Some(p) = prev
                && ts > p
            {
                let wait = Duration::from_nanos(((ts - p) as f64 / speed) as u64);
                std::thread::sleep(wait.min(Duration::from_secs(10)));
            }
            prev = Some(prev.map_or(ts, |p| p.max(ts)));
        }
        if let Some(c) = change {
            printer.show(out, model, c)?;
            out.flush().ok();
        }
        if let (Some(by), ModelInput::Tick(t)) = (by, input) {
            let due = *next_snapshot.get_or_insert(*t + every.as_nanos() as u64);
            if *t >= due {
                printer.snapshot(out, model, *t, by)?;
                next_snapshot = Some(*t + every.as_nanos() as u64);
            }
        }
        Ok(Flow::Continue)
    })?;
    output::write_summary(out, json, &r.model.summary())?;
    warn_all(&r.warnings);
    if !json {
        eprintln!("oomtrace: replayed {} records", r.inputs);
    }
    Ok(())
}
