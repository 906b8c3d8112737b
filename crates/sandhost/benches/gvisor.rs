//! The gvisor backend's benchmark (`cargo bench -p sandhost --bench gvisor`, as root, runsc
//! installed): start latency against the process backend's start in the same run; checkpoint
//! (and stop), checkpoint-and-continue, and restore latency; snapshot size; for a small sandbox (a
//! shell loop) and one holding 256 MiB of random memory. Runs: `SANDHOST_BENCH_RUNS` (default 5).

use std::time::{Duration, Instant};

use sandhost_runtime::gvisor::{GvisorConfig, GvisorRuntime};
use sandhost_runtime::process::{ProcessConfig, ProcessRuntime};
use sandhost_runtime::{LifecycleId, Limits, Runtime, SandboxId, SandboxKey, SandboxSpec, SnapshotId};

const SMALL: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";
/// 256 MiB of random (incompressible: runsc compresses its images) memory.
const LARGE: &str =
    "import os, time\nb = os.urandom(256 << 20)\nprint('ready', flush=True)\ntime.sleep(1000)";

fn spec(n: u32, argv: &[&str]) -> SandboxSpec {
    SandboxSpec {
        limits: Limits { memory_bytes: Some(1 << 30), cpu_millis: None, pids_max: Some(256) },
        stop_grace: Duration::from_secs(1),
        ..SandboxSpec::new(
            SandboxKey {
                id: SandboxId::parse(format!("bench-{n}")).expect("id"),
                lifecycle: LifecycleId::parse(format!("{:x}", 0xb000_0000_u64 + u64::from(n)))
                    .expect("lifecycle"),
            },
            argv.iter().map(|s| (*s).to_owned()).collect(),
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn until_log(runtime: &dyn Runtime, key: &SandboxKey, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let chunk = runtime.read_logs(key, 0, 1 << 20).await.expect("logs");
        if String::from_utf8_lossy(&chunk.data).contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn end(runtime: &dyn Runtime, key: &SandboxKey) {
    runtime.kill(key).await.expect("kill");
    runtime.forget(key).await.expect("forget");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: u32 = std::env::var("SANDHOST_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::Builder::new().prefix("sandhost-bench-gv-").tempdir_in("/var/tmp").expect("temp dir");
    let parent = format!("bench-gv-{}", std::process::id());
    let mut pconfig = ProcessConfig::new(dir.path().join("process"), env!("CARGO_BIN_EXE_sandhost"));
    pconfig.cgroup_parent = parent.as_str().into();
    let process = ProcessRuntime::open(pconfig).expect("open the process runtime (run as root)");
    let mut gconfig = GvisorConfig::new(dir.path().join("gvisor"));
    gconfig.cgroup_parent = parent.as_str().into();
    // As serve runs it: each foreground runsc under the exit recorder.
    gconfig.exit_recorder = Some(env!("CARGO_BIN_EXE_sandhost").into());
    let gvisor = GvisorRuntime::open(gconfig).expect("open the gvisor runtime (apt-get install runsc)");
    let mut n = 0;

    // Start latency of `sh -c 'echo ready; sleep 1000'`: start() returns once the command runs.
    let mut starts = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, runtime) in [&process as &dyn Runtime, &gvisor].into_iter().enumerate() {
            n += 1;
            let s = spec(n, &["/bin/sh", "-c", "echo ready; sleep 1000"]);
            let t = Instant::now();
            runtime.start(&s).await.expect("start");
            starts[i].push(t.elapsed());
            end(runtime, &s.key).await;
        }
    }
    let [p, g] = starts;
    let (p, g) = (median(p), median(g));
    println!(
        "| start (median of {runs}) | process {} | gvisor {} | ratio {:.1}x |",
        ms(p),
        ms(g),
        g.as_secs_f64() / p.as_secs_f64()
    );

    println!("| sandbox | checkpoint+stop | checkpoint+continue | restore | snapshot size |");
    for (name, argv, ready) in [
        ("small (shell loop)", vec!["/bin/sh", "-c", SMALL], "3\n"),
        ("256 MiB random", vec!["/usr/bin/python3", "-c", LARGE], "ready"),
    ] {
        let (mut stops, mut conts, mut restores, mut size) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for run in 0..runs {
            n += 1;
            let s = spec(n, &argv);
            gvisor.start(&s).await.expect("start");
            until_log(&gvisor, &s.key, ready).await;
            let cont = SnapshotId::parse(format!("cont-{n}")).expect("id");
            let t = Instant::now();
            gvisor.checkpoint(&s.key, &cont, false).await.expect("checkpoint and continue");
            conts.push(t.elapsed());
            let snap = SnapshotId::parse(format!("snap-{n}")).expect("id");
            let t = Instant::now();
            let info = gvisor.checkpoint(&s.key, &snap, true).await.expect("checkpoint and stop");
            stops.push(t.elapsed());
            size = info.size_bytes;
            end(&gvisor, &s.key).await;
            n += 1;
            // A restore names no command: the snapshot's runs.
            let mut r = spec(n, &[]);
            r.restore_from = Some(snap.clone());
            let t = Instant::now();
            gvisor.start(&r).await.expect("restore");
            restores.push(t.elapsed());
            end(&gvisor, &r.key).await;
            for id in [&cont, &snap] {
                gvisor.delete_snapshot(id).await.expect("delete snapshot");
            }
            eprintln!("{name}: run {} of {runs} done", run + 1);
        }
        println!(
            "| {name} | {} | {} | {} | {:.1} MiB |",
            ms(median(stops)),
            ms(median(conts)),
            ms(median(restores)),
            size as f64 / f64::from(1 << 20)
        );
    }
    let _ = gvisor.close().await;
    let _ = process.close().await;
}
