//! End to end, what operators' tools see of a real `sandhost serve` (process backend, as root):
//! sd_notify on a `NOTIFY_SOCKET` this test listens on (READY, STATUS, STOPPING, the timeout
//! extension, the watchdog), gRPC health per service over real gRPC, and `/metrics` as
//! `promtool check metrics` and an OpenMetrics scraper read it. Every serve is stopped (and its
//! sandboxes removed) even when a test fails.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{HANG_GUARD, Serve, ServeOptions, ok};
use sandhost_proto::v1 as pb;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A `NOTIFY_SOCKET` to listen on, as systemd's manager does.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Self { socket, path, _dir: dir, seen: Vec::new() }
    }

    /// The first message, among those received so far and those still to come, with a line for
    /// which `wanted` holds (order between messages is not asserted: STATUS and STOPPING, say,
    /// come in separate datagrams).
    fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.until_nth(what, 1, wanted)
    }

    /// As [`NotifySocket::until`], the `nth` such message.
    fn until_nth(&mut self, what: &str, nth: usize, wanted: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(found) = self.seen.iter().filter(|m| m.lines().any(&wanted)).nth(nth - 1) {
                return found.clone();
            }
            assert!(
                started.elapsed() < HANG_GUARD,
                "no {what} within the hang guard; seen: {:#?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

/// The value of `KEY=` in a message.
fn field<'m>(message: &'m str, key: &str) -> Option<&'m str> {
    message.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn sd_notify_ready_status_stopping_and_extensions_on_sigterm() {
    common::require_root();
    let mut notify = NotifySocket::bind();
    let mut serve = Serve::start_with(ServeOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            ("FORCE_STOP".into(), "false".into()),
            ("SHUTDOWN_DRAIN_TIMEOUT".into(), "10m".into()),
        ],
        ..ServeOptions::default()
    });
    let ready = notify.until("READY=1", |l| l == "READY=1");
    assert_eq!(field(&ready, "STATUS"), Some("READY: 0 live, 0 starting"), "{ready}");

    ok(&serve.cli(&["create", "--id", "held", "--", "sleep", "1000"]));
    notify.until("a STATUS with the live sandbox", |l| l == "STATUS=READY: 1 live, 0 starting");

    serve.signal(nix::sys::signal::Signal::SIGTERM);
    notify.until("STOPPING=1", |l| l == "STOPPING=1");
    let extend = notify.until("EXTEND_TIMEOUT_USEC", |l| l.starts_with("EXTEND_TIMEOUT_USEC="));
    let usec: u64 = field(&extend, "EXTEND_TIMEOUT_USEC").unwrap().parse().unwrap();
    // Within its 10 min deadline, the drain asks for what is left of it and what follows it.
    assert!(usec > 9 * 60 * 1_000_000, "{extend}");
    notify.until("a DRAINING status", |l| {
        l.starts_with("STATUS=DRAINING: 1 live") && l.ends_with("(shutting down)")
    });

    // The sandbox leaves; the drain ends; serve exits cleanly.
    ok(&serve.cli(&["kill", "held", "--now"]));
    notify.until("DRAINED", |l| l.starts_with("STATUS=DRAINED: 0 live"));
    assert_eq!(serve.wait_exit(), Some(0));
    let readies = notify.seen.iter().filter(|m| m.lines().any(|l| l == "READY=1")).count();
    assert_eq!(readies, 1, "READY=1 is sent once: {:#?}", notify.seen);
}

/// A serve started through `sh`, so that `WATCHDOG_PID` can name it (systemd sets it to the main
/// pid, and sd_notify ignores a watchdog meant for another process). Killed on drop.
struct ShellServe {
    child: Child,
    state: tempfile::TempDir,
    prefix: String,
}

impl Drop for ShellServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::purge(&self.prefix, self.state.path());
    }
}

#[test]
fn the_watchdog_is_fed_when_systemd_sets_one() {
    common::require_root();
    let mut notify = NotifySocket::bind();
    let state = tempfile::tempdir().unwrap();
    let prefix = format!("operate-watchdog-{}", std::process::id());
    let child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(e2e::BIN)
        .arg("serve")
        .args(["--listen", &e2e::free_addr().to_string(), "--http-listen", &e2e::free_addr().to_string()])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--cgroup-parent", &prefix])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = ShellServe { child, state, prefix };
    notify.until("READY=1", |l| l == "READY=1");
    notify.until_nth("two WATCHDOG=1", 2, |l| l == "WATCHDOG=1");
}

