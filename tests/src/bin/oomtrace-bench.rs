//! The benchmarks and their load generators, out of the shipped binary: `./x bench` runs
//! `oomtrace-bench bench`, which measures the `oomtrace` built next to it (or $OOMTRACE_BIN)
//! and runs this binary's own `storm`, `threads` and `churn` as the load; `./x soak` runs
//! `churn` too.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tests::{bench, load};

#[derive(Parser)]
#[command(name = "oomtrace-bench")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Measure oomtrace's costs and write BENCHMARKS.md.
    Bench {
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        pairs: usize,
        #[arg(long, default_value_t = 256)]
        storm_mib: usize,
        #[arg(long, default_value_t = 1_000_000)]
        churn: usize,
    },
    /// A page-fault storm timing itself.
    Storm {
        #[arg(long)]
        cgroup: String,
        #[arg(long, default_value_t = 256)]
        mib: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Many idle threads in one memcg.
    Threads {
        #[arg(long)]
        cgroup: String,
        #[arg(long)]
        threads: usize,
        #[arg(long, default_value_t = 600)]
        hold: u64,
    },
    /// Thread churn in one memcg.
    Churn {
        #[arg(long)]
        cgroup: String,
        #[arg(long)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        parallel: usize,
    },
}

fn main() -> Result<()> {
    env_logger::init();
    match Cli::parse().task {
        Task::Bench {
            out,
            pairs,
            storm_mib,
            churn,
        } => bench::run(&bench::Options {
            out,
            pairs: pairs.max(1),
            storm_mib: storm_mib.max(1),
            churn,
        }),
        Task::Storm {
            cgroup,
            mib,
            rounds,
        } => load::storm(&cgroup, mib.max(1), rounds.max(1)),
        Task::Threads {
            cgroup,
            threads,
            hold,
        } => load::idle_threads(&cgroup, threads, hold),
        Task::Churn {
            cgroup,
            threads,
            parallel,
        } => load::churn(&cgroup, threads, parallel.max(1)),
    }
}
