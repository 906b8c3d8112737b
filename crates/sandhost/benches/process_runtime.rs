//! Start latency of the `process` runtime against `bwrap` and `crun` running the same command
//! (`/bin/true`), in one run: start-to-running and start-to-exit (p50, p99) and starts per second.
//!
//! `cargo bench -p sandhost --bench process_runtime` (as root; needs `bwrap` and `crun` on PATH:
//! `apt-get install -y --no-install-recommends bubblewrap crun`). crun refuses the hybrid cgroup
//! layout unless hugetlb is bound to v1, so the bench mounts it for the crun runs and undoes that.
//! Iterations: `SANDHOST_BENCH_ITERATIONS` (default 300).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandhost_runtime::process::{ProcessConfig, ProcessRuntime};
use sandhost_runtime::{Exit, LifecycleId, Runtime, SandboxId, SandboxKey, SandboxSpec};

const WARMUP: usize = 20;
const CONCURRENCY: usize = 8;

fn main() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")) {
        eprintln!("process_runtime bench: requires root");
        std::process::exit(1);
    }
    let n: usize =
        std::env::var("SANDHOST_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let tmp = tempfile::Builder::new().prefix("sandhost-bench-").tempdir_in("/var/tmp").expect("tmp");

    println!(
        "process runtime start latency, /bin/true, {n} iterations after {WARMUP} warm-up, {} CPUs",
        num_cpus()
    );
    let plain = bench_command(n, &["/bin/true".to_owned()]);
    let ours = rt.block_on(bench_ours(tmp.path(), n));
    let bwrap = bench_command(n, &bwrap_command());
    let crun = bench_crun(tmp.path(), n);

    println!();
    println!(
        "| runtime | start→running p50 | p99 | start→exit p50 | p99 | sequential starts/s | concurrent ({CONCURRENCY}) starts/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    if let Some(p) = &plain {
        row("plain fork+exec (no isolation)", None, &p.exit, p.sequential_rate, p.concurrent_rate);
    }
    row("sandhost process", Some(&ours.running), &ours.exit, ours.sequential_rate, ours.concurrent_rate);
    if let Some(b) = &bwrap {
        row("bwrap", None, &b.exit, b.sequential_rate, b.concurrent_rate);
    }
    if let Some(c) = &crun {
        row("crun run", None, &c.exit, c.sequential_rate, c.concurrent_rate);
    }
    println!();
    let ours_p50 = percentile(&ours.exit, 50.0);
    for (name, other) in [("bwrap", &bwrap), ("crun", &crun)] {
        if let Some(o) = other {
            let theirs = percentile(&o.exit, 50.0);
            println!(
                "start→exit p50: sandhost / {name} = {:.2} (sandhost {}; {name} {})",
                ours_p50.as_secs_f64() / theirs.as_secs_f64(),
                ms(ours_p50),
                ms(theirs)
            );
        }
    }
}

struct Results {
    running: Vec<Duration>,
    exit: Vec<Duration>,
    sequential_rate: f64,
    concurrent_rate: f64,
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank.min(s.len() - 1)]
}

fn row(name: &str, running: Option<&[Duration]>, exit: &[Duration], seq: f64, conc: f64) {
    let (r50, r99) =
        running.map_or(("n/a".into(), "n/a".into()), |r| (ms(percentile(r, 50.0)), ms(percentile(r, 99.0))));
    println!(
        "| {name} | {r50} | {r99} | {} | {} | {seq:.0} | {conc:.0} |",
        ms(percentile(exit, 50.0)),
        ms(percentile(exit, 99.0))
    );
}

fn spec(i: usize) -> SandboxSpec {
    SandboxSpec {
        stop_grace: Duration::from_secs(1),
        ..SandboxSpec::new(
            SandboxKey {
                id: SandboxId::parse(format!("bench-{i}")).expect("id"),
                lifecycle: LifecycleId::parse(format!("{i:x}")).expect("lifecycle"),
            },
            vec!["/bin/true".into()],
        )
    }
}

async fn one_cycle(runtime: &ProcessRuntime, i: usize) -> (Duration, Duration) {
    let spec = spec(i);
    let t0 = Instant::now();
    runtime.start(&spec).await.expect("start");
    let running = t0.elapsed();
    assert_eq!(runtime.wait(&spec.key).await.expect("wait"), Exit::Code(0));
    let exit = t0.elapsed();
    runtime.forget(&spec.key).await.expect("forget");
    (running, exit)
}

