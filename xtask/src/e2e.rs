//! `cargo xtask e2e`: the whole system against real services, as a user
//! would run it.
//!
//! xtask owns the processes: it starts the services (moto, kinesalite,
//! tansu — or uses `AWS_ENDPOINT_URL` / `KAFKA_BROKERS` from the
//! environment), builds `murmur-worker` and runs the scenario driver
//! `xtask/e2e/scenarios.py` with the moto venv's Python (boto3, pyarrow,
//! confluent-kafka). The driver writes the history, produces the live events,
//! starts and kills workers, and compares stored values with a ground truth
//! it computes from the events it generated. The driver and every worker it
//! started run in one process group of their own, which xtask kills when the
//! driver ends, however it ends; the services stop when the [`ServiceSet`]
//! drops.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use crate::{
    cargo, say,
    services::{BackgroundInstall, ServiceSet, TANSU},
    signals, workspace_root,
};

/// Arguments of `cargo xtask e2e` (also accepted by `cargo xtask test`).
#[derive(Debug, Default, clap::Args)]
pub struct E2eArgs {
    /// Seed of the generated data and of the kill times (printed by every run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Scenarios to run (default: all): parquet-kafka, jsonl-kinesis,
    /// dynamodb-kinesis, crash.
    #[arg(long = "scenario", value_delimiter = ',')]
    pub scenarios: Vec<String>,
}

/// Builds the worker, adds tansu to `services` (once `tansu_install`, if
/// any, is done) and runs the scenarios against them.
pub fn run(
    services: &mut ServiceSet,
    args: &E2eArgs,
    tansu_install: Option<BackgroundInstall>,
) -> Result<ExitStatus> {
    // The same build `cargo test --workspace` makes (so, right after it, a
    // no-op): building the worker alone would resolve other features for
    // the shared dependencies and compile them again.
    say!("e2e: building the worker (cargo test --workspace --no-run)");
    let status = cargo()
        .args(["test", "--workspace", "--no-run", "--quiet"])
        .status()
        .context("cannot run cargo")?;
    signals::check()?;
    if !status.success() {
        bail!("building the worker failed ({status})");
    }
    if let Some(install) = tansu_install {
        install.wait()?;
    }
    if !services.has(&TANSU) {
        services.add(TANSU)?;
    }
    let target = target_dir()?;
    let worker = target.join("debug").join("murmur-worker");
    if !worker.is_file() {
        bail!("no worker binary at {}", worker.display());
    }
    let python = services
        .python()
        .context("the e2e driver needs the moto venv's Python")?;
    let work = target.join("e2e");

    let mut cmd = Command::new(python);
    cmd.arg(
        workspace_root()
            .join("xtask")
            .join("e2e")
            .join("scenarios.py"),
    )
    .arg("--work")
    .arg(&work);
    if let Some(seed) = args.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    cmd.args(args.scenarios.iter().map(OsString::from));
    services.apply_env(&mut cmd);
    cmd.env("MURMUR_WORKER", &worker)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        // Its own group: xtask stops it (and the workers it started) by PID.
        .process_group(0);
    say!("e2e: running the scenarios with {}", services.summary());
    let mut child = cmd.spawn().context("cannot start the e2e driver")?;
    let status = signals::wait_forwarding(&mut child);
    if let Ok(pgid) = i32::try_from(child.id()) {
        // Whatever it left behind (a worker it did not reap).
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    status.context("waiting for the e2e driver")
}

/// The workspace's target directory, as cargo reports it.
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    json_string_field(&String::from_utf8_lossy(&out.stdout), "target_directory")
        .map(PathBuf::from)
        .context("cargo metadata names no target_directory")
}

/// The value of the first `"field":"..."` in a JSON text (xtask carries no
/// JSON parser; cargo writes this field once, at the top level).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                c => value.push(c),
            },
            c => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directory_is_read_from_metadata() {
        let json = r#"{"packages":[],"target_directory":"/w/my \"t\"\\x","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some(r#"/w/my "t"\x"#)
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }
}
