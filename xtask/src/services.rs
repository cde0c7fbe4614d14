//! The local services the tests run against: how each is installed into the
//! cache, started, probed for readiness, described to the tests through
//! environment variables, and stopped.
//!
//! A service is a [`Service`] value; to add one, write a `const` like
//! [`MOTO`] or [`KINESALITE`] and select it in [`start`].

use std::{
    fs::{self, File},
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime},
};

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use crate::{env_set, say, signals};

/// How long a service may take to answer after it was started
/// (override: `MURMUR_SERVICE_START_TIMEOUT_SECS`).
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Name of the file that marks an install as complete (holds the spec).
const STAMP: &str = ".murmur-install-complete";
/// Logs older than this are deleted when a service starts.
const LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Credentials and region the tests get when xtask runs the AWS stand-in.
/// (`AWS_DEFAULT_REGION` is for Python helpers: boto3 ignores `AWS_REGION`.)
const AWS_TEST_ENV: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
    ("AWS_ALLOW_HTTP", "true"),
];

/// How a service gets installed into the cache directory.
#[derive(Debug, Clone, Copy)]
pub enum Install {
    /// A PyPI requirement, pip-installed into its own venv `<cache>/<dir>`.
    PipVenv {
        /// The pip requirements, pinned, separated by spaces.
        requirement: &'static str,
        /// Directory of the venv inside the cache.
        dir: &'static str,
    },
    /// An npm package, installed with `npm install --prefix <cache>/<dir>`.
    Npm {
        /// The npm package spec, pinned.
        package: &'static str,
        /// Prefix directory inside the cache.
        dir: &'static str,
    },
    /// A binary crate from crates.io, `cargo install --locked --debug
    /// --root <cache>/<dir> <args>`. The debug profile: a test stand-in needs
    /// no optimisation, and it builds in a fraction of the release time.
    /// Its build directory (`<cache>/<dir>.build`) survives an interrupted
    /// install, so the next attempt picks the compiled crates up again.
    Cargo {
        /// The `cargo install` arguments: features and `crate@version`, pinned.
        args: &'static str,
        /// Root directory inside the cache (the binary lands in `bin/`).
        dir: &'static str,
    },
}

impl Install {
    /// The directory inside the cache and the pinned spec that is installed.
    fn dir_and_spec(self) -> (&'static str, &'static str) {
        match self {
            Install::PipVenv { requirement, dir } => (dir, requirement),
            Install::Npm { package, dir } => (dir, package),
            Install::Cargo { args, dir } => (dir, args),
        }
    }
}

/// How to tell that a started service is ready.
#[derive(Debug, Clone, Copy)]
pub enum Readiness {
    /// `GET <path>` answers with this HTTP status.
    HttpStatus {
        /// Request path.
        path: &'static str,
        /// Expected status code.
        status: u16,
    },
    /// `GET /` gets any HTTP response at all.
    AnyHttp,
    /// The port accepts a TCP connection.
    Tcp,
}

/// A local service the tests can use.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Short name, used in messages, log file names and `MURMUR_TEST_SERVICES`.
    pub name: &'static str,
    /// How it is installed.
    pub install: Install,
    /// The command that runs it on `127.0.0.1:<port>`, given its install directory.
    pub command: fn(install_dir: &Path, port: u16) -> Command,
    /// How to tell it is ready.
    pub readiness: Readiness,
    /// What precedes `127.0.0.1:<port>` in its address (`http://`, or
    /// nothing for a Kafka bootstrap server list).
    pub scheme: &'static str,
    /// Variables that receive its address (`<scheme>127.0.0.1:<port>`). If the
    /// first one is already set in the environment, the service is not
    /// started: that URL is used instead (and copied into the others that are
    /// unset).
    pub endpoint_env: &'static [&'static str],
    /// Whether it stands in for AWS as a whole (then the tests get the fixed
    /// test credentials and region when xtask runs it).
    pub is_aws: bool,
}

