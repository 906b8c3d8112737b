//! Shared helpers of the end-to-end tests of the API and the CLI: a real `sandhost serve` on free
//! loopback ports with a temp state dir, killed (with its sandboxes) when the guard drops, even on
//! panic; the CLI as a child process; a tonic client; a minimal HTTP GET.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sandhost_proto::v1::node_service_client::NodeServiceClient;
use sandhost_proto::v1::sandbox_service_client::SandboxServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub use crate::common::HANG_GUARD;
use crate::common::{poll_until, try_poll_until};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sandhost");

/// A free loopback port for a serve to take: bound, then released.
///
/// Not one the kernel picks (`:0`): those come from the ephemeral range that every outgoing
/// connection also draws from, so one of the tests' own client connections could take it before
/// the serve binds it. Below that range, from a base of this test process's own, each port is
/// handed out once per process, and only one test binary runs at a time.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1_000));
    let base = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(low + (base.wrapping_add(n)) % span).unwrap();
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local addr");
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// How to start a serve.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// `SANDHOST_TOKEN`.
    pub token: Option<String>,
    /// Extra environment, e.g. `SANDHOST_MAX_SANDBOXES`.
    pub env: Vec<(String, String)>,
    /// Use this state dir instead of a fresh one.
    pub state_dir: Option<std::path::PathBuf>,
    /// Variables removed after the harness's own and `env` are set (`SANDHOST_CGROUP_PARENT`:
    /// leave the parent to the agent).
    pub env_remove: Vec<String>,
    /// Cgroup directories the serve starts in, as systemd starts a service's process in its
    /// cgroup: it is spawned through `sh`, which writes its own pid to each one's `cgroup.procs`
    /// and execs the serve (the same pid), exporting `SYSTEMD_EXEC_PID` as systemd does when
    /// `INVOCATION_ID` is set.
    pub cgroups: Vec<std::path::PathBuf>,
}

/// What `sh` runs for [`ServeOptions::cgroups`]: `$0` is the serve's binary, `$@` its arguments.
const JOIN_CGROUPS_AND_EXEC: &str = r#"for dir in $SANDHOST_TEST_CGROUPS; do
    echo $$ > "$dir/cgroup.procs" || exit 97
done
unset SANDHOST_TEST_CGROUPS
if [ -n "$INVOCATION_ID" ]; then export SYSTEMD_EXEC_PID=$$; fi
exec "$0" "$@""#;

/// A running `sandhost serve`. Dropping it stops the serve with `FORCE_STOP` semantics (SIGTERM: every
/// sandbox is stopped at once), and SIGKILLs it if it does not exit within the hang guard.
#[derive(Debug)]
pub struct Serve {
    child: Option<Child>,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// The token, if any.
    pub token: Option<String>,
    /// The state dir (removed on drop when it is ours).
    pub state_dir: std::path::PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// Where the serve's log (its stderr) goes: a passing test prints nothing; a failing one prints
    /// the log's tail when the serve is dropped.
    log: tempfile::NamedTempFile,
}

impl ServeOptions {
    /// The defaults, on the runtime backend named `runtime` (`process`, `gvisor`).
    pub fn on(runtime: &str) -> Self {
        Self { env: vec![("SANDHOST_RUNTIME".into(), runtime.into())], ..Self::default() }
    }
}

impl Serve {
    /// Starts a serve without auth on a fresh state dir, on the runtime backend named `runtime`.
    pub fn start_on(runtime: &str) -> Self {
        Self::start_with(ServeOptions::on(runtime))
    }

