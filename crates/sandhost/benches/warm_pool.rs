//! The warm pool against cold starts, side by side in one run, over gRPC to real serves (process
//! backend):
//!
//! 1. `SandboxService.Create` of `true`, one at a time, against a serve with a warm member ready
//!    (`--warm-pool host=8`) and, alternating with it, against a serve without a pool: p50 and p99
//!    of each, and the ratio. Between two Creates the bench waits until the pool is full again
//!    (and the exits are handled), so that each warm Create finds a member and neither side runs
//!    while the other's background work does.
//! 2. A burst: `SANDHOST_BENCH_BURST` (default 64) Creates of `sleep` sent at once, against a serve
//!    with a full pool of the same size and against one without: p50, p99, the longest Create and
//!    the wall time, and how many the pool served.
//!
//! 3. The anchor, without gRPC or the manager: the `process` runtime's own `start` of `true` from
//!    a claimed member against a cold one, alternating, the pool refilled (and settled) between.
//!
//! Every Create writes durable records (the node's and the runtime's: a write, an `fsync` and a
//! rename each), so on a disk the figures include its `fsync` latency: `SANDHOST_BENCH_DIR` puts
//! the state dirs elsewhere (a tmpfs such as `/dev/shm` shows the cost without the disk).
//!
//! Run as root: `cargo bench -p sandhost --bench warm_pool`. Knobs: `SANDHOST_BENCH_CREATES`
//! (default 200), `SANDHOST_BENCH_BURST` (default 64), `SANDHOST_BENCH_DIR` (default the system's
//! temporary directory).
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandhost_proto::v1 as pb;
use sandhost_proto::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_sandhost");

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

struct Serve {
    child: Child,
    grpc: String,
    http: SocketAddr,
}

impl Serve {
    /// A serve with its state in `state` (and a cgroup parent named after it) and this environment.
    fn with(state: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let parent =
            format!("sandhost-bench-{}-{}", std::process::id(), state.file_name().unwrap().to_string_lossy());
        let grpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
            .arg("--state-dir")
            .arg(state)
            .env_remove("SANDHOST_START_PARALLELISM")
            .env_remove("SANDHOST_WARM_POOL")
            .env("SANDHOST_MEMORY_OVERCOMMIT", "1000")
            .env("SANDHOST_MAX_ADMITTED_STARTS", "100000")
            .env("SANDHOST_CGROUP_PARENT", &parent)
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
        Self { child, grpc: format!("http://{grpc}"), http }
    }