/// moto server: DynamoDB, S3 and Kinesis basics in one process. Its venv
/// also holds pyarrow (tests read data Murmur did not write), DuckDB
/// (benchmark baselines) and confluent-kafka (the e2e producers); its
/// `python` is exported as `MURMUR_PYTHON`.
pub const MOTO: Service = Service {
    name: "moto",
    install: Install::PipVenv {
        requirement: "moto[server]==5.2.5 pyarrow==26.0.1 duckdb==2.0.0 confluent-kafka==2.16.1",
        dir: "venv-moto-5.2.5-pyarrow-26.0.1-duckdb-2.0.0-confluent-kafka-2.16.1",
    },
    command: moto_command,
    readiness: Readiness::HttpStatus {
        path: "/moto-api/",
        status: 200,
    },
    scheme: "http://",
    endpoint_env: &["AWS_ENDPOINT_URL"],
    is_aws: true,
};

/// moto's own `moto_server` serves requests on concurrent threads against
/// backends without locks, so two UpdateItem calls on one item can lose an
/// `ADD`; `xtask/services/moto_server.py` serves them one at a time, as
/// atomic as DynamoDB's item writes.
fn moto_command(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(python_in(dir));
    cmd.arg(
        crate::workspace_root()
            .join("xtask")
            .join("services")
            .join("moto_server.py"),
    )
    .args(["127.0.0.1", &port.to_string()]);
    cmd
}

/// kinesalite: Kinesis with real (56-digit) sequence numbers.
pub const KINESALITE: Service = Service {
    name: "kinesalite",
    install: Install::Npm {
        package: "kinesalite@3.3.3",
        dir: "kinesalite-3.3.3",
    },
    command: kinesalite_command,
    readiness: Readiness::AnyHttp,
    scheme: "http://",
    endpoint_env: &["MURMUR_KINESALITE_ENDPOINT", "AWS_ENDPOINT_URL_KINESIS"],
    is_aws: false,
};

fn kinesalite_command(dir: &Path, port: u16) -> Command {
    // kinesalite's CLI has no host flag; its API does.
    let script = format!(
        "require('kinesalite')({{createStreamMs:0,deleteStreamMs:0,updateStreamMs:0,shardLimit:100}})\
         .listen({port},'127.0.0.1')"
    );
    let mut cmd = Command::new("node");
    cmd.arg("-e")
        .arg(script)
        .current_dir(dir)
        .env("NODE_PATH", dir.join("node_modules"));
    cmd
}

/// tansu: a Kafka-compatible broker, for runs that talk Kafka over TCP
/// (`cargo xtask e2e`; the unit tests use librdkafka's in-process mock
/// cluster). In-memory storage; nothing outlives the process.
pub const TANSU: Service = Service {
    name: "tansu",
    install: Install::Cargo {
        args: "--features dynostore tansu@0.6.0",
        dir: "tansu-0.6.0",
    },
    command: tansu_command,
    readiness: Readiness::Tcp,
    scheme: "",
    endpoint_env: &["KAFKA_BROKERS"],
    is_aws: false,
};

fn tansu_command(dir: &Path, port: u16) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(dir.join("bin").join("tansu"));
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .env("RUST_LOG", "warn");
    cmd
}

/// Which optional services to start (moto always is, unless external).
#[derive(Debug, Clone, Copy, Default)]
pub struct Services {
    /// Start kinesalite too.
    pub kinesalite: bool,
    /// Start tansu too.
    pub tansu: bool,
}

/// The cache directory for installs and logs (outside the repository):
/// `$MURMUR_CACHE_DIR`, else `$XDG_CACHE_HOME/murmur`, else `$HOME/.cache/murmur`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("MURMUR_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Ok(xdg.join("murmur"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("murmur")),
        None => bail!("cannot find a cache directory: set MURMUR_CACHE_DIR (or HOME)"),
    }
}

/// Where a service is reached.
#[derive(Debug)]
struct Endpoint {
    service: Service,
    url: String,
    /// Taken from the environment rather than started by xtask.
    external: bool,
}

/// The services of one xtask run. Dropping it stops every process it started.
#[derive(Debug, Default)]
pub struct ServiceSet {
    endpoints: Vec<Endpoint>,
    running: Vec<Running>,
    /// `MURMUR_PYTHON`: the python of an installed venv (pyarrow, DuckDB, boto3).
    python: Option<PathBuf>,
}

