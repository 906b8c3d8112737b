//! The gvisor backend's benchmark (`cargo bench -p sandhost --bench gvisor`, as root, runsc
//! installed): start latency against the process backend's start in the same run; checkpoint
//! (and stop), checkpoint-and-continue, and restore latency; snapshot size; for a small sandbox (a
//! shell loop) and one holding 256 MiB of random memory. Runs: `SANDHOST_BENCH_RUNS` (default 5).
//!
//! The anchors of the start and the restore are runsc's own: `runsc run --detach` of a copy of the
//! bundle sandhost wrote for the same sandbox, and `runsc restore --detach` of the same snapshot,
//! with the same global flags (root, platform, no network), in the same run.

use std::path::{Path, PathBuf};
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

/// runsc's own commands, with the flags sandhost gives it (root, platform, no network).
struct RawRunsc {
    root: PathBuf,
    parent: String,
    bundles: PathBuf,
}

impl RawRunsc {
    fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new("runsc");
        command
            .arg("--root")
            .arg(&self.root)
            .args(["--platform=ptrace", "--network=none"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    /// Copies the bundle in `lifecycle` (a sandbox sandhost started) for container `cid`: its root
    /// and its cgroup made its own.
    fn copy_bundle(&self, lifecycle: &Path, cid: &str) -> PathBuf {
        let to = self.bundles.join(cid);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(lifecycle.join("bundle"))
            .arg(&to)
            .status()
            .expect("cp");
        assert!(copied.success(), "copying the bundle");
        let text = std::fs::read_to_string(to.join("config.json")).expect("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let old_root = config["root"]["path"].as_str().expect("root").to_owned();
        if old_root.starts_with(lifecycle.to_str().expect("utf-8")) {
            config["root"]["path"] = to.join("root").display().to_string().into();
        }
        config["linux"]["cgroupsPath"] = format!("/{}/{cid}", self.parent).into();
        std::fs::write(to.join("config.json"), config.to_string()).expect("write config.json");
        to
    }

    /// Times `runsc <verb> --detach [extra] --bundle <bundle> <cid>`, then removes the container.
    fn timed(&self, verb: &str, extra: &[&std::ffi::OsStr], bundle: &Path, cid: &str) -> Duration {
        let t = Instant::now();
        let status = self
            .command()
            .arg(verb)
            .arg("--detach")
            .args(extra)
            .arg("--bundle")
            .arg(bundle)
            .arg(cid)
            .status()
            .expect("runsc");
        let took = t.elapsed();
        assert!(status.success(), "runsc {verb} --detach");
        let _ = self.command().args(["kill", cid, "KILL"]).status();
        let _ = self.command().args(["delete", "--force", cid]).status();
        let _ = std::fs::remove_dir_all(bundle);
        took
    }
}

/// The directory of a lifecycle of the gvisor runtime over `state_dir`.
fn lifecycle_dir(state_dir: &Path, key: &SandboxKey) -> PathBuf {
    state_dir.join("sandboxes").join(key.id.as_str()).join(key.lifecycle.as_str())
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
    let gvisor_dir = dir.path().join("gvisor");
    let raw = RawRunsc {
        root: dir.path().join("raw-runsc"),
        parent: format!("{parent}-raw"),
        bundles: dir.path().join("raw-bundles"),
    };
    std::fs::create_dir_all(&raw.root).expect("raw runsc root");
    std::fs::create_dir_all(&raw.bundles).expect("raw bundles");
    let mut gconfig = GvisorConfig::new(&gvisor_dir);
    gconfig.cgroup_parent = parent.as_str().into();
    // As serve runs it: each foreground runsc under the exit recorder.
    gconfig.exit_recorder = Some(env!("CARGO_BIN_EXE_sandhost").into());
    let gvisor = GvisorRuntime::open(gconfig).expect("open the gvisor runtime (apt-get install runsc)");
    let mut n = 0;

    // Start latency of `sh -c 'echo ready; sleep 1000'`: start() returns once the command runs;
    // `runsc run --detach` of a copy of the same bundle, once the container runs.
    let mut starts = [Vec::new(), Vec::new()];
    let mut raw_starts = Vec::new();
    for _ in 0..runs {
        for (i, runtime) in [&process as &dyn Runtime, &gvisor].into_iter().enumerate() {
            n += 1;
            let s = spec(n, &["/bin/sh", "-c", "echo ready; sleep 1000"]);
            let t = Instant::now();
            runtime.start(&s).await.expect("start");
            starts[i].push(t.elapsed());
            let copy = (i == 1).then(|| {
                let cid = format!("raw-run-{n}");
                (raw.copy_bundle(&lifecycle_dir(&gvisor_dir, &s.key), &cid), cid)
            });
            end(runtime, &s.key).await;
            if let Some((bundle, cid)) = copy {
                raw_starts.push(raw.timed("run", &[], &bundle, &cid));
            }
        }
    }
    let [p, g] = starts;
    let (p, g, r) = (median(p), median(g), median(raw_starts));
    println!(
        "| start (median of {runs}) | process {} | gvisor {} | ratio {:.1}x | runsc run --detach {} | gvisor / runsc {:.2}x |",
        ms(p),
        ms(g),
        g.as_secs_f64() / p.as_secs_f64(),
        ms(r),
        g.as_secs_f64() / r.as_secs_f64()
    );

    println!(
        "| sandbox | checkpoint+stop | checkpoint+continue | restore | runsc restore --detach | restore / runsc | snapshot size |"
    );
    for (name, argv, ready) in [
        ("small (shell loop)", vec!["/bin/sh", "-c", SMALL], "3\n"),
        ("256 MiB random", vec!["/usr/bin/python3", "-c", LARGE], "ready"),
    ] {
        let (mut stops, mut conts, mut restores, mut size) = (Vec::new(), Vec::new(), Vec::new(), 0);
        let mut raw_restores = Vec::new();
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
            let cid = format!("raw-restore-{n}");
            let bundle = raw.copy_bundle(&lifecycle_dir(&gvisor_dir, &r.key), &cid);
            end(&gvisor, &r.key).await;
            let image = gvisor_dir.join("snapshots").join(snap.as_str());
            raw_restores.push(raw.timed(
                "restore",
                &["--image-path".as_ref(), image.as_os_str()],
                &bundle,
                &cid,
            ));
            for id in [&cont, &snap] {
                gvisor.delete_snapshot(id).await.expect("delete snapshot");
            }
            eprintln!("{name}: run {} of {runs} done", run + 1);
        }
        let (restore, raw_restore) = (median(restores), median(raw_restores));
        println!(
            "| {name} | {} | {} | {} | {} | {:.2}x | {:.1} MiB |",
            ms(median(stops)),
            ms(median(conts)),
            ms(restore),
            ms(raw_restore),
            restore.as_secs_f64() / raw_restore.as_secs_f64(),
            size as f64 / f64::from(1 << 20)
        );
    }
    let _ = gvisor.close().await;
    let _ = process.close().await;
    // The parent runsc made for the anchors' cgroups, in every hierarchy (each container's own went
    // with its delete).
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(&raw.parent));
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&raw.parent));
}
