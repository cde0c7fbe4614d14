//! Project automation for Murmur, in the [cargo-xtask] style.
//!
//! Run it through the alias in `.cargo/config.toml`:
//!
//! ```text
//! cargo xtask test [--no-lint] [--no-e2e] [--without kinesalite] [-- <extra `cargo test` args>]
//! cargo xtask e2e [--scenario NAME,...] [--seed N]
//! cargo xtask services [--without kinesalite] [--with tansu] [--ignore-stdin]
//! cargo xtask bench [snapshot|aggregate|ddb|kafka|archive ...]
//! cargo xtask deny
//! ```
//!
//! `cargo xtask bench` runs the named benchmarks (every one when none is
//! named) with what each needs: `snapshot` gets `MURMUR_PYTHON` (the moto
//! venv, for its DuckDB baselines), `ddb` a moto server (`AWS_ENDPOINT_URL`).
//! Their own knobs (`MURMUR_BENCH_ROWS`, `MURMUR_BENCH_RUNS`, ...) pass
//! through the environment.
//!
//! `cargo xtask test` is *the* test command of the project (the README and
//! `.ci/run` call it). It lints (`cargo fmt --check`, `cargo clippy -D
//! warnings`), installs and starts the local stand-ins for AWS that the tests
//! talk to, runs `cargo test --workspace` against them, then the end-to-end
//! scenarios of `cargo xtask e2e` (see the [`e2e`] module), and stops the
//! services again.
//!
//! # Services
//!
//! | service | stand-in for | started | environment exported |
//! |---|---|---|---|
//! | `moto` (`moto[server]==5.2.5`, PyPI; its venv also gets `pyarrow`, `duckdb` and `confluent-kafka`) | DynamoDB, S3, Kinesis basics | always, unless `AWS_ENDPOINT_URL` is already set | `AWS_ENDPOINT_URL`, `MURMUR_PYTHON` (the venv's python) |
//! | `kinesalite` (`kinesalite@3.3.3`, npm) | Kinesis with real sequence numbers (the live source's tests need it) | by default; not with `--without kinesalite` or `MURMUR_TEST_KINESALITE=0`, nor when `MURMUR_KINESALITE_ENDPOINT` is already set | `AWS_ENDPOINT_URL_KINESIS`, `MURMUR_KINESALITE_ENDPOINT` |
//! | `tansu` (`tansu@0.6.0 --features dynostore`, crates.io, built once in the debug profile: ~7 min) | Kafka over TCP (the e2e scenarios; the tests use librdkafka's in-process mock cluster) | for the e2e scenarios, or `services --with tansu`; not when `KAFKA_BROKERS` is already set | `KAFKA_BROKERS` |
//!
//! moto runs through `xtask/services/moto_server.py`, which serves one
//! request at a time: `moto_server` itself races concurrent UpdateItem calls
//! on one item and can lose an `ADD`, which DynamoDB never does.
//!
//! To run the tests against LocalStack, a moto server of your own or a Kafka
//! cluster, set the endpoint yourself; nothing is installed or started for it
//! then (the moto venv is still installed: the tests' Python helpers need
//! it):
//!
//! ```text
//! AWS_ENDPOINT_URL=http://localhost:4566 KAFKA_BROKERS=broker:9092 cargo xtask test
//! ```
//!
//! The tests always get `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION` (and `AWS_DEFAULT_REGION`, for boto3) and
//! `AWS_ALLOW_HTTP=true`. They are forced to `test` / `test` / `us-east-1`
//! when xtask started the AWS stand-in (so a request that escapes to real AWS
//! can never be signed with real credentials), and only defaulted to those
//! values when the endpoint is your own.
//! `MURMUR_TEST_SERVICES` lists the services the tests can use, comma
//! separated: the names of the services xtask started, and `external` for an
//! `AWS_ENDPOINT_URL` you supplied (a `MURMUR_TEST_SERVICES` you set yourself
//! is passed through unchanged).
//!
//! # Cache
//!
//! Installs live outside the repository, in `$MURMUR_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/murmur`, else `$HOME/.cache/murmur`:
//! `venv-moto-5.2.5-pyarrow-26.0.1-duckdb-2.0.0-confluent-kafka-2.16.1/`,
//! `kinesalite-3.3.3/`, `tansu-0.6.0/` and `logs/<service>-<port>.log`.
//! An install is complete once its stamp file exists; the stamp is written
//! only after the installer succeeded, so an interrupted install is redone
//! from scratch on the next run. Delete the cache directory to reinstall.
//!
//! Every process xtask starts runs in its own process group and is stopped by
//! PID (SIGTERM, then SIGKILL after a grace period) when xtask finishes, fails
//! or is interrupted with Ctrl-C / SIGTERM / SIGHUP.
//!
//! [cargo-xtask]: https://github.com/matklad/cargo-xtask

