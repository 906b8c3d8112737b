//! Fault injection: the real `sandhost serve` killed at random moments while a client creates,
//! kills, pauses, resumes, drains and undrains (and, on gvisor, checkpoints and restores), then
//! restarted on the same state dir, round after round. A round ends in one of two ways, at random:
//! a SIGKILL in the middle of the work, or a SIGTERM (a shutdown drain begins) and a SIGKILL a
//! moment later, in the middle of that drain.
//!
//! After each restart:
//! - every sandbox the node listed just before the kill is still listed (running, or exited with
//!   its record), unless it may have exited longer ago than the retention (it had, by the list, or
//!   the retention has passed since the list);
//! - every process in a cgroup under the node's cgroup parent belongs to a sandbox the node lists
//!   as live;
//! - an operator's drain that the client saw accepted (and no undrain after it) is still in
//!   force; a drain begun by the signal is not: with no operator drain the node comes up READY;
//! - (gvisor) every snapshot listed before the kill is still listed.
//!
//! At the end: nothing outlives its retention (records, log directories), a restore from the
//! snapshots works, a drain reaches DRAINED, the shutdown exits 0, and nothing is left on the host.
//!
//! `SANDHOST_FAULT_ROUNDS` sets the number of kills (default: 200 on the process backend, a fifth
//! of that on gvisor, whose starts are slower); `SANDHOST_FAULT_SEED` the seed, printed by a
//! failing run so that it can be replayed.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::Backend;
use e2e::{Serve, ServeOptions, ok};

/// How long exited sandboxes are kept: short, so that the run crosses it, and longer than a
/// restart takes (a gvisor agent re-adopting after a kill took over 5 s under CI's load), so that a
/// sandbox that was live before a kill and exited in the shutdown drain is still listed after it.
const RETENTION: Duration = Duration::from_secs(10);

/// A small deterministic generator (xorshift), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[usize::try_from(self.below(items.len() as u64)).unwrap()])
    }
}

/// A sandbox as `list --json` shows it.
#[derive(Debug, Clone)]
struct Listed {
    state: String,
    exited_at: Option<SystemTime>,
}

fn json(serve: &Serve, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(&serve.cli(args))).unwrap_or_else(|e| panic!("{args:?} --json: {e}"))
}

