//! The drain's benchmarks (`cargo bench -p sandhost --bench drain`, as root):
//!
//! 1. Latency from the last sandbox exit to DRAINED (event-driven), next to the anchor measured in
//!    the same run: a drain that polls the live count every 5 s, as the origin's does.
//! 2. Forced stop of N = 1, 100, 1000 live real sandboxes (the process runtime): wall time from
//!    ForceStop to DRAINED, and its ratio to N = 1.
//! 3. Forced stop of 1000 `sleep 1000` sandboxes against the kernel's floor measured in the same
//!    run on 1000 sandboxes of the same kind: one `cgroup.kill` on their common parent (v2; where
//!    the host has no v2 hierarchy, SIGKILL to every pid of their `cgroup.procs`, one pass) and a
//!    plain loop removing their cgroup directories in every hierarchy.
//! 4. Admission rejection latency while draining (p50, p99): what a Create costs a draining node.
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
        let (node, cgroups) = process_node(dir.path(), &parent, grace);
        let started = Instant::now();
        let created = start_many(&node, n, argv).await;
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

/// Starts `n` sandboxes running `argv` on `node`, 32 at a time.
async fn start_many(node: &Node, n: usize, argv: &[&str]) -> Vec<SandboxInfo> {
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
    created
}

/// A node on the process runtime under the cgroup parent `parent`, sized for `n` sandboxes.
fn process_node(dir: &std::path::Path, parent: &str, grace: Duration) -> (Node, ProcessRuntime) {
    let mut config = ProcessConfig::new(dir.join("runtime"), env!("CARGO_BIN_EXE_sandhost"));
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
    (node(Arc::new(runtime.clone()), dir, limits), runtime)
}

/// The cgroup hierarchies' mount points (from `/proc/self/mountinfo`), and whether each is v2.
fn cgroup_mounts() -> Vec<(std::path::PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut mounts = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split_whitespace().next().unwrap_or("");
        let Some(point) = left.split_whitespace().nth(4) else { continue };
        if fstype == "cgroup2" || fstype == "cgroup" {
            let point = std::path::PathBuf::from(point);
            if !mounts.iter().any(|(p, _)| *p == point) {
                mounts.push((point, fstype == "cgroup2"));
            }
        }
    }
    mounts
}

/// The kernel's floor for stopping the sandboxes under `parent`: one `cgroup.kill` on the parent
/// where the v2 hierarchy has it (else SIGKILL to every pid listed in each sandbox's
/// `cgroup.procs`, one pass), then a plain loop removing every sandbox cgroup directory of every
/// hierarchy, again and again while some are still held by exiting tasks.
fn kernel_floor(parent: &str) -> Duration {
    let mounts: Vec<_> = cgroup_mounts().into_iter().filter(|(m, _)| m.join(parent).is_dir()).collect();
    let mut dirs = Vec::new();
    for (mount, _) in &mounts {
        for entry in std::fs::read_dir(mount.join(parent)).expect("parent cgroup") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    let v2_kill = mounts.iter().find(|(_, v2)| *v2).map(|(m, _)| m.join(parent).join("cgroup.kill"));
    let start = Instant::now();
    match v2_kill.filter(|k| k.exists()) {
        Some(kill) => std::fs::write(kill, "1").expect("cgroup.kill"),
        None => {
            let (first, _) = mounts.first().expect("a hierarchy");
            for entry in std::fs::read_dir(first.join(parent)).expect("parent cgroup") {
                let procs = std::fs::read_to_string(entry.expect("entry").path().join("cgroup.procs"));
                for pid in procs.unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
    }
    while !dirs.is_empty() {
        dirs.retain(|dir| match std::fs::remove_dir(dir) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => true,
            Err(e) => panic!("removing {}: {e}", dir.display()),
        });
    }
    start.elapsed()
}

/// Part 3: ForceStop of `n` `sleep 1000` sandboxes to DRAINED, against the kernel's floor over `n`
/// sandboxes of the same kind, in the same run.
async fn forced_stop_against_floor(n: usize) {
    let argv = ["sleep", "1000"];
    let dir = tempfile::tempdir().expect("temp dir");
    let floor_parent = format!("bench-floor-{}-{n}", std::process::id());
    let (floor_node, floor_runtime) = process_node(dir.path(), &floor_parent, Duration::from_secs(10));
    start_many(&floor_node, n, &argv).await;
    let floor = tokio::task::spawn_blocking(move || kernel_floor(&floor_parent)).await.expect("floor");
    // The node sees its sandboxes gone and records them; then the parent can go.
    let mut counts = floor_node.watch_drain();
    counts.wait_for(|c| c.live == 0).await.expect("counts");
    floor_runtime.close().await.expect("the floor's parent cgroups are empty");

    let dir = tempfile::tempdir().expect("temp dir");
    let parent = format!("bench-force-{}-{n}", std::process::id());
    let (node, runtime) = process_node(dir.path(), &parent, Duration::from_secs(10));
    start_many(&node, n, &argv).await;
    // For a profiler attached from outside (see BENCHMARKS.md): the bench's pid, then a moment.
    if std::env::var_os("SANDHOST_BENCH_PROFILE_MARK").is_some() {
        eprintln!("PROFILE-MARK force {}", std::process::id());
        std::thread::sleep(Duration::from_millis(500));
    }
    let start = Instant::now();
    node.force_stop().expect("force stop");
    node.coordinator().wait_drained().await;
    let took = start.elapsed();
    let report = node.coordinator().report();
    assert_eq!(report.force_stopped, n as u64, "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    runtime.close().await.expect("the parent cgroups are empty after the drain");
    println!("## ForceStop of {n} `sleep 1000` sandboxes against the kernel's floor (same run)");
    println!("| N | kernel floor (kill + remove cgroups) | ForceStop -> DRAINED | ratio |");
    println!("| --- | --- | --- | --- |");
    println!("| {n} | {floor:?} | {took:?} | {:.2}x |\n", took.as_secs_f64() / floor.as_secs_f64());
}

/// Part 4: what a refused Create costs while draining.
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
        if wants("forced-stop-floor") {
            let n = std::env::var("SANDHOST_BENCH_FLOOR_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
            forced_stop_against_floor(n).await;
        }
        if wants("rejection") {
            rejection_latency().await;
        }
    });
}