mod e2e;
mod services;
mod signals;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    e2e::E2eArgs,
    services::{ServiceSet, Services, TANSU},
};

/// Project automation for Murmur.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks `cargo xtask` knows.
#[derive(Debug, Subcommand)]
enum Task {
    /// Lint, start the test services, run `cargo test --workspace`, then the
    /// end-to-end scenarios (`e2e`), stop the services.
    Test(TestArgs),
    /// Start every service (moto, kinesalite, tansu), build the worker and
    /// run the end-to-end scenarios against them; stop everything.
    E2e(E2eArgs),
    /// Start the test services for local development and print their `export` lines.
    ///
    /// Runs until Ctrl-C, SIGTERM or end of standard input, then stops them.
    Services(ServicesArgs),
    /// Run benchmarks (`cargo bench`) with the services and tools they
    /// need: the DuckDB of the moto venv for `snapshot`, a moto server for
    /// `ddb`.
    Bench(BenchArgs),
    /// Run `cargo deny check licenses bans sources` (needs cargo-deny installed).
    Deny,
}

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
    #[arg(long)]
    no_lint: bool,
    /// Optional services to start (the default; kept for old scripts).
    #[arg(long = "with", value_enum, value_delimiter = ',')]
    with: Vec<Optional>,
    /// Optional services not to start (also: MURMUR_TEST_KINESALITE=0); their tests skip.
    #[arg(
        long = "without",
        value_enum,
        value_delimiter = ',',
        conflicts_with = "with"
    )]
    without: Vec<Optional>,
    /// Skip the end-to-end scenarios (they also skip when the extra
    /// `cargo test` arguments select packages).
    #[arg(long)]
    no_e2e: bool,
    /// The end-to-end scenarios' options.
    #[command(flatten)]
    e2e: E2eArgs,
    /// Extra arguments for `cargo test`, after `--` (e.g. `-- -p murmur-core -- --nocapture`).
    #[arg(last = true)]
    cargo_test_args: Vec<OsString>,
}

/// Arguments of `cargo xtask services`.
#[derive(Debug, clap::Args)]
struct ServicesArgs {
    /// Optional services to start (the default; kept for old scripts).
    #[arg(long = "with", value_enum, value_delimiter = ',')]
    with: Vec<Optional>,
    /// Optional services not to start (also: MURMUR_TEST_KINESALITE=0).
    #[arg(
        long = "without",
        value_enum,
        value_delimiter = ',',
        conflicts_with = "with"
    )]
    without: Vec<Optional>,
    /// Keep running at end of standard input (stop only on Ctrl-C / SIGTERM).
    #[arg(long)]
    ignore_stdin: bool,
}

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The benchmarks to run, in this order (all of them when none is named).
    #[arg(value_enum)]
    benches: Vec<Bench>,
}

