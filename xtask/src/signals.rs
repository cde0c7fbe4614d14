//! Ctrl-C / SIGTERM / SIGHUP handling.
//!
//! xtask never dies from these signals by default: it records them, sends
//! SIGTERM to the `cargo test` it is waiting for if that does not exit by
//! itself (Ctrl-C reaches it through the terminal), and then unwinds normally, so the guards that
//! stop the services run. The services themselves sit in their own process
//! groups and never see the terminal's Ctrl-C.

use std::{
    io::Read as _,
    process::{Child, ExitStatus},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Set once SIGINT, SIGTERM or SIGHUP arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// PID of the foreground child to forward SIGTERM to, or 0.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);
/// How long the foreground child gets to react to the terminal's Ctrl-C.
const FORWARD_DELAY: Duration = Duration::from_millis(500);

/// Installs the handler (once, at start-up).
pub fn install() -> Result<()> {
    // Runs on ctrlc's own thread, so it may wait.
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        // A terminal's Ctrl-C reaches the foreground child by itself (and
        // then it exits with its own status): only signal it if it is still
        // running a moment later, e.g. because xtask alone got SIGTERM.
        std::thread::sleep(FORWARD_DELAY);
        let pid = FORWARD_TO.load(Ordering::SeqCst);
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    })?;
    Ok(())
}

/// Whether xtask was asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails if xtask was asked to stop.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Waits for `child`, forwarding SIGTERM to it if xtask gets a signal meanwhile.
pub fn wait_forwarding(child: &mut Child) -> std::io::Result<ExitStatus> {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    FORWARD_TO.store(pid, Ordering::SeqCst);
    if interrupted() && pid > 0 {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let status = child.wait();
    FORWARD_TO.store(0, Ordering::SeqCst);
    status
}

/// Starts a thread that reads (and discards) standard input; the flag turns
/// true at end of input.
pub fn watch_stdin_eof() -> Arc<AtomicBool> {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    closed
}