impl ServiceSet {
    /// The environment variables the tests need (only those xtask sets:
    /// defaults already present in the environment are left out).
    pub fn exports(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: &str| {
            out.retain(|(n, _)| n != name);
            out.push((name.to_string(), value.to_string()));
        };
        let aws_local = self
            .endpoints
            .iter()
            .any(|e| e.service.is_aws && !e.external);
        // Credentials are a pair: keep the user's if either half is set.
        let user_creds = env_set("AWS_ACCESS_KEY_ID") || env_set("AWS_SECRET_ACCESS_KEY");
        for (name, value) in AWS_TEST_ENV {
            let users = if matches!(name, "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY") {
                user_creds
            } else {
                env_set(name)
            };
            if aws_local || !users {
                set(name, value);
            }
        }
        for e in &self.endpoints {
            for (i, var) in e.service.endpoint_env.iter().enumerate() {
                let keep_users = e.external && (i == 0 || env_set(var));
                if !keep_users {
                    set(var, &e.url);
                }
            }
        }
        if !env_set("MURMUR_TEST_SERVICES") {
            let names: Vec<&str> = self
                .endpoints
                .iter()
                .map(|e| {
                    if e.external && e.service.is_aws {
                        "external"
                    } else {
                        e.service.name
                    }
                })
                .collect();
            set("MURMUR_TEST_SERVICES", &names.join(","));
        }
        if let Some(python) = &self.python {
            set("MURMUR_PYTHON", &python.to_string_lossy());
        }
        out
    }

    /// Puts [`exports`](Self::exports) into `cmd`'s environment.
    pub fn apply_env(&self, cmd: &mut Command) {
        if self
            .endpoints
            .iter()
            .any(|e| e.service.is_aws && !e.external)
        {
            // Would pair a real session token with the fake keys.
            cmd.env_remove("AWS_SESSION_TOKEN");
        }
        cmd.envs(self.exports());
    }

    /// One line describing where the services are.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                if e.external {
                    format!(
                        "{}={} from the environment (instead of {})",
                        e.service.endpoint_env[0], e.url, e.service.name
                    )
                } else {
                    format!("{} at {}", e.service.name, e.url)
                }
            })
            .collect();
        if parts.is_empty() {
            "no services".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// A message if a started service has exited on its own.
    pub fn check_alive(&mut self) -> Option<String> {
        self.running
            .iter_mut()
            .find_map(|r| match r.child.try_wait() {
                Ok(Some(status)) => {
                    r.stopped = true;
                    Some(format!(
                        "{} exited unexpectedly ({status})\n{}",
                        r.name,
                        log_tail(&r.log)
                    ))
                }
                _ => None,
            })
    }
}

impl Drop for ServiceSet {
    fn drop(&mut self) {
        while let Some(mut r) = self.running.pop() {
            r.stop();
        }
    }
}

/// Installs (if needed) and starts the selected services, waiting until they
/// answer. On error, whatever was already started is stopped again.
pub fn start(selection: Services) -> Result<ServiceSet> {
    let mut set = ServiceSet::default();
    set.add(MOTO)?;
    if selection.kinesalite {
        set.add(KINESALITE)?;
    }
    if selection.tansu {
        set.add(TANSU)?;
    }
    Ok(set)
}

impl ServiceSet {
    /// The Python of the installed venv (`MURMUR_PYTHON`), if there is one.
    pub fn python(&self) -> Option<&Path> {
        self.python.as_deref()
    }

    /// Whether `service` is already part of the set.
    pub fn has(&self, service: &Service) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.service.name == service.name)
    }

    /// Installs (if needed) and starts one more service, waiting until it
    /// answers; or takes its address from the environment.
    pub fn add(&mut self, service: Service) -> Result<()> {
        let primary = service.endpoint_env[0];
        let pip = matches!(service.install, Install::PipVenv { .. });
        if let Some(url) = std::env::var(primary).ok().filter(|v| !v.is_empty()) {
            say!(
                "{}: using {primary}={url} from the environment; not starting it",
                service.name
            );
            if pip {
                // The venv's Python tools (pyarrow, boto3, ...) serve the
                // tests whichever AWS endpoint they talk to.
                let dir = install(&service, &cache_dir()?)?;
                self.python = Some(python_in(&dir));
            }
            self.endpoints.push(Endpoint {
                service,
                url,
                external: true,
            });
            return Ok(());
        }
        let cache = cache_dir()?;
        let dir = install(&service, &cache)?;
        if pip {
            self.python = Some(python_in(&dir));
        }
        signals::check()?;
        let running = launch(&service, &dir, &cache)?;
        self.endpoints.push(Endpoint {
            service,
            url: running.url.clone(),
            external: false,
        });
        self.running.push(running);
        signals::check()?;
        Ok(())
    }
}

