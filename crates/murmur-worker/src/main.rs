//! `murmur-worker`: the reference Murmur worker.
//!
//! One binary that backfills a pipeline from history (Spark-written Parquet
//! or JSON Lines on S3 or a local directory, or a DynamoDB table scan), hands
//! off through a token and goes on live (Kafka or Kinesis), into the embedded
//! store (the default, no cloud) or DynamoDB — exactly once, through crashes
//! and restarts. `murmur-worker demo` runs all of it on one machine with no
//! service to install; `get`, `window` and `range` read what was stored.
//!
//! The pipeline is the reference one over the canonical
//! [`CountEvent`](murmur_core::CountEvent) (`entity_id`, `count`,
//! `occurred_at`), chosen with `--aggregate`; programs with their own event
//! types call [`murmur_bootstrap::backfill`] and [`murmur_bootstrap::live`]
//! the same way this binary does (see `src/run.rs`).

mod archive;
mod cli;
mod demo;
mod observe;
mod pipeline;
mod query;
mod run;
mod serve;
mod stores;

use clap::Parser as _;

/// mimalloc: a backfill allocates a small record per row on reader threads
/// and frees it on the lane's; glibc's allocator spends much of a Parquet
/// scan in page faults and cross-thread frees there (`cargo bench -p
/// murmur-source-snapshot --bench snapshot` measures the scan with it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::expand_config(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("murmur-worker: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = cli::Cli::parse_from(args);
    observe::init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("murmur-worker: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("murmur-worker: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Run(args) => {
            let stop = observe::stop_on_signals();
            let summary = run::run(&args, run::Mode::Run, cli.log.progress, stop).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Demo(args) => {
            let stop = observe::stop_on_signals();
            demo::demo(&args, cli.log.progress, stop).await
        }
        cli::Command::Get(args) => query::get(&args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Window(args) => query::window(&args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Range(args) => query::range(&args).await.map(|()| ExitCode::SUCCESS),
        cli::Command::Replay(args) => {
            let stop = observe::stop_on_signals();
            let mode = run::Mode::Replay {
                version: args.version,
                catch_up_lag: args.catch_up_lag,
            };
            let summary = run::run(&args.run, mode, cli.log.progress, stop).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Archive(args) => {
            let stop = observe::stop_on_signals();
            let summary = archive::archive(&args, cli.log.progress, stop).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::ExportDynamodb(args) => {
            let manifest = archive::export(&args).await?;
            println!(
                "{}",
                serde_json::json!({
                    "table": manifest.table,
                    "items": manifest.items,
                    "files": manifest.files.len(),
                    "segments": manifest.segments,
                    "consumed_read_capacity": manifest.consumed_read_capacity,
                    "streams_handoff": manifest.streams_handoff.is_some(),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Serve(args) => {
            let stop = observe::stop_on_signals();
            query::serve(&args, stop).await.map(|()| ExitCode::SUCCESS)
        }
    }
}
