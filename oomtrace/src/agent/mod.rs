//! `oomtrace agent`: the always-on form. The same collector, hooks, decode and model as
//! `tail`, with a flight recorder (a rotating capture bounded by --max-disk), every OOM kill
//! kept in its own directory (post-mortem, JSON row, and a capture cut from the recorder that
//! `report` reads alone), one JSON line per kill on stdout, and Prometheus metrics.
mod http;
mod kills;
mod metrics;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    collector::{self, Config, Observer, RecordTo, Target, TickInfo},
    model::{KillSignalRow, Model, OomRow},
    output::{self, Clock},
};

/// Rotated files the flight recorder keeps besides the one it writes.
const FLIGHT_KEEP: usize = 7;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub max_disk: u64,
    pub keep_kills: usize,
    pub before: Duration,
    pub after: Duration,
    pub target: Target,
    pub flush_bytes: i64,
    /// Runtime bundle directories for pod names; empty: the usual places.
    pub runtime_roots: Vec<PathBuf>,
}

/// The flight recorder's files, oldest first (those that exist).
pub fn flight_files(flight: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=FLIGHT_KEEP)
        .rev()
        .map(|n| {
            let mut s = flight.as_os_str().to_owned();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        })
        .filter(|p| p.is_file())
        .collect();
    if flight.is_file() {
        out.push(flight.to_path_buf());
    }
    out
}

struct Agent {
    kills: kills::Kills,
    metrics: metrics::Metrics,
    shared: Arc<http::Shared>,
}

impl Observer for Agent {
    fn kill(&mut self, _model: &Model, row: &OomRow, clock: &Clock) -> Result<()> {
        let line = output::json_line(clock, &crate::model::Change::Oom(row.clone()));
        // What `kubectl logs` and log shippers read: one line per kill.
        println!("{line}");
        self.metrics.count_kill(row);
        if let Err(e) = self.kills.record(clock, row, &line) {
            self.metrics.kill_dir_failed();
            log::error!("cannot keep the kill: {e:#}");
        }
        Ok(())
    }

    fn kill_signal(&mut self, model: &Model, row: &KillSignalRow, clock: &Clock) -> Result<()> {
        let line = output::json_line(clock, &crate::model::Change::KillSignal(row.clone()));
        println!("{line}");
        let pod = row
            .pod_memcg_id
            .and_then(|id| model.memcg_view(id, row.ts_ns));
        self.metrics.count_kill_signal(row, pod.as_ref());
        Ok(())
    }

    fn tick(&mut self, model: &Model, at: &TickInfo) -> Result<()> {
        self.metrics.update(model, at);
        if let Err(e) = self.kills.cut_due(at.now_ns) {
            self.metrics.kill_dir_failed();
            log::error!("cannot cut a kill's capture: {e:#}");
        }
        self.shared.set_live();
        Ok(())
    }
}

fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", path.display());
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot create directory {}", path.display())),
    }
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    private_dir(&cfg.dir)?;
    let kills_dir = cfg.dir.join("kills");
    private_dir(&kills_dir)?;
    let flight = cfg.dir.join("flight.otr");
    let shared = Arc::new(http::Shared::new());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use? try --listen)", cfg.listen))?;
    let metrics = metrics::Metrics::new(&shared);
    tokio::spawn(http::serve(listener, shared.clone()));
    let per_file = (cfg.max_disk / (FLIGHT_KEEP as u64 + 1)).max(64 << 10);
    let collector_cfg = Config {
        target: cfg.target.clone(),
        json: true,
        charges: false,
        flush_bytes: cfg.flush_bytes,
        runtime_roots: if cfg.runtime_roots.is_empty() {
            Config::default().runtime_roots
        } else {
            cfg.runtime_roots.clone()
        },
        record: Some(RecordTo {
            path: flight.clone(),
            max_size: Some(per_file),
            keep: FLIGHT_KEEP,
            resume: true,
        }),
        least_privilege: true,
        ..Config::default()
    };
    let mut agent = Agent {
        kills: kills::Kills::new(kills_dir, flight, cfg.keep_kills, cfg.before, cfg.after),
        metrics,
        shared,
    };
    let summary = collector::run_observed(
        collector_cfg,
        &mut std::io::sink(),
        |started| {
            log::info!(
                "oomtrace agent: tracing, metrics on http://{}/metrics; {}",
                cfg.listen,
                started.privileges_line()
            )
        },
        &mut agent,
    )
    .await;
    // Kills whose window has not closed yet: cut what there is.
    agent.kills.cut_all();
    let summary = summary?;
    log::info!(
        "oomtrace agent: stopped after {} events, {} kills",
        summary.counters.events,
        summary.ooms.len()
    );
    Ok(())
}