/// The Python of the moto venv (pyarrow, DuckDB), installed if needed,
/// without starting moto.
pub fn venv_python() -> Result<PathBuf> {
    Ok(python_in(&install(&MOTO, &cache_dir()?)?))
}

/// The Python of the venv installed in `dir`.
fn python_in(dir: &Path) -> PathBuf {
    dir.join("bin").join("python")
}

/// An install running on a thread of its own, its output in a log file
/// (see [`install_in_background`]). Dropping it before [`wait`](Self::wait)
/// stops the installer (SIGTERM); the next run installs again, reusing
/// what was compiled.
pub struct BackgroundInstall {
    name: &'static str,
    log: PathBuf,
    child: Arc<AtomicU32>,
    handle: Option<std::thread::JoinHandle<Result<PathBuf>>>,
}

impl BackgroundInstall {
    /// Waits for the install to finish.
    pub fn wait(mut self) -> Result<()> {
        let handle = self.handle.take().expect("waited once");
        say!("{}: waiting for its install to finish", self.name);
        match handle.join() {
            Ok(result) => result.map(drop).with_context(|| {
                format!(
                    "installing {} failed; see {}",
                    self.name,
                    self.log.display()
                )
            }),
            Err(_) => bail!("the install thread of {} panicked", self.name),
        }
    }
}

impl Drop for BackgroundInstall {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let pid = self.child.load(Ordering::SeqCst);
            if let Ok(pid) = i32::try_from(pid)
                && pid > 0
            {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let _ = handle.join();
        }
    }
}

/// Starts installing `service` on a thread of its own, so that its build
/// (tansu: minutes of compiling) overlaps the lint and test builds, whose
/// last crates and links leave a core idle. `None` when it is already
/// installed, or its address comes from the environment.
pub fn install_in_background(service: Service) -> Result<Option<BackgroundInstall>> {
    if env_set(service.endpoint_env[0]) {
        return Ok(None);
    }
    let cache = cache_dir()?;
    if installed(&service, &cache) {
        return Ok(None);
    }
    let logs = cache.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log = logs.join(format!("{}-install.log", service.name));
    say!(
        "{}: installing in the background meanwhile (log {})",
        service.name,
        log.display()
    );
    let child = Arc::new(AtomicU32::new(0));
    let output = Output {
        log: Some(log.clone()),
        child: Some(child.clone()),
    };
    let handle = std::thread::spawn(move || install_with(&service, &cache, &output));
    Ok(Some(BackgroundInstall {
        name: service.name,
        log,
        child,
        handle: Some(handle),
    }))
}

/// Where an installer's output goes, and where its PID is published.
#[derive(Default)]
struct Output {
    /// A log file instead of xtask's stderr.
    log: Option<PathBuf>,
    /// Receives the running installer's PID (0 when none runs).
    child: Option<Arc<AtomicU32>>,
}

/// Whether the stamp file in the cache says `service` is installed.
fn installed(service: &Service, cache: &Path) -> bool {
    let (dir_name, spec) = service.install.dir_and_spec();
    let stamp = cache.join(dir_name).join(STAMP);
    fs::read_to_string(stamp).is_ok_and(|s| s.trim() == spec)
}

/// Installs `service` into the cache unless its stamp file says it is there.
/// Returns the install directory.
fn install(service: &Service, cache: &Path) -> Result<PathBuf> {
    install_with(service, cache, &Output::default())
}