    async fn client(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap())
    }

    /// `sandhost_warm_pool_<name>{template="host"}` from `/metrics` (0 without a pool).
    fn pool_metric(&self, name: &str) -> u64 {
        let mut stream = std::net::TcpStream::connect(self.http).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        let prefix = format!("sandhost_warm_pool_{name}{{template=\"host\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the pool holds `ready` members (a bench may poll; it is a client).
    async fn wait_pool(&self, ready: u64) {
        let started = Instant::now();
        while self.pool_metric("ready") < ready {
            assert!(started.elapsed() < Duration::from_secs(120), "the pool did not fill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

async fn create(client: &mut SandboxServiceClient<Channel>, id: String, argv: &[&str]) -> Duration {
    let request =
        pb::CreateRequest { id, argv: argv.iter().map(|a| (*a).to_owned()).collect(), ..Default::default() };
    let t = Instant::now();
    client.create(request).await.expect("create");
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench warm_pool: needs root (real sandboxes); skipped");
        return;
    }
    let creates = knob("SANDHOST_BENCH_CREATES", 200);
    let burst = knob("SANDHOST_BENCH_BURST", 64);
    let state = match std::env::var_os("SANDHOST_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("state dirs in {}", state.path().display());

    {
        let warm = Serve::with(&state.path().join("warm"), &[("SANDHOST_WARM_POOL", "host=8")]);
        let cold = Serve::with(&state.path().join("cold"), &[]);
        let (mut warm_client, mut cold_client) = (warm.client().await, cold.client().await);
        warm.wait_pool(8).await;
        // Off the clock: page cache, cgroup hierarchy, connections.
        for i in 0..8 {
            create(&mut cold_client, format!("prime-{i}"), &["true"]).await;
        }
        let (mut warm_samples, mut cold_samples) = (Vec::new(), Vec::new());
        let claims_before = warm.pool_metric("claims_total");
        for i in 0..creates {
            warm.wait_pool(8).await;
            tokio::time::sleep(Duration::from_millis(20)).await; // the last exits handled
            warm_samples.push(create(&mut warm_client, format!("w-{i}"), &["true"]).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
            cold_samples.push(create(&mut cold_client, format!("c-{i}"), &["true"]).await);
        }
        let claims = warm.pool_metric("claims_total") - claims_before;
        let (warm_p50, warm_p99) = percentiles(&mut warm_samples);
        let (cold_p50, cold_p99) = percentiles(&mut cold_samples);
        println!("gRPC Create of `true`, one at a time, {creates} each (alternating):");
        println!(
            "  warm member (host=8): p50 {warm_p50:.3} ms  p99 {warm_p99:.3} ms  ({claims} served by the pool)"
        );
        println!("  cold start:           p50 {cold_p50:.3} ms  p99 {cold_p99:.3} ms");
        println!("  cold / warm: p50 {:.1}x  p99 {:.1}x", cold_p50 / warm_p50, cold_p99 / warm_p99);
    }

    println!("a burst of {burst} Creates of `sleep` sent at once:");
    for (name, pool) in [("pool of the same size", Some(format!("host={burst}"))), ("no pool", None)] {
        let env: Vec<(&str, &str)> = pool.iter().map(|p| ("SANDHOST_WARM_POOL", p.as_str())).collect();
        let serve = Serve::with(&state.path().join(format!("burst-{}", pool.is_some())), &env);
        if pool.is_some() {
            serve.wait_pool(burst as u64).await;
        }
        let client = serve.client().await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..burst)
            .map(|i| {
                let mut client = client.clone();
                tokio::spawn(
                    async move { create(&mut client, format!("burst-{i}"), &["sleep", "1000"]).await },
                )
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.push(task.await.unwrap());
        }
        let wall = started.elapsed();
        let longest = latencies.iter().max().copied().unwrap_or_default();
        let (p50, p99) = percentiles(&mut latencies);
        println!(
            "  {name}: p50 {p50:.1} ms  p99 {p99:.1} ms  longest {:.1} ms  all done in {:.3} s  served by the pool {}",
            longest.as_secs_f64() * 1000.0,
            wall.as_secs_f64(),
            serve.pool_metric("claims_total")
        );
    }
    runtime_anchor(state.path(), creates).await;
}

/// The runtime's own start of `true` from a member against a cold one, alternating.
async fn runtime_anchor(dir: &std::path::Path, total: usize) {
    use sandhost_runtime::process::{ProcessConfig, ProcessRuntime, WarmTemplate};
    use sandhost_runtime::{LifecycleId, Runtime, SandboxId, SandboxKey, SandboxSpec, Template};
    let parent = format!("sandhost-bench-{}-runtime", std::process::id());
    let mut config = ProcessConfig::new(dir.join("runtime"), BIN);
    config.cgroup_parent = parent.as_str().into();
    config.warm_pool = vec![WarmTemplate { name: "host".into(), template: Template::Host, size: 1 }];
    let runtime = ProcessRuntime::open(config).expect("open the process runtime");
    let spec = |i: usize| {
        SandboxSpec::new(
            SandboxKey {
                id: SandboxId::parse(format!("rt-{i}")).unwrap(),
                lifecycle: LifecycleId::parse(format!("{:x}", i + 1)).unwrap(),
            },
            vec!["true".into()],
        )
    };
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for i in 0..total * 2 {
        let is_warm = i % 2 == 0;
        runtime.set_warm_pool_active(is_warm);
        runtime.settle().await;
        let spec = spec(i);
        let t = Instant::now();
        let started = runtime.start(&spec).await.expect("start");
        let elapsed = t.elapsed();
        assert_eq!(started.warm, is_warm);
        if is_warm {
            warm.push(elapsed);
        } else {
            cold.push(elapsed);
        }
        let _ = runtime.wait(&spec.key).await;
        let _ = runtime.forget(&spec.key).await;
    }
    runtime.set_warm_pool_active(false);
    runtime.settle().await;
    let _ = runtime.close().await;
    let (warm_p50, warm_p99) = percentiles(&mut warm);
    let (cold_p50, cold_p99) = percentiles(&mut cold);
    println!("the runtime's own start of `true` (no gRPC, no manager), {total} each (alternating):");
    println!("  from a member: p50 {warm_p50:.3} ms  p99 {warm_p99:.3} ms");
    println!("  cold:          p50 {cold_p50:.3} ms  p99 {cold_p99:.3} ms");
    println!("  cold / warm: p50 {:.1}x  p99 {:.1}x", cold_p50 / warm_p50, cold_p99 / warm_p99);
}
