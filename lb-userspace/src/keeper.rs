//! `lb run` as two processes: a small keeper that owns the proxy's listening sockets,
//! and the daemon that serves them, started by the keeper with the sockets inherited.
//! When the daemon dies (`kill -9`, a crash, the OOM killer) the sockets stay open in
//! the keeper, so the kernel keeps handing connects to the proxy and they wait in the
//! accept queue until the next daemon — started at once — accepts them, with their L7
//! rules. Without a keeper they would take the kernel's fallback split for their whole
//! life. Only when no daemon has been serving for `--fallback-after` does the keeper
//! close the sockets, and connects take the kernel split until one is back. SIGHUP
//! starts a daemon from the binary on disk (an upgrade in place); once it serves, the
//! old one drains.

use std::ffi::OsString;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::proxy::{Proxy, ProxyError};

/// The variable that tells a daemon the keeper started it: its listeners are
/// descriptors 3 (main), 4 (deferred) and 5 (admin), and 6 is where it says "ready".
pub const INHERITED: &str = "LB_KEEPER_FDS";
const FIRST_FD: RawFd = 3;

/// A daemon this long from its start without serving is stopped and started again:
/// far above a start's usual 0.1–5 s (a large cluster's first sync included).
const START_BOUND: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("starting the daemon: {0}")]
    Spawn(std::io::Error),
    #[error("{INHERITED}: descriptor {0} is not a listening TCP socket")]
    NotAListener(RawFd),
    #[error("keeper: {0}")]
    Io(#[from] std::io::Error),
}

/// The sockets a daemon got from its keeper, and the keeper's ear.
pub struct Inherited {
    pub proxy: Proxy,
    pub ready: Ready,
}

/// Where a daemon tells its keeper it serves.
pub struct Ready(std::fs::File);

impl Inherited {
    /// The sockets of a daemon the keeper started, or None for a daemon on its own.
    pub fn take() -> Result<Option<Inherited>, KeeperError> {
        if std::env::var_os(INHERITED).is_none() {
            return Ok(None);
        }
        let [main, deferred, admin] = [0, 1, 2].map(|i| FIRST_FD + i);
        for fd in [main, deferred, admin] {
            if !is_listening(fd) {
                return Err(KeeperError::NotAListener(fd));
            }
        }
        // SAFETY: the keeper put listening sockets at these descriptors (checked
        // above) and a pipe at the next; nothing else in this process owns them.
        let owned = |fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let proxy = Proxy::from_listeners(
            owned(main).into(),
            owned(deferred).into(),
            owned(admin).into(),
        )?;
        Ok(Some(Inherited {
            proxy,
            ready: Ready(owned(FIRST_FD + 3).into()),
        }))
    }
}

impl Ready {
    /// Tells the keeper this daemon serves (its configuration applied).
    pub fn say(mut self) {
        use std::io::Write as _;
        let _ = self.0.write_all(b"r");
    }
}

/// Whether `fd` is a listening socket.
fn is_listening(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `on`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            std::ptr::from_mut(&mut on).cast(),
            &mut len,
        )
    };
    r == 0 && on == 1
}

/// A daemon the keeper started.
struct Daemon {
    child: Child,
    ready: pipe::Receiver,
}

/// How a daemon's start went.
enum Started {
    Serving,
    Ended(ExitStatus),
}

