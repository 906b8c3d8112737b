//! The drain's benchmarks (`cargo bench -p sandhost --bench drain`, as root):
//!
//! 1. Latency from the last sandbox exit to DRAINED (event-driven), next to the anchor measured in
//!    the same run: a drain that polls the live count every 5 s, as the origin's does.
//! 2. Forced stop of N = 1, 100, 1000 live real sandboxes (the process runtime): wall time from
//!    ForceStop to DRAINED, and its ratio to N = 1.
//! 3. Admission rejection latency while draining (p50, p99): what a Create costs a draining node.
//!
//! It prints one table per part; BENCHMARKS.md has the figures of a run and this command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sandhost::config::SandboxConfig;
use sandhost::drain::{DrainRequest, NodeStatus};
use sandhost::node::{Node, NodeSettings};
use sandhost::sandbox::{CreateRequest, SandboxInfo};
use sandhost_runtime::fake::FakeRuntime;
use sandhost_runtime::process::{ProcessConfig, ProcessRuntime};
use sandhost_runtime::{Exit, Runtime, SandboxKey};

/// The origin's drain poll interval.
const ORIGIN_POLL: Duration = Duration::from_secs(5);

fn node(runtime: Arc<dyn Runtime>, dir: &std::path::Path, config: SandboxConfig) -> Node {
    let settings = NodeSettings::new(config, Duration::from_secs(120), "bench");
    Node::build(runtime, settings, dir, &mut Registry::default())
}

fn request(argv: &[&str]) -> CreateRequest {
    CreateRequest { argv: argv.iter().map(|a| (*a).to_owned()).collect(), ..CreateRequest::default() }
}

fn key(info: &SandboxInfo) -> SandboxKey {
    SandboxKey { id: info.id.clone(), lifecycle: info.lifecycle.clone() }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Part 1: last exit to DRAINED, event-driven, against a 5 s poll of the same live count.
async fn last_exit_to_drained() {
    const SAMPLES: usize = 200;
    const POLL_SAMPLES: usize = 3;
    let mut event = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = FakeRuntime::new();
        let node = node(Arc::new(fake.clone()), dir.path(), SandboxConfig::default());
        let info = node.create(request(&["sleep", "1000"])).await.expect("create");
        node.drain(DrainRequest::default()).expect("drain");
        let mut status = node.coordinator().watch_status();
        let start = Instant::now();
        fake.exit(&key(&info), Exit::Code(0));
        status.wait_for(|s| *s == NodeStatus::Drained).await.expect("status");
        event.push(start.elapsed());
    }
    event.sort();

    // The anchor: the origin's loop, "while live > 0, sleep 5 s", over the same manager counts. The
    // exit lands at a random point of the poll period, as it does in production.
    let mut polled = Vec::with_capacity(POLL_SAMPLES);
    for i in 0..POLL_SAMPLES {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = FakeRuntime::new();
        let node = node(Arc::new(fake.clone()), dir.path(), SandboxConfig::default());
        let info = node.create(request(&["sleep", "1000"])).await.expect("create");
        let counts = node.watch_drain();
        let poller = tokio::spawn(async move {
            loop {
                if counts.borrow().live == 0 {
                    return Instant::now();
                }
                tokio::time::sleep(ORIGIN_POLL).await;
            }
        });
        // Exit at 1/4, 2/4, 3/4 of a period after the first poll: the expected latency is half a period.
        tokio::time::sleep(ORIGIN_POLL * (i as u32 + 1) / (POLL_SAMPLES as u32 + 1)).await;
        let start = Instant::now();
        fake.exit(&key(&info), Exit::Code(0));
        let done = poller.await.expect("poller");
        polled.push(done - start);
    }
    polled.sort();
    let event_p50 = percentile(&event, 0.5);
    let poll_mean = polled.iter().sum::<Duration>() / polled.len() as u32;
    println!("## last exit -> DRAINED");
    println!("| drain | p50 | p99 | max | samples |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| sandhost (event-driven) | {:?} | {:?} | {:?} | {SAMPLES} |",
        event_p50,
        percentile(&event, 0.99),
        event.last().expect("samples")
    );
    println!(
        "| anchor: 5 s poll (origin) | {:?} | - | {:?} | {POLL_SAMPLES} (mean {:?}) |",
        percentile(&polled, 0.5),
        polled.last().expect("samples"),
        poll_mean
    );
    println!("ratio (poll mean / event p50): {:.0}x\n", poll_mean.as_secs_f64() / event_p50.as_secs_f64());
}

