use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use oomtrace::{
    collector::{self, Config, Target},
    demo, doctor, output, workload,
};

#[derive(Parser)]
#[command(
    name = "oomtrace",
    version,
    about = "Which thread charges memory to which memory cgroup, and who the OOM killer hit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream charges, reclaim and OOM kills live, one line per event.
    Tail {
        /// Watch this memory cgroup and everything below it (as the kernel prints it, or a full path).
        #[arg(long, conflicts_with = "pid")]
        cgroup: Option<String>,
        /// Watch the memory cgroup of this process and show only its threads.
        #[arg(long)]
        pid: Option<u32>,
        /// JSON Lines instead of text.
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Bytes a thread charges before a record is sent (smaller: more lines, more cost).
        #[arg(long, default_value_t = 256 * 1024)]
        flush_bytes: i64,
    },
    /// Make a VM-pod-shaped memory cgroup, run a qemu-named workload and a memhold sidecar in it,
    /// and trace them until the memcg OOM killer strikes.
    Demo {
        #[arg(long)]
        json: bool,
    },
    /// What this kernel offers and which programs oomtrace will use.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// (internal) The workload the demo and the tests run.
    #[command(hide = true)]
    Workload {
        #[arg(long)]
        process: String,
        #[arg(long)]
        cgroup: Option<String>,
        /// NAME=MIB@RATE; MIB 0 = until killed.
        #[arg(long = "thread")]
        threads: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        hold: u64,
    },
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Tail {
            cgroup,
            pid,
            json,
            duration,
            flush_bytes,
        } => {
            let target = match (cgroup, pid) {
                (Some(c), _) => Target::Cgroup(c),
                (None, Some(p)) => Target::Pid(p),
                (None, None) => Target::All,
            };
            if flush_bytes <= 0 {
                anyhow::bail!("--flush-bytes must be > 0");
            }
            let duration = match duration {
                Some(d) if !(d > 0.0 && d.is_finite()) => {
                    anyhow::bail!("--duration must be a positive number of seconds")
                }
                Some(d) => Some(Duration::from_secs_f64(d)),
                None => None,
            };
            let cfg = Config {
                target,
                json,
                duration,
                flush_bytes,
                ..Config::default()
            };
            let rt = runtime()?;
            let summary = rt.block_on(collector::run(cfg, &mut out, |started| {
                if json {
                    // Tells a reader (and the tests) that tracing is live, and through which hooks.
                    let start = serde_json::json!({ "type": "start", "hooks": started.choices });
                    println!("{start}");
                } else {
                    let used: Vec<&str> = started
                        .choices
                        .iter()
                        .filter(|c| c.tier != "off")
                        .map(|c| c.tracepoint)
                        .collect();
                    eprintln!("oomtrace: tracing via {}; Ctrl-C to stop", used.join(", "));
                }
            }))?;
            output::write_summary(&mut out, json, &summary)?;
        }
        Command::Demo { json } => {
            let rt = runtime()?;
            let summary = rt.block_on(demo::run(json, &mut out))?;
            output::write_summary(&mut out, json, &summary)?;
        }
        Command::Doctor { json } => doctor::print(&mut out, &doctor::gather(), json)?,
        Command::Workload {
            process,
            cgroup,
            threads,
            hold,
        } => {
            let touchers = threads
                .iter()
                .map(|t| workload::parse_toucher(t))
                .collect::<Result<Vec<_>>>()?;
            drop(out);
            workload::run(&process, cgroup.as_deref(), &touchers, hold)?;
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("oomtrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