/// The project's benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    /// murmur-source-snapshot: a 20M-row Parquet / JSON Lines backfill vs
    /// decode-only, `gzip -dc | wc -l`, inflate + parse and DuckDB.
    Snapshot,
    /// murmur-core: the Aggregator vs a plain HashMap fold.
    Aggregate,
    /// murmur-state-ddb: events per DynamoDB request, fenced batches vs one
    /// UpdateItem per event (against moto).
    Ddb,
    /// murmur-source-live: raw rdkafka vs decoded KafkaSource records.
    Kafka,
    /// murmur-archive: events archived to Parquet vs encode-only.
    Archive,
}

impl Bench {
    /// The package and bench target.
    fn target(self) -> (&'static str, &'static str) {
        match self {
            Bench::Snapshot => ("murmur-source-snapshot", "snapshot"),
            Bench::Aggregate => ("murmur-core", "aggregate"),
            Bench::Ddb => ("murmur-state-ddb", "ddb"),
            Bench::Kafka => ("murmur-source-live", "kafka_throughput"),
            Bench::Archive => ("murmur-archive", "archive"),
        }
    }
}

/// Services started by default that can be left out (`--without`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Optional {
    /// kinesalite, a Kinesis stand-in with real sequence numbers (npm).
    Kinesalite,
    /// tansu, a Kafka-compatible broker (crates.io); not started by default
    /// by `services` and `test` (the e2e scenarios start it themselves).
    Tansu,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = signals::install() {
        eprintln!("xtask: warning: cannot install signal handler: {e:#}");
    }
    let result = match cli.task {
        Task::Test(args) => test(args),
        Task::E2e(args) => e2e_cmd(args),
        Task::Services(args) => services_cmd(args),
        Task::Bench(args) => bench(args),
        Task::Deny => deny(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a progress message of xtask (to stderr, so stdout stays clean).
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("xtask: {}", format_args!($($arg)*)) };
}
pub(crate) use say;

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root (uses the cargo that runs xtask).
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    // Incremental state roughly doubles the size of `target/` on a clean
    // build and buys nothing for a one-shot test run; a developer who wants
    // it sets CARGO_INCREMENTAL themselves.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Whether an environment variable is set to a non-empty value.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Turns a child's exit status into xtask's exit code (128 + signal if killed).
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => ExitCode::SUCCESS,
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// Runs a lint step, failing with `hint` if it does not succeed.
fn lint_step(what: &str, mut cmd: Command, hint: &str) -> Result<()> {
    say!("lint: {what}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    signals::check()?;
    if !status.success() {
        bail!("{what} failed ({status}); {hint}");
    }
    say!("lint: {what}: ok ({:.1?})", started.elapsed());
    Ok(())
}

/// Which services to start: every optional one, unless left out with
/// `--without` or switched off in the environment (`MURMUR_TEST_KINESALITE=0`);
/// `--with` names one explicitly (and overrides the environment).
fn selected(with: &[Optional], without: &[Optional]) -> Services {
    let env_off = std::env::var("MURMUR_TEST_KINESALITE").is_ok_and(|v| v == "0" || v == "false");
    let wanted = |s: Optional| with.contains(&s) || (!without.contains(&s) && !env_off);
    Services {
        kinesalite: wanted(Optional::Kinesalite),
        tansu: with.contains(&Optional::Tansu),
    }
}

/// `cargo xtask test`.
fn test(args: TestArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let e2e = !args.no_e2e && !selects_packages(&args.cargo_test_args);
    // Stopped (when dropped) if anything below fails before the e2e run.
    let tansu_install = if e2e {
        services::install_in_background(TANSU)?
    } else {
        None
    };
    if args.no_lint {
        say!("lint: skipped (--no-lint)");
    } else {
        let mut fmt = cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        lint_step(
            "cargo fmt --all -- --check",
            fmt,
            "run `cargo fmt --all` to fix the formatting",
        )?;
        let mut clippy = cargo();
        clippy.args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]);
        lint_step(
            "cargo clippy --workspace --all-targets -- -D warnings",
            clippy,
            "fix the warnings above (or run `cargo xtask test --no-lint` to test anyway)",
        )?;
    }

    // Stops every started service when dropped, whatever happens below.
    let services: ServiceSet = services::start(selected(&args.with, &args.without))?;

    let mut cmd = cargo();
    cmd.arg("test");
    // `--workspace` together with `-p` would test everything anyway: let an
    // explicit package selection win.
    if !selects_packages(&args.cargo_test_args) {
        cmd.arg("--workspace");
    }
    cmd.args(&args.cargo_test_args);
    services.apply_env(&mut cmd);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    say!(
        "running cargo test{} with {}",
        if selects_packages(&args.cargo_test_args) {
            ""
        } else {
            " --workspace"
        },
        services.summary()
    );
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    let status = signals::wait_forwarding(&mut child).context("waiting for cargo test")?;
    if !status.success() {
        say!("cargo test failed: {status}");
        return Ok(exit_code(status));
    }
    say!("cargo test passed ({:.1?} so far)", started.elapsed());
    if !e2e {
        say!("e2e: skipped");
        return Ok(ExitCode::SUCCESS);
    }
    let mut services = services;
    let status = e2e::run(&mut services, &args.e2e, tansu_install)?;
    drop(services);
    if status.success() {
        say!(
            "tests and e2e scenarios passed ({:.1?} in total)",
            started.elapsed()
        );
    } else {
        say!("e2e failed: {status}");
    }
    Ok(exit_code(status))
}