    /// Starts a serve without auth on a fresh state dir and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(ServeOptions::default())
    }

    /// Starts a serve as told and waits until `/health/live` answers.
    pub fn start_with(options: ServeOptions) -> Self {
        let mut serve = Self::spawn(options);
        serve.wait_live();
        serve
    }

    /// Spawns a serve without waiting for it.
    pub fn spawn(options: ServeOptions) -> Self {
        let (temp, state_dir) = match options.state_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("temp state dir");
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let grpc = free_addr();
        let http = free_addr();
        let log = tempfile::NamedTempFile::new().expect("serve log file");
        let mut command = if options.cgroups.is_empty() {
            Command::new(BIN)
        } else {
            let dirs: Vec<String> =
                options.cgroups.iter().map(|d| d.to_string_lossy().into_owned()).collect();
            assert!(dirs.iter().all(|d| !d.contains(char::is_whitespace)), "{dirs:?}");
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(JOIN_CGROUPS_AND_EXEC).arg(BIN).env("SANDHOST_TEST_CGROUPS", dirs.join(" "));
            sh
        };
        command
            .arg("serve")
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--state-dir")
            .arg(&state_dir)
            .env_remove("SANDHOST_TOKEN")
            .env_remove("SHUTDOWN_DRAIN_TIMEOUT")
            .env("FORCE_STOP", "true")
            .env("FORCE_SHUTDOWN_TIMEOUT", "20s")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("serve log file"));
        // A cgroup parent of its own (unless the test names one), so what it leaves is attributable.
        command.env("SANDHOST_CGROUP_PARENT", cgroup_parent_for(&state_dir));
        // Not a systemd service, even when the tests run in one (unless the test says so).
        command.env_remove("INVOCATION_ID").env_remove("SYSTEMD_EXEC_PID");
        if let Some(token) = &options.token {
            command.env("SANDHOST_TOKEN", token);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        for key in &options.env_remove {
            command.env_remove(key);
        }
        // A process group of its own, led by the serve, as a shell gives a foreground job: a
        // terminal's Ctrl-C goes to the whole group (see `signal_group`).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("spawn sandhost serve");
        Self { child: Some(child), grpc, http, token: options.token, state_dir, _temp: temp, log }
    }

    /// Waits until `/health/live` answers 200 (or panics if serve exits or the hang guard passes).
    pub fn wait_live(&mut self) {
        poll_until(
            "serve to answer /health/live",
            HANG_GUARD,
            || {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                    let holders = holders_of(&self.state_dir.join("lock"));
                    panic!(
                        "sandhost serve exited early: {status} (the state dir's lock is held by {holders:?})"
                    );
                }
                self.http_get("/health/live")
            },
            |answer| matches!(answer, Some((200, _))),
        );
    }

    /// The gRPC URL for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `GET path` on the HTTP server: `(status, body)`, or `None` if it cannot connect.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http, path)
    }

    /// Runs a client subcommand against this serve (with its token, if any).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command.args(args).env("SANDHOST_ADDR", self.url()).env_remove("SANDHOST_TOKEN").stdin(Stdio::null());
        if let Some(token) = &self.token {
            command.env("SANDHOST_TOKEN", token);
        }
        run_bounded(command)
    }

    /// Starts a client subcommand that keeps running (`logs -f`), its stdout read line by line as
    /// it comes (its stderr goes to the test's); killed when dropped.
    pub fn spawn_cli(&self, args: &[&str]) -> CliChild {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("SANDHOST_ADDR", self.url())
            .env_remove("SANDHOST_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = &self.token {
            command.env("SANDHOST_TOKEN", token);
        }
        let mut child = command.spawn().expect("spawn the CLI");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        CliChild { child, lines }
    }

    /// A sandbox client with this serve's token.
    pub async fn sandboxes(&self) -> SandboxServiceClient<InterceptedService<Channel, Bearer>> {
        SandboxServiceClient::with_interceptor(self.channel().await, Bearer(self.token.clone()))
    }

    /// A node client with this serve's token.
    pub async fn nodes(&self) -> NodeServiceClient<InterceptedService<Channel, Bearer>> {
        NodeServiceClient::with_interceptor(self.channel().await, Bearer(self.token.clone()))
    }

    /// A channel to the gRPC server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect to serve")
    }

    /// SIGTERM, then wait for the exit (SIGKILL after the hang guard). Returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit()
    }

    /// Sends `signal` to the serve process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            self::signal(child, signal);
        }
    }

    /// Sends `signal` to the serve's whole process group, as a terminal's Ctrl-C does.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let group = nix::unistd::Pid::from_raw(-i32::try_from(child.id()).expect("pid"));
            nix::sys::signal::kill(group, signal).expect("signal the process group");
        }
    }

    /// The serve's process id (its process group's id too).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The sandboxes' processes of this serve: those in a cgroup under its cgroup parent, or with
    /// its state dir on their command line or a file under it open, the serve aside: a sandbox's
    /// `sandhost-init` (process: the sandbox's processes die with it, its pid 1), or runsc's gofer
    /// and sandbox (gvisor). Empty once every sandbox is gone.
    pub fn leftover_processes(&self) -> Vec<String> {
        let needle = self.state_dir.to_string_lossy().into_owned();
        let mut found = crate::common::processes_naming(&needle);
        found.extend(crate::common::processes_in_cgroups_under(&cgroup_parent_for(&self.state_dir)));
        found.sort();
        found.dedup();
        found
            .into_iter()
            // A sandbox's init (process) or runsc's processes (gvisor); not the serve itself.
            .filter(|(_, cmdline)| !cmdline.contains(" serve "))
            .map(|(pid, cmdline)| format!("{pid}: {}", cmdline.trim()))
            .collect()
    }

    /// SIGKILL: the serve dies at once, leaving its sandboxes for the next one.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the serve to exit on its own (it was refused, say), returning its output status.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        match try_poll_until(HANG_GUARD, || child.try_wait().expect("try_wait"), Option::is_some) {
            Ok(status) => status.and_then(|s| s.code()),
            Err(_still_running) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sandhost serve did not exit within the hang guard");
            }
        }
    }
}