/// [`install`], its installers' output going to `output`.
fn install_with(service: &Service, cache: &Path, output: &Output) -> Result<PathBuf> {
    let name = service.name;
    let (dir_name, spec) = service.install.dir_and_spec();
    let dir = cache.join(dir_name);
    let stamp = dir.join(STAMP);
    let installed = || installed(service, cache);
    if installed() {
        say!(
            "{name}: {spec} already installed in {} (install skipped)",
            dir.display()
        );
        return Ok(dir);
    }

    fs::create_dir_all(cache)
        .with_context(|| format!("cannot create cache directory {}", cache.display()))?;
    // Serialise concurrent installs (two xtask runs at once) into one directory.
    let lock_path = cache.join(format!("{dir_name}.lock"));
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
        say!("{name}: another xtask is installing it; waiting");
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    if installed() {
        say!("{name}: {spec} already installed in {}", dir.display());
        return Ok(dir);
    }
    if dir.exists() {
        say!(
            "{name}: removing incomplete install in {} (no stamp file)",
            dir.display()
        );
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }

    let started = Instant::now();
    match service.install {
        Install::PipVenv { requirement, .. } => {
            say!(
                "{name}: installing {requirement} into {} (first run only, about a minute)",
                dir.display()
            );
            let python = std::env::var_os("MURMUR_PYTHON")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into());
            let mut venv = Command::new(&python);
            venv.arg("-m").arg("venv").arg(&dir);
            run_installer(
                venv,
                output,
                "python3 -m venv",
                "needs Python 3 with the venv module (Debian: apt-get install python3 python3-venv); \
                 set MURMUR_PYTHON to use another interpreter",
            )?;
            let mut pip = Command::new(dir.join("bin").join("pip"));
            pip.args(["install", "--disable-pip-version-check", "-q"])
                .args(requirement.split_whitespace());
            run_installer(pip, output, "pip install", "needs access to PyPI")?;
        }
        Install::Npm { package, .. } => {
            say!(
                "{name}: installing {package} into {} (first run only)",
                dir.display()
            );
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut npm = Command::new("npm");
            npm.arg("install").arg("--prefix").arg(&dir).args([
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                package,
            ]);
            run_installer(
                npm,
                output,
                "npm install",
                "needs Node.js and npm (Debian: apt-get install nodejs npm) and access to the npm registry",
            )?;
        }
        Install::Cargo { args, .. } => {
            say!(
                "{name}: cargo install {args} into {} (first run only, several minutes)",
                dir.display()
            );
            let build = cache.join(format!("{dir_name}.build"));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut install = Command::new(cargo);
            install
                .args(["install", "--locked", "--debug", "--root"])
                .arg(&dir)
                .args(args.split_whitespace())
                // Its own build directory, never the workspace's `target/`.
                .env("CARGO_TARGET_DIR", &build)
                .env("CARGO_PROFILE_DEV_DEBUG", "0")
                .env_remove("RUSTFLAGS");
            run_installer(
                install,
                output,
                "cargo install",
                "needs access to crates.io",
            )?;
            let _ = fs::remove_dir_all(&build);
        }
    }
    // Written only now: an interrupted install has no stamp and is redone.
    let tmp = dir.join(format!("{STAMP}.tmp"));
    fs::write(&tmp, format!("{spec}\n"))
        .and_then(|()| fs::rename(&tmp, &stamp))
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    say!("{name}: installed in {:.1?}", started.elapsed());
    drop(lock);
    Ok(dir)
}

/// Runs an install step with its output on xtask's stderr (or `output`'s log).
fn run_installer(mut cmd: Command, output: &Output, what: &str, hint: &str) -> Result<()> {
    cmd.stdin(Stdio::null());
    match &output.log {
        Some(log) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("cannot open {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(stderr_stdio());
        }
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("{what}: {:?} not found; {hint}", cmd.get_program())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run {what}")),
    };
    if let Some(slot) = &output.child {
        slot.store(child.id(), Ordering::SeqCst);
    }
    let status = child.wait();
    if let Some(slot) = &output.child {
        slot.store(0, Ordering::SeqCst);
    }
    let status = status.with_context(|| format!("waiting for {what}"))?;
    signals::check()?;
    if !status.success() {
        bail!("{what} failed ({status}); {hint}");
    }
    Ok(())
}

/// A `Stdio` writing to xtask's stderr (keeps stdout for `export` lines).
fn stderr_stdio() -> Stdio {
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::inherit(), Stdio::from)
}

/// Why a service did not become ready.
enum NotReady {
    Exited(ExitStatus),
    Timeout(Duration),
    Interrupted,
}

