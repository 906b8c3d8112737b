//! Fault injection: the real `sandhost serve` SIGKILLed at random moments while a client creates,
//! kills, pauses and resumes sandboxes, then restarted on the same state dir, round after round.
//! After each restart:
//!
//! - every sandbox the node listed just before the kill is still listed (running, or exited with
//!   its record);
//! - every process in a cgroup under the node's cgroup parent belongs to a sandbox the node lists
//!   as live;
//!
//! and at the end a drain reaches DRAINED and the shutdown exits 0 with nothing left on the host.
//!
//! `SANDHOST_FAULT_ROUNDS` sets the number of kills (default: 150); `SANDHOST_FAULT_SEED` the
//! seed, printed by a failing run so that it can be replayed.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::{Serve, ServeOptions, ok};

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
}

/// The sandboxes the node lists, by id, with their state (the proto3 JSON name).
fn listed(serve: &Serve) -> BTreeMap<String, String> {
    let reply: serde_json::Value =
        serde_json::from_str(&ok(&serve.cli(&["list", "--json"]))).expect("list --json is JSON");
    reply["sandboxes"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_owned(),
                        s["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
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

/// A client doing random work on `serve` until `stop` is set; errors (the serve killed under it)
/// are expected and ignored.
fn work(url: &str, seed: u64, round: u64, stop: &AtomicBool) {
    let mut rng = Rng(seed ^ (round + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut made: Vec<String> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("r{round}-{n}");
        let victim =
            (!made.is_empty()).then(|| made[usize::try_from(rng.below(made.len() as u64)).unwrap()].clone());
        let args: Vec<String> = match (rng.below(6), victim) {
            (0 | 1, _) | (_, None) => {
                made.push(id.clone());
                vec!["create".into(), "--id".into(), id, "--".into(), "sleep".into(), "1000".into()]
            }
            (2, _) => {
                made.push(id.clone());
                vec!["create".into(), "--id".into(), id, "--".into(), "true".into()]
            }
            (3, Some(victim)) => vec!["kill".into(), victim, "--now".into()],
            (4, Some(victim)) => vec!["pause".into(), victim],
            (_, Some(victim)) => vec!["resume".into(), victim],
        };
        let mut command = std::process::Command::new(e2e::BIN);
        command.args(&args).env("SANDHOST_ADDR", url).env_remove("SANDHOST_TOKEN");
        let _ = e2e::run_bounded(command);
    }
}

#[test]
fn sigkills_at_random_moments_leave_no_sandbox_unmanaged_or_lost() {
    common::require_root();
    let rounds: u64 = std::env::var("SANDHOST_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let seed: u64 =
        std::env::var("SANDHOST_FAULT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("fault injection: {rounds} rounds, SANDHOST_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let state = tempfile::tempdir().expect("state dir");
    let parent = e2e::cgroup_parent_for(state.path());
    // A race against kills, not a capacity test: many small sandboxes may be live at once.
    let mut options =
        ServeOptions { state_dir: Some(state.path().to_path_buf()), ..ServeOptions::on("process") };
    options.env.push(("SANDHOST_MEMORY_OVERCOMMIT".into(), "100".into()));

    let mut serve = Serve::start_with(options.clone());
    // A killed serve is kept until the end: dropping one purges everything under its state dir, the
    // next serve's sandboxes included.
    let mut killed = Vec::new();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (url, stop) = (serve.url(), Arc::clone(&stop));
            std::thread::spawn(move || work(&url, seed, round, &stop))
        };
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        let before = listed(&serve);
        serve.kill();
        stop.store(true, Ordering::Relaxed);
        client.join().expect("the client thread");

        killed.push(std::mem::replace(&mut serve, Serve::start_with(options.clone())));
        let after = listed(&serve);
        for (id, state) in &before {
            assert!(
                after.contains_key(id),
                "seed {seed}, round {round}: {id} ({state}) was listed before the kill and is gone: {after:?}"
            );
        }
        for (id, cgroup) in populated_cgroups(&parent) {
            let live = after.get(&id).is_some_and(|s| s != "SANDBOX_STATE_EXITED");
            assert!(
                live,
                "seed {seed}, round {round}: {cgroup} holds processes, but {id} is not a live sandbox: {after:?}"
            );
        }
    }

    // The end: every sandbox stopped, then a shutdown whose drain finds nothing live: exit 0.
    for (id, state) in listed(&serve) {
        if state != "SANDBOX_STATE_EXITED" {
            ok(&serve.cli(&["kill", &id, "--now"]));
        }
    }
    serve.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(serve.wait_exit(), Some(0), "seed {seed}: a clean shutdown");
    let left = populated_cgroups(&parent);
    assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
}