impl Serve {
    /// What the serve has logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// How many lines of a serve's log a failing test prints.
const LOG_TAIL_LINES: usize = 200;

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- the serve on {} logged (last {} lines):\n{}",
                self.grpc,
                tail.len(),
                tail.join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            // FORCE_STOP=true: SIGTERM stops every sandbox at once, then serve exits.
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            if try_poll_until(HANG_GUARD, || child.try_wait(), |exited| matches!(exited, Ok(Some(_))))
                .is_err()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Whatever is left of its sandboxes (a test that failed after SIGKILLing its serve, say):
        // killed, with their cgroups, so that a failing test leaks nothing either.
        crate::common::purge(&cgroup_parent_for(&self.state_dir), &self.state_dir);
    }
}

/// A client subcommand left running ([`Serve::spawn_cli`]); killed when dropped.
#[derive(Debug)]
pub struct CliChild {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CliChild {
    /// The next line of its stdout, `None` once it is closed; panics after the hang guard.
    pub fn next_line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(HANG_GUARD) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from the CLI within the hang guard")
            }
        }
    }

    /// The rest of its stdout's lines and its exit code, once it exits (within the hang guard).
    pub fn finish(mut self) -> (Vec<String>, Option<i32>) {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line() {
            rest.push(line);
        }
        let status = try_poll_until(HANG_GUARD, || self.child.try_wait().expect("try_wait"), Option::is_some)
            .unwrap_or_else(|_| panic!("the CLI did not exit within the hang guard"));
        (rest, status.and_then(|s| s.code()))
    }
}

impl Drop for CliChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cgroup parent of the serve on `state_dir`: derived from the dir, so a serve restarted on the
/// same dir uses the same one.
pub fn cgroup_parent_for(state_dir: &std::path::Path) -> String {
    let name: String = state_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("api-e2e-{name}")
}

/// The sandbox cgroups left under `parent` in every hierarchy (v1 controllers and v2).
pub fn leftover_cgroups(parent: &str) -> Vec<std::path::PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut roots: Vec<std::path::PathBuf> = hierarchies.filter_map(Result::ok).map(|e| e.path()).collect();
    roots.push("/sys/fs/cgroup".into());
    roots
        .iter()
        .filter_map(|root| std::fs::read_dir(root.join(parent)).ok())
        .flat_map(|dir| {
            dir.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect::<Vec<_>>()
        })
        .collect()
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let _ = nix::sys::signal::kill(pid, signal);
}

/// Runs a command to its end, killing it after the hang guard. Its output is read while it runs
/// (in a thread): a command that writes more than a pipe holds must not block on it.
pub fn run_bounded(mut command: Command) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn the CLI");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(HANG_GUARD) {
        Ok(output) => output.expect("output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let stderr = output.recv().ok().and_then(Result::ok).map(|o| o.stderr).unwrap_or_default();
            panic!("the CLI hung: {command:?}\nstderr: {}", String::from_utf8_lossy(&stderr));
        }
    }
}

/// stdout as text, trimmed.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the CLI succeeded and returns its stdout.
pub fn ok(output: &Output) -> String {
    assert!(output.status.success(), "CLI failed: {:?}\nstderr: {}", output.status, stderr(output));
    stdout(output)
}

/// A minimal HTTP/1.1 GET: `(status, body)`, or `None` if it cannot connect.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        }
        Ok(request)
    }
}

/// The processes with `file` open (pid and command line), for a failure's message.
fn holders_of(file: &std::path::Path) -> Vec<String> {
    let mut holders = Vec::new();
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file)) {
            let cmdline = std::fs::read(proc_entry.path().join("cmdline")).unwrap_or_default();
            let status = std::fs::read_to_string(proc_entry.path().join("status")).unwrap_or_default();
            let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or_default().to_owned();
            holders.push(format!(
                "{} {:?} {state}",
                proc_entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    holders
}