/// Starts `service` on a free port and waits until it answers.
fn launch(service: &Service, dir: &Path, cache: &Path) -> Result<Running> {
    let name = service.name;
    let logs = cache.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    prune_logs(&logs);
    let timeout = std::env::var("MURMUR_SERVICE_START_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_START_TIMEOUT, Duration::from_secs);

    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let port = free_port()?;
        let log = logs.join(format!("{name}-{port}.log"));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = (service.command)(dir, port);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Own process group: the terminal's Ctrl-C does not reach it, and
            // stopping it can signal everything it spawned.
            .process_group(0);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let mut running = Running {
            name,
            url: format!("{}127.0.0.1:{port}", service.scheme),
            pid: child.id(),
            child,
            log,
            stopped: false,
        };
        say!(
            "{name}: started (pid {}) on 127.0.0.1:{port}, log {}",
            running.pid,
            running.log.display()
        );
        match wait_ready(&mut running, port, service.readiness, timeout) {
            Ok(()) => {
                say!(
                    "{name}: ready at {} after {:.1?}",
                    running.url,
                    started.elapsed()
                );
                return Ok(running);
            }
            Err(NotReady::Exited(status)) => {
                running.stopped = true;
                let tail = log_tail(&running.log);
                if attempt < ATTEMPTS && tail.contains("in use") {
                    say!("{name}: port {port} was taken meanwhile; retrying on another port");
                    continue;
                }
                bail!("{name} exited before it was ready ({status})\n{tail}");
            }
            Err(NotReady::Timeout(waited)) => {
                running.stop();
                bail!(
                    "{name} did not answer on {} within {waited:.0?} \
                     (raise MURMUR_SERVICE_START_TIMEOUT_SECS if the machine is slow)\n{}",
                    running.url,
                    log_tail(&running.log)
                );
            }
            Err(NotReady::Interrupted) => {
                running.stop();
                bail!("interrupted");
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls until the service answers as `readiness` demands.
fn wait_ready(
    running: &mut Running,
    port: u16,
    readiness: Readiness,
    timeout: Duration,
) -> Result<(), NotReady> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if signals::interrupted() {
            return Err(NotReady::Interrupted);
        }
        let ok = match readiness {
            Readiness::HttpStatus { path, status } => http_status(port, path) == Some(status),
            Readiness::AnyHttp => http_status(port, "/").is_some(),
            Readiness::Tcp => TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_millis(500),
            )
            .is_ok(),
        };
        if ok {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(NotReady::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status code of `GET <path>` on 127.0.0.1:`port`, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    parse_status_line(&head)
}

/// Parses `HTTP/1.x <code> ...`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

/// The last lines of a log file, framed for an error message.
fn log_tail(log: &Path) -> String {
    const LINES: usize = 40;
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
    format!(
        "--- last {} lines of {} ---\n{tail}\n--- end of log ---",
        LINES.min(lines.len()),
        log.display()
    )
}

/// Deletes `*.log` files older than [`LOG_RETENTION`] (best effort).
fn prune_logs(logs: &Path) {
    let Ok(entries) = fs::read_dir(logs) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > LOG_RETENTION);
        if old && path.extension().is_some_and(|e| e == "log") {
            let _ = fs::remove_file(path);
        }
    }
}

/// A started service process (leader of its own process group).
#[derive(Debug)]
struct Running {
    name: &'static str,
    url: String,
    pid: u32,
    child: Child,
    log: PathBuf,
    /// Already stopped or reaped; nothing left to do.
    stopped: bool,
}

impl Running {
    /// Stops the process group by PID: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        let group = Pid::from_raw(raw);
        if let Ok(Some(status)) = self.child.try_wait() {
            say!("{}: had already exited ({status})", self.name);
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        let started = Instant::now();
        let _ = killpg(group, Signal::SIGTERM);
        let how = loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break "SIGTERM",
                Ok(None) if started.elapsed() < STOP_GRACE => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                _ => {
                    let _ = killpg(group, Signal::SIGKILL);
                    let _ = self.child.wait();
                    break "SIGKILL";
                }
            }
        };
        // Anything the service spawned that outlived it.
        let _ = killpg(group, Signal::SIGKILL);
        say!(
            "{}: stopped (pid {}, {how}, {:.1?})",
            self.name,
            self.pid,
            started.elapsed()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404 NOT FOUND\r\nx"), Some(404));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn kinesalite_exports() {
        let set = ServiceSet {
            endpoints: vec![Endpoint {
                service: KINESALITE,
                url: "http://127.0.0.1:1".into(),
                external: false,
            }],
            running: Vec::new(),
            python: None,
        };
        let exports = set.exports();
        let get = |k: &str| {
            exports
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("AWS_ENDPOINT_URL_KINESIS"), Some("http://127.0.0.1:1"));
        assert_eq!(
            get("MURMUR_KINESALITE_ENDPOINT"),
            Some("http://127.0.0.1:1")
        );
    }
}