impl Daemon {
    /// Waits until it says it serves, or ends (or is stopped past `START_BOUND`).
    async fn started(&mut self) -> Result<Started, KeeperError> {
        let mut byte = [0u8; 1];
        tokio::select! {
            read = self.ready.read(&mut byte) => {
                if matches!(read, Ok(1)) {
                    return Ok(Started::Serving);
                }
                // The pipe closed without a word: the daemon is gone.
                Ok(Started::Ended(self.child.wait().await?))
            }
            status = self.child.wait() => Ok(Started::Ended(status?)),
            () = tokio::time::sleep(START_BOUND) => {
                tracing::error!(pid = self.child.id(), "the daemon did not serve within {START_BOUND:?}; stopping it");
                let _ = self.child.start_kill();
                Ok(Started::Ended(self.child.wait().await?))
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory effects; the pid is our child's, not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }
}

/// The keeper: what it starts and what it holds.
struct Keeper {
    exe: PathBuf,
    args: Vec<OsString>,
    /// The listeners' addresses as first bound (ports picked once).
    addrs: [std::net::SocketAddr; 3],
    /// The listeners, while the keeper holds them.
    held: Option<Proxy>,
    fallback_after: Duration,
}

impl Keeper {
    /// Starts a daemon with the listeners (bound again if the keeper had let them go).
    fn spawn(&mut self) -> Result<Daemon, KeeperError> {
        if self.held.is_none() {
            self.held = Some(Proxy::bind_at(self.addrs)?);
        }
        let proxy = self.held.as_ref().expect("held");
        let (tx, ready) = pipe::pipe()?;
        let tx = tx.into_blocking_fd()?;
        // Above the descriptors the child gets, so the moves below cannot overwrite one
        // another; close-on-exec, so only the moved copies reach the daemon.
        let fds: Vec<OwnedFd> = proxy
            .fds()
            .into_iter()
            .chain([tx.as_raw_fd()])
            .map(|fd| dup_above(fd, 10))
            .collect::<std::io::Result<_>>()?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: getpid has no preconditions.
        let keeper = unsafe { libc::getpid() };
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .env(INHERITED, FIRST_FD.to_string())
            .kill_on_drop(false);
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, prctl,
        // getppid, _exit) on descriptors that exist in the child.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The daemon dies with its keeper (as one `lb run` would); if the
                // keeper died before this line, at once.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != keeper {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(KeeperError::Spawn)?;
        drop(fds);
        drop(tx);
        tracing::info!(pid = child.id(), exe = %self.exe.display(), "keeper: daemon started");
        Ok(Daemon { child, ready })
    }

    /// Starts daemons until one serves: at once, then backing off. Past
    /// `fallback_after` since `down_since` with none serving, the listeners close so
    /// connects take the kernel split meanwhile.
    async fn restart(&mut self, down_since: Instant) -> Result<Daemon, KeeperError> {
        let mut pause = Duration::from_millis(100);
        loop {
            let mut d = self.spawn()?;
            match d.started().await? {
                Started::Serving => {
                    tracing::info!(
                        pid = d.child.id(),
                        down_ms = down_since.elapsed().as_millis() as u64,
                        "keeper: daemon serving again"
                    );
                    return Ok(d);
                }
                Started::Ended(status) => {
                    tracing::error!(%status, "keeper: the daemon ended before serving; starting another in {pause:?}");
                }
            }
            if self.held.is_some() && down_since.elapsed() >= self.fallback_after {
                tracing::warn!(
                    "keeper: no daemon serving for {:?}; listeners closed, connects take the kernel split until one is back",
                    self.fallback_after
                );
                self.held = None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }
}

/// Duplicates `fd` to a close-on-exec descriptor numbered `min` or above.
fn dup_above(fd: RawFd, min: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor, owned by the OwnedFd.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and is owned by nothing else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) })
}

/// Runs `lb run`'s keeper: binds the listeners, starts the daemon (this binary with
/// this process's arguments) and keeps one serving until SIGTERM or SIGINT, which it
/// passes on; returns the daemon's exit code.
pub async fn keep(held: Proxy, fallback_after: Duration) -> Result<u8, KeeperError> {
    let exe = std::env::current_exe()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let addrs = held.addrs();
    let mut keeper = Keeper {
        exe,
        args,
        addrs,
        held: Some(held),
        fallback_after,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut daemon = keeper.spawn()?;
    // The first start fails for the user's reasons (flags, config, privileges): say so.
    if let Started::Ended(status) = daemon.started().await? {
        return Ok(exit_code(status));
    }
    loop {
        tokio::select! {
            status = daemon.child.wait() => {
                let status = status?;
                tracing::error!(%status, "keeper: the daemon ended; starting another (its connects wait in the listeners' queue)");
                daemon = keeper.restart(Instant::now()).await?;
            }
            _ = hup.recv() => {
                tracing::info!("keeper: SIGHUP: starting a daemon from {}", keeper.exe.display());
                let mut next = keeper.spawn()?;
                match next.started().await? {
                    Started::Serving => {
                        let old = std::mem::replace(&mut daemon, next);
                        old.signal(libc::SIGTERM);
                        tokio::spawn(async move {
                            let mut old = old;
                            let _ = old.child.wait().await;
                        });
                    }
                    Started::Ended(status) => tracing::error!(%status, "keeper: the new daemon did not start; the running one stays"),
                }
            }
            // The keeper lets go of the listeners first: once the daemon closes its
            // copies as it drains, they are closed, and new connects take the kernel
            // split at once instead of queueing for a daemon that will not accept.
            _ = term.recv() => {
                keeper.held = None;
                return stop(daemon, libc::SIGTERM).await;
            }
            _ = int.recv() => {
                keeper.held = None;
                return stop(daemon, libc::SIGINT).await;
            }
        }
    }
}

/// Passes `sig` on and waits for the daemon to end.
async fn stop(mut daemon: Daemon, sig: libc::c_int) -> Result<u8, KeeperError> {
    daemon.signal(sig);
    Ok(exit_code(daemon.child.wait().await?))
}

/// A shell's exit code for `status` (128 + the signal that ended it).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128 + s as u8,
        _ => 1,
    }
}