/// The sandboxes the node lists, by id.
fn listed(serve: &Serve) -> BTreeMap<String, Listed> {
    let reply = json(serve, &["list", "--json"]);
    reply["sandboxes"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| {
                    let exited_at = s["exitedAt"]
                        .as_str()
                        .map(|t| humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("exitedAt {t}: {e}")));
                    let state = s["state"].as_str().unwrap_or_default().to_owned();
                    (s["id"].as_str().unwrap_or_default().to_owned(), Listed { state, exited_at })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The snapshot ids the node lists.
fn snapshots(serve: &Serve) -> Vec<String> {
    let reply = json(serve, &["snapshots", "--json"]);
    reply["snapshots"]
        .as_array()
        .map(|all| all.iter().map(|s| s["id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

/// The node's status (the proto3 JSON name).
fn status(serve: &Serve) -> String {
    json(serve, &["status", "--json"])["status"].as_str().expect("a status").to_owned()
}

/// The sandbox ids of the cgroups under `parent` that hold processes.
fn populated_cgroups(parent: &str) -> Vec<(String, String)> {
    e2e::leftover_cgroups(parent)
        .into_iter()
        .filter(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()))
        .map(|dir| {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let id = name.split('.').next().unwrap_or_default().to_owned();
            (id, dir.display().to_string())
        })
        .collect()
}

/// What the client knows of the operator's drain: the last drain or undrain it saw answered, and
/// whether one was in flight (sent, its answer unknown) when the agent died.
#[derive(Debug, Default, Clone)]
struct DrainSeen {
    drained: bool,
    in_flight: bool,
    /// Each drain and undrain run, with its exit code, for a failure's message.
    history: Vec<String>,
}

/// Runs the CLI against `url`, bounded.
fn cli(url: &str, args: &[String]) -> std::process::Output {
    let mut command = std::process::Command::new(e2e::BIN);
    command.args(args).env("SANDHOST_ADDR", url).env_remove("SANDHOST_TOKEN");
    e2e::run_bounded(command)
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|&s| s.to_owned()).collect()
}

/// A client doing random work on the job's serve until `stop` is set; errors (the serve killed
/// under it) are expected and ignored. Its victims are the sandboxes it makes and the job's; it
/// restores from the job's snapshots and those it takes. Records what it learns of the operator's
/// drain in `drain`, and returns how many of each command it ran and how many succeeded.
fn work(job: Job, mut rng: Rng, stop: &AtomicBool, drain: &Mutex<DrainSeen>) -> Tally {
    let Job { url, backend, round, mut made, mut snaps } = job;
    let url = url.as_str();
    let mut tally = Tally::new();
    let mut n = 0;
    let kinds = if backend == Backend::Gvisor { 12 } else { 10 };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("r{round}-{n}");
        let victim = rng.pick(&made).cloned();
        let command: Vec<String> = match (rng.below(kinds), victim) {
            (0 | 1, _) | (_, None) => {
                made.push(id.clone());
                args(&["create", "--id", &id, "--", "sleep", "1000"])
            }
            (2, _) => {
                made.push(id.clone());
                args(&["create", "--id", &id, "--", "true"])
            }
            (3, Some(victim)) => args(&["kill", &victim, "--now"]),
            (4, Some(victim)) => args(&["pause", &victim]),
            (5, Some(victim)) => args(&["resume", &victim]),
            (6, _) => args(&["drain", "--detach", "--timeout", "1s"]),
            (7, _) => args(&["drain", "--detach"]),
            (8, _) => args(&["undrain"]),
            (9, Some(victim)) => args(&["kill", &victim]),
            (10, Some(victim)) => {
                let mut checkpoint = args(&["checkpoint", &victim, "--json"]);
                if rng.below(2) == 0 {
                    checkpoint.push("--stop".into());
                }
                checkpoint
            }
            (_, Some(_)) => match rng.pick(&snaps) {
                Some(snapshot) => {
                    made.push(id.clone());
                    args(&["create", "--id", &id, "--restore-from", snapshot])
                }
                None => continue,
            },
        };
        let drain_op = command[0] == "drain" || command[0] == "undrain";
        if drain_op {
            drain.lock().unwrap().in_flight = true;
        }
        let output = cli(url, &command);
        let counts = tally.entry(command[0].clone()).or_default();
        counts.0 += 1;
        counts.1 += u32::from(output.status.success());
        if drain_op {
            let mut seen = drain.lock().unwrap();
            seen.history.push(format!(
                "{command:?} -> {:?} {}",
                output.status.code(),
                e2e::stderr(&output).trim()
            ));
            // Answered: its effect is known (undrain refused while shutting down changes nothing).
            if output.status.success() {
                seen.drained = command[0] == "drain";
                seen.in_flight = false;
            } else if output.status.code() == Some(1) {
                seen.in_flight = false;
            }
            // Anything else (75: the agent went away under it): it may or may not have landed.
        }
        if command[0] == "checkpoint"
            && output.status.success()
            && let Ok(reply) = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            && let Some(snapshot) = reply["snapshot"]["id"].as_str()
        {
            snaps.push(snapshot.to_owned());
        }
    }
    tally
}

/// What one round's client works on.
struct Job {
    url: String,
    backend: Backend,
    round: u64,
    /// The live sandboxes of earlier rounds.
    made: Vec<String>,
    /// The snapshots taken so far.
    snaps: Vec<String>,
}

/// Per command: how many were run, how many succeeded.
type Tally = BTreeMap<String, (u32, u32)>;

fn rounds_and_seed(backend: Backend) -> (u64, u64) {
    let default_rounds = if backend == Backend::Gvisor { 40 } else { 200 };
    let rounds =
        std::env::var("SANDHOST_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_rounds);
    let seed = std::env::var("SANDHOST_FAULT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    (rounds, seed)
}

on_both_backends!(sync: kills_at_random_moments_leave_no_sandbox_unmanaged_or_lost);

#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn kills_at_random_moments_leave_no_sandbox_unmanaged_or_lost(backend: Backend) {
    let (rounds, seed) = rounds_and_seed(backend);
    eprintln!("fault injection on {}: {rounds} rounds, SANDHOST_FAULT_SEED={seed}", backend.name());
    let mut rng = Rng(seed);
    let state = tempfile::tempdir().expect("state dir");
    let parent = e2e::cgroup_parent_for(state.path());
    // A race against kills, not a capacity test: many small sandboxes may be live at once.
    let mut options =
        ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on(backend.name()) };
    options.env.push(("SANDHOST_MEMORY_OVERCOMMIT".into(), "100".into()));
    options.env.push(("SANDHOST_RETENTION".into(), humantime::format_duration(RETENTION).to_string()));

    let mut serve = Serve::start_with(options.clone());
    // A killed serve is kept until the end: dropping one purges everything under its state dir, the
    // next serve's sandboxes included.
    let mut killed = Vec::new();
    let (mut shutdown_kills, mut drained_kills) = (0, 0);
    let mut tally = Tally::new();
    for round in 0..rounds {
        let at = format!("seed {seed}, round {round}");
        let stop = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(Mutex::new(DrainSeen::default()));
        let live: Vec<String> = listed(&serve)
            .into_iter()
            .filter(|(_, sandbox)| sandbox.state != "SANDBOX_STATE_EXITED")
            .map(|(id, _)| id)
            .collect();
        let snaps = if backend == Backend::Gvisor { snapshots(&serve) } else { Vec::new() };
        let client = {
            let job = Job { url: serve.url(), backend, round, made: live, snaps };
            let (stop, drain) = (Arc::clone(&stop), Arc::clone(&drain));
            let client_rng = Rng(seed ^ (round + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            std::thread::spawn(move || work(job, client_rng, &stop, &drain))
        };
        // gvisor's starts and checkpoints take longer: longer rounds, so that kills land in them.
        let round_ms = if backend == Backend::Gvisor { 100 + rng.below(1500) } else { 20 + rng.below(300) };
        std::thread::sleep(Duration::from_millis(round_ms));
        let listed_at = SystemTime::now();
        let before = listed(&serve);
        let snapshots_before = if backend == Backend::Gvisor { snapshots(&serve) } else { Vec::new() };
        // A shutdown drain cut short, or a plain kill.
        let by_signal = rng.below(4) == 0;
        if by_signal {
            shutdown_kills += 1;
            serve.signal(nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(rng.below(200)));
        }
        serve.kill();
        stop.store(true, Ordering::Relaxed);
        for (command, (tried, succeeded)) in client.join().expect("the client thread") {
            let total = tally.entry(command).or_default();
            total.0 += tried;
            total.1 += succeeded;
        }
        let seen = drain.lock().unwrap().clone();

        killed.push(std::mem::replace(&mut serve, Serve::start_with(options.clone())));
        let after = listed(&serve);
        let now = SystemTime::now();
        for (id, was) in &before {
            // A live one may have exited as soon as it was listed (in the shutdown drain, or while
            // no agent ran), so it may be gone once the retention has passed since the list.
            let since = was.exited_at.unwrap_or(listed_at);
            let expired = !after.contains_key(id) && since + RETENTION <= now;
            assert!(
                after.contains_key(id) || expired,
                "{at}: {id} ({was:?}) was listed before the kill and is gone: {after:?}"
            );
        }
        for (id, cgroup) in populated_cgroups(&parent) {
            let live = after.get(&id).is_some_and(|s| s.state != "SANDBOX_STATE_EXITED");
            assert!(live, "{at}: {cgroup} holds processes, but {id} is not a live sandbox: {after:?}");
        }
        let node = status(&serve);
        if !seen.in_flight {
            if seen.drained {
                drained_kills += 1;
                assert_ne!(
                    node, "NODE_STATUS_READY",
                    "{at}: the operator's drain was lost by the restart: {seen:?}"
                );
            } else {
                let cut = if by_signal { "a shutdown drain cut short" } else { "a kill" };
                assert_eq!(node, "NODE_STATUS_READY", "{at}: after {cut} with no operator drain: {seen:?}");
            }
        }
        if backend == Backend::Gvisor {
            let now_listed = snapshots(&serve);
            for snapshot in &snapshots_before {
                assert!(now_listed.contains(snapshot), "{at}: snapshot {snapshot} is gone: {now_listed:?}");
            }
        }
        if node != "NODE_STATUS_READY" {
            ok(&serve.cli(&["undrain"]));
        }
    }
    eprintln!(
        "fault injection on {}: {rounds} kills ({shutdown_kills} in a shutdown drain, {drained_kills} with an \
         operator's drain in force) passed; commands run (tried, succeeded): {tally:?}",
        backend.name()
    );

    // Nothing outlives its retention: once it has passed, no exited sandbox is older than it, and
    // every sandbox directory on disk belongs to a listed sandbox.
    std::thread::sleep(RETENTION + Duration::from_secs(2));
    let now = SystemTime::now();
    let last = listed(&serve);
    for (id, sandbox) in &last {
        if let Some(exited) = sandbox.exited_at {
            // The sweep runs every second or so: a generous margin, no timing asserted.
            assert!(exited + RETENTION * 3 > now, "seed {seed}: {id} outlived its retention: {sandbox:?}");
        }
    }
    for dir in sandbox_dirs(state.path()) {
        let id = dir.split('.').next().unwrap_or_default();
        assert!(last.contains_key(id), "seed {seed}: {dir} on disk belongs to no listed sandbox: {last:?}");
    }

    // Snapshots taken under the kills restore (a half-written one is never listed).
    if backend == Backend::Gvisor {
        for (n, snapshot) in snapshots(&serve).iter().take(3).enumerate() {
            let id = format!("restored-{n}");
            ok(&serve.cli(&["create", "--id", &id, "--restore-from", snapshot]));
        }
    }

    // The end: a drain that reaches DRAINED (forcing what is left at its deadline), then a shutdown
    // whose drain finds nothing live.
    let drained = serve.cli(&["drain", "--timeout", "1s"]);
    assert!(matches!(drained.status.code(), Some(0 | 3)), "seed {seed}: drain: {drained:?}");
    assert_eq!(status(&serve), "NODE_STATUS_DRAINED", "seed {seed}");
    // The shutdown reports the drain it ends: 10 if that drain force-stopped some (a success for
    // supervisors), else 0.
    let expected = if drained.status.code() == Some(3) { 10 } else { 0 };
    serve.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(serve.wait_exit(), Some(expected), "seed {seed}: a clean shutdown");
    let left = populated_cgroups(&parent);
    assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
    drop(killed);
}

/// The sandbox ids that have files in the state dir: a directory under each backend's
/// `sandboxes/`, a record under `meta/` (`<id>.<lifecycle>.json`).
fn sandbox_dirs(state_dir: &std::path::Path) -> Vec<String> {
    let names = |dir: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut ids: Vec<String> = ["runtime", "runtime-gvisor"]
        .iter()
        .flat_map(|backend| names(state_dir.join(backend).join("sandboxes")))
        .collect();
    ids.extend(names(state_dir.join("meta")));
    ids
}