async fn check(serve: &Serve, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(serve.channel().await);
    health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_admission_for_the_server_and_serving_for_the_services_while_draining() {
    common::require_root();
    let serve = Serve::start();
    let mut watch = HealthClient::new(serve.channel().await)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    ok(&serve.cli(&["create", "--id", "held", "--", "sleep", "1000"]));
    let mut nodes = serve.nodes().await;
    nodes.drain(pb::DrainRequest::default()).await.unwrap();
    assert_eq!(check(&serve, "").await, ServingStatus::NotServing);
    for service in ["sandhost.v1.SandboxService", "sandhost.v1.NodeService"] {
        assert_eq!(check(&serve, service).await, ServingStatus::Serving, "{service} serves while draining");
    }
    // Changes that keep admission closed (counts, FORCING, DRAINED) send nothing more on the watch.
    let refused = serve.cli(&["create", "--", "true"]);
    assert_eq!(refused.status.code(), Some(75), "a draining node refuses, retryably");
    nodes.force_stop(pb::ForceStopRequest::default()).await.unwrap();
    let _ = serve.cli(&["wait", "held"]);
    nodes.undrain(pb::UndrainRequest::default()).await.unwrap();

    let mut after_serving = Vec::new();
    loop {
        let status = watch.message().await.unwrap().unwrap().status();
        after_serving.push(status);
        if status == ServingStatus::Serving {
            break;
        }
    }
    assert_eq!(after_serving, [ServingStatus::NotServing, ServingStatus::Serving], "changes only");
}

/// `GET path` with an `Accept` header: `(content type, body)`.
fn get_accepting(addr: std::net::SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    (content_type, body.to_owned())
}

/// Runs `promtool check metrics` on `body`. Without promtool the check is skipped, except in CI
/// (`CI=true`), where `.ci/run` installs it and its absence is a failure.
fn promtool_check(body: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is missing ({error}); .ci/run installs it (Debian package prometheus)"
            );
            eprintln!("promtool not installed ({error}): `promtool check metrics` skipped");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the body:\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_openmetrics_is_served_only_when_asked_for() {
    common::require_root();
    let serve = Serve::start_with(ServeOptions {
        // Waits forever for its sandboxes (no SHUTDOWN_DRAIN_TIMEOUT) under a 30 s supervisor.
        env: vec![
            ("SANDHOST_SUPERVISOR_STOP_TIMEOUT".into(), "30s".into()),
            ("FORCE_STOP".into(), "false".into()),
        ],
        ..ServeOptions::default()
    });
    ok(&serve.cli(&["create", "--id", "m", "--", "true"]));
    let _ = serve.cli(&["wait", "m"]);
    let invalid = serve.cli(&["create", "--env", "1BAD=x", "--", "true"]);
    assert!(!invalid.status.success());

    let (content_type, text) = get_accepting(serve.http, "/metrics", "*/*");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    promtool_check(&text);
    for line in [
        "sandhost_sandbox_creates_total{result=\"started\"} 1",
        "sandhost_sandbox_create_rejections_total{reason=\"invalid_argument\"} 1",
        "sandhost_sandbox_exits_total{reason=\"timeout\"} 0",
        "sandhost_grpc_calls_total{service=\"sandhost.v1.SandboxService\",method=\"Create\",code=\"ok\"} 1",
        "sandhost_grpc_calls_total{service=\"sandhost.v1.SandboxService\",method=\"Create\",code=\"invalid_argument\"} 1",
        "sandhost_node_status{status=\"ready\"} 1",
        "sandhost_build_info{version=\"",
        "sandhost_drain_budget_seconds +Inf",
        "sandhost_supervisor_stop_timeout_seconds 30",
        "sandhost_drain_budget_exceeds_supervisor 1",
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // Allocation follows the live sandboxes; a forced drain is counted by outcome, with its stops.
    ok(&serve.cli(&["create", "--id", "held", "--memory", "64M", "--", "sleep", "1000"]));
    let (_, text) = get_accepting(serve.http, "/metrics", "text/plain");
    assert_eq!(metric(&text, "sandhost_allocated_sandboxes"), 1.0, "{text}");
    assert_eq!(metric(&text, "sandhost_allocated_memory_bytes"), f64::from(64u32 << 20), "{text}");
    ok(&serve.cli(&["force-stop"]));
    let _ = serve.cli(&["wait", "held"]);
    let drained = Instant::now();
    let text = loop {
        let (_, text) = get_accepting(serve.http, "/metrics", "text/plain");
        if text.contains("sandhost_drains_total{outcome=\"forced\"} 1") {
            break text;
        }
        assert!(drained.elapsed() < HANG_GUARD, "no forced drain counted:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    promtool_check(&text);
    assert_eq!(
        metric(&text, "sandhost_drain_stopped_sandboxes_total{reason=\"force_stopped\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "sandhost_drain_force_stopped"), 1.0, "the current drain's gauge: {text}");
    assert_eq!(metric(&text, "sandhost_drain_duration_seconds_count"), 1.0, "{text}");
    assert_eq!(metric(&text, "sandhost_allocated_sandboxes"), 0.0, "{text}");
    assert_eq!(metric(&text, "sandhost_allocated_memory_bytes"), 0.0, "{text}");
    ok(&serve.cli(&["undrain"]));

    let (content_type, openmetrics) =
        get_accepting(serve.http, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(openmetrics.contains("# TYPE sandhost_sandbox_creates counter"), "{openmetrics}");
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
}

/// The repository's `deploy/` directory.
fn deploy_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// What a deploy file gives the agent: its drain settings, and the supervisor's stop timeout as
/// the file sets it for the supervisor and as it passes it to the agent.
#[derive(Debug)]
struct DeployBudget {
    env: Vec<(String, String)>,
    supervisor_stop_timeout: Duration,
}

impl DeployBudget {
    fn systemd() -> Self {
        let unit = deploy_file("systemd/sandhost.service");
        let env = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .flat_map(str::split_whitespace)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let timeout = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).unwrap();
        Self { env, supervisor_stop_timeout: sandhost::config::parse_duration(timeout).unwrap() }
    }

    fn kubernetes() -> Self {
        let manifest = deploy_file("kubernetes/daemonset.yaml");
        let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
        let env = lines
            .windows(2)
            .filter_map(|w| Some((w[0].strip_prefix("- name: ")?, w[1].strip_prefix("value: ")?)))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let grace = lines.iter().find_map(|l| l.strip_prefix("terminationGracePeriodSeconds: ")).unwrap();
        Self { env, supervisor_stop_timeout: Duration::from_secs(grace.parse().unwrap()) }
    }

    fn nomad() -> Self {
        let job = deploy_file("nomad/sandhost.nomad.hcl");
        let assignments: Vec<(String, String)> = job
            .lines()
            .filter_map(|l| l.trim().split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let kill_timeout =
            assignments.iter().find(|(k, _)| k == "kill_timeout").map(|(_, v)| v.clone()).unwrap();
        let env = assignments
            .into_iter()
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        Self { env, supervisor_stop_timeout: sandhost::config::parse_duration(&kill_timeout).unwrap() }
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} in {self:?}"))
    }
}

/// The metric's value in a Prometheus text body.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

/// Starts the real agent with a deploy file's drain settings and supervisor timeout: its own
/// budget check must find that the supervisor waits long enough.
#[test]
fn deploy_files_give_the_agent_a_stop_timeout_that_covers_its_drain_budget() {
    common::require_root();
    for (file, budget) in [
        ("systemd", DeployBudget::systemd()),
        ("kubernetes", DeployBudget::kubernetes()),
        ("nomad", DeployBudget::nomad()),
    ] {
        let passed = budget.var("SANDHOST_SUPERVISOR_STOP_TIMEOUT");
        assert_eq!(
            sandhost::config::parse_duration(passed).unwrap(),
            budget.supervisor_stop_timeout,
            "{file}: the agent is told the supervisor's own stop timeout"
        );
        let serve = Serve::start_with(ServeOptions {
            env: ["SHUTDOWN_DRAIN_TIMEOUT", "FORCE_SHUTDOWN_TIMEOUT", "SANDHOST_SUPERVISOR_STOP_TIMEOUT"]
                .iter()
                .map(|name| ((*name).to_owned(), budget.var(name).to_owned()))
                .chain([("FORCE_STOP".to_owned(), "false".to_owned())])
                .collect(),
            ..ServeOptions::default()
        });
        let (_, text) = get_accepting(serve.http, "/metrics", "text/plain");
        assert_eq!(metric(&text, "sandhost_drain_budget_exceeds_supervisor"), 0.0, "{file}: {text}");
        let total = metric(&text, "sandhost_drain_budget_seconds");
        assert!(total.is_finite() && total < budget.supervisor_stop_timeout.as_secs_f64(), "{file}: {total}");
    }
}