async fn bench_ours(tmp: &Path, n: usize) -> Results {
    let mut config = ProcessConfig::new(tmp.join("state"), env!("CARGO_BIN_EXE_sandhost"));
    config.cgroup_parent = format!("sandhost-bench-{}", std::process::id()).into();
    let runtime = ProcessRuntime::open(config).expect("open");
    for i in 0..WARMUP {
        one_cycle(&runtime, i).await;
    }
    let (mut running, mut exit) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t0 = Instant::now();
    for i in 0..n {
        let (r, e) = one_cycle(&runtime, WARMUP + i).await;
        running.push(r);
        exit.push(e);
    }
    let sequential_rate = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let runtime = runtime.clone();
        workers.spawn(async move {
            let mut i = 100_000 + w;
            while i < 100_000 + n {
                one_cycle(&runtime, i).await;
                i += CONCURRENCY;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let concurrent_rate = n as f64 / t0.elapsed().as_secs_f64();
    let _ = runtime.close().await;
    Results { running, exit, sequential_rate, concurrent_rate }
}

fn bwrap_command() -> Vec<String> {
    [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--cap-drop",
        "ALL",
        "--new-session",
        "/bin/true",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Times `argv` to completion, sequentially and with [`CONCURRENCY`] workers.
fn bench_command(n: usize, argv: &[String]) -> Option<Results> {
    let run = |argv: &[String]| {
        let status =
            Command::new(&argv[0]).args(&argv[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        status.is_ok_and(|s| s.success())
    };
    if !run(argv) {
        eprintln!("{} does not run here; skipped", argv[0]);
        return None;
    }
    for _ in 0..WARMUP {
        run(argv);
    }
    let mut exit = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        assert!(run(argv), "{argv:?} failed");
        exit.push(t.elapsed());
    }
    let sequential_rate = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| {
                for _ in 0..n / CONCURRENCY {
                    run(argv);
                }
            });
        }
    });
    let concurrent_rate = (n / CONCURRENCY * CONCURRENCY) as f64 / t0.elapsed().as_secs_f64();
    Some(Results { running: Vec::new(), exit, sequential_rate, concurrent_rate })
}

/// Mounts hugetlb on v1 for crun (it refuses a v2 hierarchy with a controller) and undoes it when dropped.
struct HugetlbRemount {
    mounted: bool,
}

impl HugetlbRemount {
    fn apply() -> Self {
        let point = Path::new("/sys/fs/cgroup/hugetlb");
        let already = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup/hugetlb"));
        let unified_has_hugetlb = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "hugetlb"));
        if already || !unified_has_hugetlb {
            return Self { mounted: false };
        }
        let _ = std::fs::create_dir_all(point);
        let ok = Command::new("mount")
            .args(["-t", "cgroup", "-o", "hugetlb", "cgroup", "/sys/fs/cgroup/hugetlb"])
            .status()
            .is_ok_and(|s| s.success());
        Self { mounted: ok }
    }
}

impl Drop for HugetlbRemount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("/sys/fs/cgroup/hugetlb").status();
            let _ = std::fs::remove_dir("/sys/fs/cgroup/hugetlb");
        }
    }
}

fn bench_crun(tmp: &Path, n: usize) -> Option<Results> {
    let _remount = HugetlbRemount::apply();
    let bundle = tmp.join("crun-bundle");
    let rootfs = bundle.join("rootfs");
    for dir in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(rootfs.join(dir)).ok()?;
    }
    copy_with_libs(Path::new("/bin/true"), &rootfs)?;
    let spec = Command::new("crun").args(["spec"]).current_dir(&bundle).status().ok()?;
    if !spec.success() {
        return None;
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["process"]["user"] = serde_json::json!({"uid": 65534, "gid": 65534});
    config["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).ok()?).ok()?;
    let state = tmp.join("crun-state");
    // crun needs a distinct container id per concurrent run: run through a tiny shim.
    let shim = tmp.join("crun-shim.sh");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nexec crun --root {} run --bundle {} \"bench-$$\"\n",
            state.display(),
            bundle.display()
        ),
    )
    .ok()?;
    Command::new("chmod").args(["755"]).arg(&shim).status().ok()?;
    // The shim costs one fork+exec of /bin/sh (~0.6 ms here): measured and subtracted below.
    let results = bench_command(n, &[shim.display().to_string()])?;
    let shim_only = tmp.join("sh-shim.sh");
    std::fs::write(&shim_only, "#!/bin/sh\nexec /bin/true\n").ok()?;
    Command::new("chmod").args(["755"]).arg(&shim_only).status().ok()?;
    let overhead = bench_command(n.min(100), &[shim_only.display().to_string()])?;
    let shim_p50 = percentile(&overhead.exit, 50.0);
    println!("crun: subtracting the shell shim's own start→exit p50 of {}", ms(shim_p50));
    let exit = results.exit.iter().map(|d| d.saturating_sub(shim_p50)).collect();
    Some(Results { exit, ..results })
}

fn copy_with_libs(binary: &Path, root: &Path) -> Option<()> {
    let real: PathBuf = std::fs::canonicalize(binary).ok()?;
    let dest = root.join(binary.strip_prefix("/").ok()?);
    std::fs::copy(&real, &dest).ok()?;
    let ldd = Command::new("ldd").arg(&real).output().ok()?;
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent()?).ok()?;
        std::fs::copy(lib, &dest).ok()?;
    }
    Some(())
}
