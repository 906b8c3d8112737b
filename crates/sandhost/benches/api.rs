//! The API's overhead and the agent's memory, against an anchor measured in the same run.
//!
//! 1. The anchor: the `process` runtime's own start of `true`, called directly (no gRPC, no manager),
//!    `CONCURRENCY` at a time.
//! 2. The same starts as `SandboxService.Create` over gRPC against a real `sandhost serve`, with the
//!    same concurrency: p50 and p99 latency, creates per second, and the ratio to the anchor.
//! 3. Memory: the serve's RSS idle, and with `SANDHOST_BENCH_SANDBOXES` (default 1000) live
//!    `sleep` sandboxes: the agent's overhead per sandbox.
//!
//! 4. A burst: `SANDHOST_BENCH_BURST` (default 256; 64 on gvisor) Creates of `sleep` sent at once,
//!    against a serve with the default start parallelism, and (the anchor) one that runs every
//!    admitted start at once: p50, p99 and the longest Create, the wall time, and how many failed.
//!    On each backend (gvisor when runsc is installed).
//!
//! Run as root: `cargo bench -p sandhost --bench api`. Knobs: `SANDHOST_BENCH_CREATES` (default 400),
//! `SANDHOST_BENCH_CONCURRENCY` (default 8), `SANDHOST_BENCH_SANDBOXES` (default 1000),
//! `SANDHOST_BENCH_BURST`.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandhost_proto::v1 as pb;
use sandhost_proto::v1::sandbox_service_client::SandboxServiceClient;
use sandhost_runtime::process::{ProcessConfig, ProcessRuntime};
use sandhost_runtime::{LifecycleId, Runtime, SandboxId, SandboxKey, SandboxSpec};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_sandhost");
/// The anchor runtime's cgroup parent (removed at the end).
const ANCHOR_CGROUP_PARENT: &str = "sandhost-bench-anchor";

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p50, p99 and the mean of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

/// Runs `total` calls of `op`, `concurrency` at a time; returns each call's latency and the wall time.
async fn drive<F, Fut>(total: usize, concurrency: usize, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = Arc::clone(&op);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    // Relaxed: a plain ticket counter; nothing else is published through it.
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    op(i).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    (all, started.elapsed())
}

fn spec(index: usize, argv: &[&str]) -> SandboxSpec {
    SandboxSpec {
        stop_grace: Duration::from_secs(1),
        ..SandboxSpec::new(
            SandboxKey {
                id: SandboxId::parse(format!("anchor-{index}")).unwrap(),
                lifecycle: LifecycleId::parse(format!("{:x}", index + 1)).unwrap(),
            },
            argv.iter().map(|a| (*a).to_owned()).collect(),
        )
    }
}

/// The runtime's own start latency (the anchor). As in serve, each sandbox's exit is awaited and
/// cleaned up in the background while the next starts run, so both sides carry the same load.
async fn runtime_starts(
    runtime: &Arc<ProcessRuntime>,
    round: usize,
    total: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let timed = Arc::clone(runtime);
    let cleanups = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let pending = Arc::clone(&cleanups);
    let result = drive(total, concurrency, move |i| {
        let runtime = Arc::clone(&timed);
        let pending = Arc::clone(&pending);
        async move {
            let spec = spec(round * 1_000_000 + i, &["true"]);
            runtime.start(&spec).await.expect("runtime start");
            let background = Arc::clone(&runtime);
            let cleanup = tokio::spawn(async move {
                let _ = background.wait(&spec.key).await;
                let _ = background.cleanup(&spec.key).await;
                let _ = background.forget(&spec.key).await;
            });
            pending.lock().await.push(cleanup);
        }
    })
    .await;
    for cleanup in cleanups.lock().await.drain(..) {
        let _ = cleanup.await;
    }
    result
}

struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    /// A serve with its state in `state`, the process backend and the default settings.
    fn start(state: &std::path::Path) -> Self {
        Self::with(state, &[])
    }

    /// A serve with its state in `state` and these environment variables.
    fn with(state: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
            .arg("--state-dir")
            .arg(state)
            .env_remove("SANDHOST_START_PARALLELISM")
            // A thousand live sandboxes of the default size are more than this host's memory.
            .env("SANDHOST_MEMORY_OVERCOMMIT", "1000")
            .envs(env.iter().copied())
            .env("FORCE_STOP", "true")
            .env("RUST_LOG", "error")
            .env_remove("SANDHOST_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let started = Instant::now();
        while std::net::TcpStream::connect(http).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "serve did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr: format!("http://{grpc}") }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

async fn grpc_creates(
    client: &SandboxServiceClient<Channel>,
    round: usize,
    total: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let client = client.clone();
    drive(total, concurrency, move |i| {
        let mut client = client.clone();
        async move {
            let request = pb::CreateRequest {
                id: format!("api-{round}-{i}"),
                argv: vec!["true".into()],
                ..Default::default()
            };
            client.create(request).await.expect("create");
        }
    })
    .await
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench api: needs root (real sandboxes); skipped");
        return;
    }
    let creates = knob("SANDHOST_BENCH_CREATES", 400);
    let concurrency = knob("SANDHOST_BENCH_CONCURRENCY", 8);
    let live = knob("SANDHOST_BENCH_SANDBOXES", 1000);
    let state = tempfile::tempdir().unwrap();

    let mut config = ProcessConfig::new(state.path().join("anchor-runtime"), BIN);
    config.cgroup_parent = ANCHOR_CGROUP_PARENT.into();
    let runtime = Arc::new(ProcessRuntime::open(config).expect("open the process runtime"));
    let serve = Serve::start(&state.path().join("serve"));
    let channel = Channel::from_shared(serve.addr.clone()).unwrap().connect().await.unwrap();
    let client = SandboxServiceClient::new(channel);
    let idle_kib = serve.rss_kib();

    // Warm both paths (page cache, cgroup hierarchy) off the clock.
    let _ = runtime_starts(&runtime, 0, concurrency, concurrency).await;
    let _ = grpc_creates(&client, 0, concurrency, concurrency).await;

    println!("starts of `true` (the runtime's own, the anchor) against gRPC Creates of `true`:");
    for (round, concurrency) in [(1, 1), (2, concurrency)] {
        let (mut anchor, anchor_wall) = runtime_starts(&runtime, round, creates, concurrency).await;
        let (anchor_p50, anchor_p99) = percentiles(&mut anchor);
        let (mut api, api_wall) = grpc_creates(&client, round, creates, concurrency).await;
        let (api_p50, api_p99) = percentiles(&mut api);
        println!("  {creates} at concurrency {concurrency}:");
        println!(
            "    runtime start (anchor): p50 {anchor_p50:.2} ms  p99 {anchor_p99:.2} ms  {:.0} starts/s",
            creates as f64 / anchor_wall.as_secs_f64()
        );
        println!(
            "    gRPC Create:            p50 {api_p50:.2} ms  p99 {api_p99:.2} ms  {:.0} creates/s",
            creates as f64 / api_wall.as_secs_f64()
        );
        println!(
            "    ratio (Create / runtime start): p50 {:.2}x  p99 {:.2}x",
            api_p50 / anchor_p50,
            api_p99 / anchor_p99
        );
    }

    // Memory with `live` sleeping sandboxes.
    let idle_before_live = serve.rss_kib();
    let mut creator = client.clone();
    for i in 0..live {
        let request = pb::CreateRequest {
            id: format!("sleep-{i}"),
            argv: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        creator.create(request).await.expect("create a sleeper");
    }
    let loaded_kib = serve.rss_kib();
    println!("serve RSS: idle {idle_kib} KiB (after the creates: {idle_before_live} KiB)");
    println!(
        "serve RSS with {live} live sandboxes: {loaded_kib} KiB: {:.1} KiB per sandbox",
        loaded_kib.saturating_sub(idle_before_live) as f64 / live.max(1) as f64
    );
    drop(serve);
    drop(runtime);
    burst(state.path()).await;
    // The anchor's (now empty) cgroup parent.
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in hierarchies.filter_map(Result::ok) {
            let _ = std::fs::remove_dir(hierarchy.path().join(ANCHOR_CGROUP_PARENT));
        }
    }
    let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(ANCHOR_CGROUP_PARENT));
}

/// `total` Creates of `sleep` sent at once; each one's latency, the wall time, and the failures.
async fn burst_once(serve: &Serve, total: usize) -> (Vec<Duration>, Duration, usize) {
    let channel = Channel::from_shared(serve.addr.clone()).unwrap().connect().await.unwrap();
    let client = SandboxServiceClient::new(channel);
    let started = Instant::now();
    let creates: Vec<_> = (0..total)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = pb::CreateRequest {
                    id: format!("burst-{i}"),
                    argv: vec!["sleep".into(), "1000".into()],
                    ..Default::default()
                };
                let t = Instant::now();
                client.create(request).await.map(|_| t.elapsed())
            })
        })
        .collect();
    let (mut latencies, mut failures) = (Vec::new(), Vec::new());
    for create in creates {
        match create.await.unwrap() {
            Ok(latency) => latencies.push(latency),
            Err(status) => failures.push(status),
        }
    }
    if let Some(first) = failures.first() {
        println!("      first failure: {:?}: {}", first.code(), first.message());
    }
    (latencies, started.elapsed(), failures.len())
}

/// The burst on each backend, with the default start parallelism and with every start at once.
async fn burst(dir: &std::path::Path) {
    let gvisor = Command::new("runsc").arg("--version").output().is_ok_and(|o| o.status.success());
    let backends: &[(&str, usize)] =
        if gvisor { &[("process", 256), ("gvisor", 64)] } else { &[("process", 256)] };
    println!("a burst of Creates of `sleep` sent at once:");
    for &(backend, default_total) in backends {
        let total = knob("SANDHOST_BENCH_BURST", default_total);
        let everything = total.to_string();
        let settings: [(&str, Option<&str>); 2] =
            [("every start at once (anchor)", Some(&everything)), ("default start parallelism", None)];
        for (round, (name, parallelism)) in settings.into_iter().enumerate() {
            let mut env = vec![("SANDHOST_RUNTIME", backend), ("SANDHOST_MAX_ADMITTED_STARTS", "100000")];
            env.extend(parallelism.map(|p| ("SANDHOST_START_PARALLELISM", p)));
            let serve = Serve::with(&dir.join(format!("burst-{backend}-{round}")), &env);
            let (mut latencies, wall, failed) = burst_once(&serve, total).await;
            let longest = latencies.iter().max().copied().unwrap_or_default();
            let (p50, p99) = if latencies.is_empty() { (0.0, 0.0) } else { percentiles(&mut latencies) };
            println!(
                "  {backend}, {total} at once, {name}: p50 {p50:.0} ms  p99 {p99:.0} ms  longest {:.0} ms  \
                 all done in {:.2} s  failed {failed}",
                longest.as_secs_f64() * 1000.0,
                wall.as_secs_f64()
            );
        }
    }
}
