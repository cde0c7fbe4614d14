//! Logs, signals and the progress display.

use crate::cli::{LogArgs, ProgressMode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use murmur_bootstrap::{Progress, ProgressSnapshot};
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Text logs on stderr, or JSON lines with `--json`.
pub fn init_logging(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!(
            "murmur-worker: invalid --log filter {:?} ({e}); using info",
            args.log
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.json {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_target(false).init();
    }
}

/// A token cancelled by the first SIGINT or SIGTERM: the worker flushes and
/// checkpoints its open batches and exits 0. A second signal exits at once
/// with status 130 (the fenced write path keeps even that exact).
pub fn stop_on_signals() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM kill the worker");
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "stop requested: flushing and checkpointing open batches (signal again to abort)"
                );
                token.cancel();
            } else {
                eprintln!("murmur-worker: aborted");
                std::process::exit(130);
            }
        }
    });
    stop
}

/// Shows a run's [`Progress`] until dropped: a bar on a terminal (objects,
/// rows, rows/s, ETA), else an `info` log line every 10 s.
pub struct Display {
    done: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Display {
    /// Starts showing `progress` of the stage `stage` (`backfill`, `live`).
    pub fn start(mode: ProgressMode, stage: &'static str, progress: Arc<Progress>) -> Display {
        let done = CancellationToken::new();
        let bar = match mode {
            ProgressMode::Always => true,
            ProgressMode::Never => false,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        };
        let stop = done.clone();
        let task = tokio::spawn(async move {
            if bar {
                draw(stage, &progress, stop).await;
            } else {
                log_lines(stage, &progress, stop).await;
            }
        });
        Display {
            done,
            task: Some(task),
        }
    }

    /// Stops the display (drawing the final state).
    pub async fn finish(mut self) {
        self.done.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

fn rate(n: u64, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64().max(1e-3)
}

fn line(stage: &str, p: &ProgressSnapshot, start: Instant) -> String {
    let mut s = format!(
        "{stage}: {} records ({:.0}/s), {} batches, {} row writes",
        p.records,
        rate(p.records, start),
        p.batches,
        p.rows
    );
    if p.units_total > 0 {
        s = format!(
            "{s}, objects {}/{} ({:.1} of {:.1} MiB)",
            p.units_done,
            p.units_total,
            p.bytes_done as f64 / 1048576.0,
            p.bytes_total as f64 / 1048576.0
        );
    }
    if p.skipped > 0 {
        s = format!("{s}, {} outside the cut", p.skipped);
    }
    if p.duplicates > 0 {
        s = format!("{s}, {} duplicates", p.duplicates);
    }
    if p.expired > 0 {
        s = format!("{s}, {} past retention", p.expired);
    }
    if p.replayed > 0 {
        s = format!("{s}, {} batches replayed", p.replayed);
    }
    if stage == "live" && p.records > 0 {
        s = format!("{s}, lag {:.1}s", p.lag_ms as f64 / 1000.0);
    }
    s
}

async fn log_lines(stage: &'static str, progress: &Progress, stop: CancellationToken) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => tracing::info!("{}", line(stage, &progress.snapshot(), start)),
        }
    }
}

async fn draw(stage: &'static str, progress: &Progress, stop: CancellationToken) {
    let start = Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {eta}  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let spinner = ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_prefix(stage);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let p = progress.snapshot();
        if p.bytes_total > 0 {
            bar.set_style(style.clone());
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!(
                "objects {}/{}  rows {} ({:.0}/s)",
                p.units_done,
                p.units_total,
                p.records,
                rate(p.records, start)
            ));
        } else {
            bar.set_style(spinner.clone());
            bar.set_message(line(stage, &p, start));
            bar.tick();
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
    }
    bar.finish_and_clear();
}