/// `cargo xtask e2e`.
fn e2e_cmd(args: E2eArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let tansu_install = services::install_in_background(TANSU)?;
    // An AWS endpoint of the user's own (LocalStack) serves Kinesis too.
    let own_kinesis = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS"]
        .iter()
        .any(|v| env_set(v));
    let mut services = services::start(Services {
        kinesalite: !own_kinesis || env_set("MURMUR_KINESALITE_ENDPOINT"),
        tansu: false,
    })?;
    let status = e2e::run(&mut services, &args, tansu_install)?;
    drop(services);
    if status.success() {
        say!("e2e scenarios passed ({:.1?})", started.elapsed());
    } else {
        say!("e2e failed: {status}");
    }
    Ok(exit_code(status))
}

/// Whether extra `cargo test` args (before a `--`) select packages themselves.
fn selects_packages(args: &[OsString]) -> bool {
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| {
            a == "-p"
                || a == "--package"
                || a.starts_with("--package=")
                || (a.starts_with("-p") && !a.starts_with("--"))
        })
}

/// `cargo xtask services`.
fn services_cmd(args: ServicesArgs) -> Result<ExitCode> {
    let services = services::start(selected(&args.with, &args.without))?;
    for (name, value) in services.exports() {
        println!("export {name}={}", shell_quote(&value));
    }
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    say!(
        "{} ready; paste the export lines above into another shell. Stop with Ctrl-C{}.",
        services.summary(),
        if args.ignore_stdin {
            ""
        } else {
            " or end of input (Ctrl-D)"
        }
    );
    let stdin_closed = if args.ignore_stdin {
        None
    } else {
        Some(signals::watch_stdin_eof())
    };
    let mut services = services;
    loop {
        if signals::interrupted() {
            say!("interrupted; stopping services");
            break;
        }
        if stdin_closed
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        {
            say!("end of standard input; stopping services");
            break;
        }
        if let Some(msg) = services.check_alive() {
            drop(services);
            bail!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(services);
    Ok(ExitCode::SUCCESS)
}

/// Quotes a value for POSIX shells when it needs it.
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,@=+%".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// `cargo xtask bench`.
fn bench(args: BenchArgs) -> Result<ExitCode> {
    let benches = if args.benches.is_empty() {
        Bench::value_variants().to_vec()
    } else {
        args.benches
    };
    // moto only for the DynamoDB benchmark (its exports include
    // `MURMUR_PYTHON`); the snapshot one needs only the venv's Python
    // (DuckDB).
    let services = if benches.contains(&Bench::Ddb) {
        Some(services::start(Services::default())?)
    } else {
        None
    };
    let python =
        if services.is_none() && benches.contains(&Bench::Snapshot) && !env_set("MURMUR_PYTHON") {
            Some(services::venv_python()?)
        } else {
            None
        };
    for b in benches {
        let (package, target) = b.target();
        let mut cmd = cargo();
        cmd.args(["bench", "-p", package, "--bench", target]);
        if let Some(services) = &services {
            services.apply_env(&mut cmd);
        }
        if let Some(python) = &python {
            cmd.env("MURMUR_PYTHON", python);
        }
        say!("cargo bench -p {package} --bench {target}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run cargo bench -p {package}"))?;
        let status = signals::wait_forwarding(&mut child).context("waiting for cargo bench")?;
        if !status.success() {
            say!("cargo bench -p {package} --bench {target} failed: {status}");
            return Ok(exit_code(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask deny`.
fn deny() -> Result<ExitCode> {
    let installed = cargo()
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!(
            "xtask: cargo-deny is not installed, so the dependency checks were NOT run.\n\
             Install it once with\n\
             \n    cargo install --locked cargo-deny\n\n\
             then run `cargo xtask deny` again (configuration: deny.toml)."
        );
        return Ok(ExitCode::FAILURE);
    }
    say!("cargo deny check licenses bans sources");
    let status = cargo()
        .args(["deny", "check", "licenses", "bans", "sources"])
        .status()
        .context("cannot run cargo deny")?;
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn package_selection_is_detected_before_the_separator_only() {
        assert!(selects_packages(&os(&["-p", "murmur-core"])));
        assert!(selects_packages(&os(&["-pmurmur-core"])));
        assert!(selects_packages(&os(&["--package=murmur-core"])));
        assert!(!selects_packages(&os(&["--", "-p"])));
        assert!(!selects_packages(&os(&["--release", "--", "--nocapture"])));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(
            shell_quote("http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(shell_quote("moto,kinesalite"), "moto,kinesalite");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--no-lint",
            "--with",
            "kinesalite",
            "--",
            "-p",
            "x",
        ])
        .unwrap();
        let Task::Test(args) = cli.task else {
            panic!("not test")
        };
        assert!(args.no_lint);
        assert_eq!(args.with, vec![Optional::Kinesalite]);
        assert_eq!(args.cargo_test_args, os(&["-p", "x"]));

        let cli = Cli::try_parse_from(["xtask", "test", "--without", "kinesalite"]).unwrap();
        let Task::Test(args) = cli.task else {
            panic!("not test")
        };
        assert_eq!(args.without, vec![Optional::Kinesalite]);
        assert!(!selected(&args.with, &args.without).kinesalite);
        if std::env::var_os("MURMUR_TEST_KINESALITE").is_none() {
            assert!(
                selected(&[], &[]).kinesalite,
                "kinesalite is a default service"
            );
        }
        assert!(
            Cli::try_parse_from([
                "xtask",
                "test",
                "--with",
                "kinesalite",
                "--without",
                "kinesalite"
            ])
            .is_err()
        );

        let cli = Cli::try_parse_from(["xtask", "bench", "snapshot", "ddb"]).unwrap();
        let Task::Bench(args) = cli.task else {
            panic!("not bench")
        };
        assert_eq!(args.benches, vec![Bench::Snapshot, Bench::Ddb]);
        assert_eq!(
            args.benches[1].target(),
            ("murmur-state-ddb", "ddb"),
            "the bench target"
        );
        assert!(Cli::try_parse_from(["xtask", "bench", "nope"]).is_err());
    }

    #[test]
    fn every_bench_target_exists() {
        // A renamed bench would otherwise fail only when someone runs it.
        for b in Bench::value_variants() {
            let (package, target) = b.target();
            let dir = workspace_root().join("crates").join(package);
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{package} has no bench {target}"
            );
            assert!(dir.join("benches").join(format!("{target}.rs")).exists());
        }
    }
}