/// Part 2: forced stop of N live real sandboxes, running `argv`, each with `grace`.
async fn forced_stop(sizes: &[usize], argv: &[&str], grace: Duration) {
    println!(
        "## forced stop of N live sandboxes (process runtime, `{}`, stop grace {grace:?})",
        argv.join(" ")
    );
    println!("| N | start all | ForceStop -> DRAINED | ratio to N=1 |");
    println!("| --- | --- | --- | --- |");
    let mut base = None;
    for &n in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let parent = format!("bench-drain-{}-{n}", std::process::id());
        let mut config = ProcessConfig::new(dir.path().join("runtime"), env!("CARGO_BIN_EXE_sandhost"));
        config.cgroup_parent = parent.into();
        let runtime = ProcessRuntime::open(config).expect("open the process runtime (run as root)");
        let limits = SandboxConfig {
            max_sandboxes: 10_000,
            max_admitted_starts: 64,
            stop_grace: grace,
            // A thousand sandboxes of the default size are more than this host's memory.
            memory_overcommit: 1000.0,
            ..SandboxConfig::default()
        };
        let cgroups = runtime.clone();
        let node = node(Arc::new(runtime), dir.path(), limits);
        let started = Instant::now();
        let mut creates = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(32));
        for _ in 0..n {
            let node = node.clone();
            let permits = Arc::clone(&permits);
            let request = request(argv);
            creates.spawn(async move {
                let _permit = permits.acquire().await.expect("semaphore");
                node.create(request).await.expect("create")
            });
        }
        let mut created = Vec::with_capacity(n);
        while let Some(info) = creates.join_next().await {
            created.push(info.expect("join"));
        }
        let start_all = started.elapsed();
        // A command that announces itself ("ready") has installed what it needs (a trap, say)
        // only once it said so: the stop must not race its start.
        if argv.iter().any(|a| a.contains("echo ready")) {
            for info in &created {
                let key = SandboxKey { id: info.id.clone(), lifecycle: info.lifecycle.clone() };
                while cgroups.read_logs(&key, 0, 64).await.map_or(true, |c| c.data.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }

        let start = Instant::now();
        node.force_stop().expect("force stop");
        node.coordinator().wait_drained().await;
        let took = start.elapsed();
        let report = node.coordinator().report();
        assert_eq!(report.force_stopped, n as u64, "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
        cgroups.close().await.expect("the parent cgroups are empty after the drain");
        let base = *base.get_or_insert(took);
        println!("| {n} | {start_all:?} | {took:?} | {:.1}x |", took.as_secs_f64() / base.as_secs_f64());
    }
    println!();
}

/// Part 3: what a refused Create costs while draining.
async fn rejection_latency() {
    const CALLS: usize = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = node(Arc::new(FakeRuntime::new()), dir.path(), SandboxConfig::default());
    node.drain(DrainRequest::default()).expect("drain");
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let start = Instant::now();
        let refused = node.create(request(&["true"])).await;
        samples.push(start.elapsed());
        assert!(refused.is_err());
    }
    samples.sort();
    println!("## Create refused while draining (in-process, validation + admission)");
    println!("| calls | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {CALLS} | {:?} | {:?} | {:?} |\n",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().expect("samples")
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks one part.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(async {
        if wants("last-exit") {
            last_exit_to_drained().await;
        }
        if wants("forced-stop") {
            // Sandboxes that exit on SIGTERM: the cost is the teardown itself.
            forced_stop(&[1, 100, 1000], &["sleep", "1000"], Duration::from_secs(10)).await;
            // Sandboxes that ignore SIGTERM: each stop waits its grace, all of them at once.
            forced_stop(
                &[1, 100, 1000],
                &["sh", "-c", "trap '' TERM; echo ready; sleep 1000"],
                Duration::from_secs(1),
            )
            .await;
        }
        if wants("rejection") {
            rejection_latency().await;
        }
    });
}
