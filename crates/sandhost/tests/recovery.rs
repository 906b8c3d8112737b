//! What a restarted agent makes of what the previous one persisted, on the recording fake runtime
//! with tokio's paused clock: damaged metadata takes the node's defaults (and says so), exited
//! sandboxes come back until their retention ends, and nothing outlives it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use sandhost::config::SandboxConfig;
use sandhost::sandbox::{
    ConditionKind, CreateRequest, DrainPolicy, ExitReason, SandboxError, SandboxInfo, SandboxState,
};
use sandhost_runtime::fake::{Call, FakeRuntime};
use sandhost_runtime::{
    Exit, LifecycleId, Lost, Recovered, RecoveredState, SandboxId, SandboxKey, SandboxSpec,
};
use support::{TestNode, key, metrics_text, within};

/// The metadata file the manager keeps for `key` in the node's state dir.
fn meta_file(t: &TestNode, key: &SandboxKey) -> std::path::PathBuf {
    t.dir.path().join("meta").join(format!("{}.{}.json", key.id, key.lifecycle))
}

/// What the runtime of a restarted agent finds of `key`: still running, started at `started_at`.
fn running(key: &SandboxKey, started_at: SystemTime) -> Recovered {
    Recovered::new(
        SandboxSpec::new(key.clone(), vec!["sleep".into(), "1000".into()]),
        started_at,
        RecoveredState::Running { paused: false },
    )
}

/// The kinds of a sandbox's conditions.
fn kinds(info: &SandboxInfo) -> Vec<ConditionKind> {
    info.conditions.iter().map(|c| c.kind).collect()
}

/// A new agent over the state dir of `first`, whose runtime finds `recovered`; recovery done.
async fn restart(first: TestNode, config: SandboxConfig, recovered: Vec<Recovered>) -> TestNode {
    let fake = FakeRuntime::new();
    fake.seed_recovered(recovered);
    let TestNode { dir, .. } = first;
    let second = TestNode::in_dir(fake, config, dir);
    second.manager.recover().await.expect("recover");
    second
}

#[tokio::test(start_paused = true)]
async fn unreadable_metadata_takes_the_node_s_defaults_says_so_and_the_sandbox_still_ends() {
    let config = SandboxConfig { default_timeout: Duration::from_secs(600), ..SandboxConfig::default() };
    let first = TestNode::with(FakeRuntime::new(), config.clone());
    let request = CreateRequest {
        id: Some("alive".into()),
        argv: vec!["sleep".into(), "1000".into()],
        timeout: Some(Duration::from_secs(60)),
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        drain_policy: DrainPolicy::Stop,
        ..CreateRequest::default()
    };
    let alive = first.node.create(request).await.expect("create");
    let key = key(&alive);
    // The agent dies; its metadata of the sandbox is torn.
    let file = meta_file(&first, &key);
    let bytes = std::fs::read(&file).expect("metadata");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("tear it");
    let started_at = alive.started_at.expect("started");
    let second = restart(first, config.clone(), vec![running(&key, started_at)]).await;

    let adopted = second.node.get("alive").expect("adopted");
    assert_eq!(adopted.state, SandboxState::Running);
    assert_eq!(
        adopted.end_time,
        Some(started_at + Duration::from_secs(600)),
        "the node's default timeout, counted from the start"
    );
    assert_eq!(adopted.labels, BTreeMap::new());
    assert_eq!(adopted.drain_policy, DrainPolicy::Wait);
    assert_eq!(kinds(&adopted), [ConditionKind::MetadataLost]);
    assert!(adopted.conditions[0].message.contains("damaged"), "{:?}", adopted.conditions);
    let metrics = metrics_text(&second);
    assert!(metrics.contains(r#"sandhost_degraded_sandboxes{condition="metadata_lost"} 1"#), "{metrics}");

    // The defaults were persisted: a later restart keeps the same end time and the condition.
    let third = restart(second, config, vec![running(&key, started_at)]).await;
    let again = third.node.get("alive").expect("adopted");
    assert_eq!((again.end_time, kinds(&again)), (adopted.end_time, vec![ConditionKind::MetadataLost]));
    let second = third;

    // Untrusted code does not run without an end: the supervisor stops it then.
    let exited = within("the end time", second.node.wait("alive")).await.expect("wait");
    assert_eq!(exited.exit.expect("exit").reason, ExitReason::Timeout);
}

#[tokio::test(start_paused = true)]
async fn exited_sandboxes_come_back_after_a_restart_and_go_when_their_retention_ends() {
    let config = SandboxConfig { retention: Duration::from_secs(3600), ..SandboxConfig::default() };
    let first = TestNode::with(FakeRuntime::new(), config.clone());
    let done = first.create("done", DrainPolicy::Wait).await;
    let key = key(&done);
    first.fake.exit(&key, Exit::Code(3));
    let exited = within("exit", first.node.wait("done")).await.expect("wait");
    assert_eq!(exited.state, SandboxState::Exited);

    // A restart within the retention: the record comes back as it was.
    let second = restart(first, config.clone(), Vec::new()).await;
    let back = second.node.get("done").expect("the record survives the restart");
    assert_eq!(back.state, SandboxState::Exited);
    assert_eq!(back.exit, exited.exit);
    assert_eq!(back.exited_at, exited.exited_at);
    assert_eq!(back.argv, exited.argv);
    assert!(!second.fake.calls().contains(&Call::Forget(key.clone())));

    // And another: the retention is counted from the exit, not from the restart.
    let third = restart(second, config, Vec::new()).await;
    assert!(third.node.get("done").is_ok());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    within("forgotten", async {
        while third.node.get("done").is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert!(matches!(third.node.get("done"), Err(SandboxError::NotFound(_))));
    assert!(third.fake.calls().contains(&Call::Forget(key.clone())), "its last files are removed");
    assert!(!meta_file(&third, &key).exists(), "and its record");
}

#[tokio::test(start_paused = true)]
async fn a_record_past_its_retention_is_removed_by_the_restarted_agent() {
    let config = SandboxConfig { retention: Duration::from_secs(3600), ..SandboxConfig::default() };
    let first = TestNode::with(FakeRuntime::new(), config.clone());
    let done = first.create("done", DrainPolicy::Wait).await;
    let key = key(&done);
    first.fake.exit(&key, Exit::Code(0));
    within("exit", first.node.wait("done")).await.expect("wait");
    assert!(meta_file(&first, &key).exists(), "the exit is recorded");

    let shorter = SandboxConfig { retention: Duration::ZERO, ..config };
    let second = restart(first, shorter, Vec::new()).await;
    assert!(matches!(second.node.get("done"), Err(SandboxError::NotFound(_))));
    assert!(second.fake.calls().contains(&Call::Forget(key.clone())), "its last files are removed");
    assert!(!meta_file(&second, &key).exists(), "and its record");
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_whose_runtime_state_is_lost_keeps_what_the_node_recorded_and_says_so() {
    let first = TestNode::new();
    let mut request = support::request("lost", DrainPolicy::Stop);
    request.labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
    let created = first.node.create(request).await.expect("create");
    let key = key(&created);
    // The runtime found its process but not its spec: only the key.
    let mut found = Recovered::new(
        SandboxSpec::new(key.clone(), Vec::new()),
        SystemTime::now(),
        RecoveredState::Running { paused: false },
    );
    found.lost = vec![Lost::State("spec.json is damaged: its checksum does not match".into())];
    let second = restart(first, SandboxConfig::default(), vec![found]).await;
    let adopted = second.node.get("lost").expect("adopted");
    assert_eq!(adopted.state, SandboxState::Running);
    assert_eq!(kinds(&adopted), [ConditionKind::RuntimeStateLost]);
    assert_eq!(
        (adopted.argv, adopted.labels, adopted.drain_policy),
        (created.argv, created.labels, DrainPolicy::Stop)
    );
    assert_eq!(adopted.end_time, created.end_time);
    let stopped = second.node.delete("lost", true).await.expect("stoppable");
    assert_eq!(stopped.state, SandboxState::Exited);
}

#[tokio::test(start_paused = true)]
async fn an_unidentified_cgroup_and_a_vanished_sandbox_leave_exited_records_saying_why() {
    let first = TestNode::new();
    let vanished = first.create("vanished", DrainPolicy::Wait).await;
    let stranger = SandboxKey {
        id: SandboxId::parse("unidentified-0a0b0c0d").expect("id"),
        lifecycle: LifecycleId::parse("a0b0c0d").expect("lifecycle"),
    };
    let mut killed = Recovered::new(
        SandboxSpec::new(stranger, Vec::new()),
        SystemTime::now(),
        RecoveredState::Exited(None),
    );
    killed.lost = vec![Lost::Unidentified { cgroup: "mystery".into() }];
    // The runtime finds no trace of `vanished`, and kills what is in the cgroup `mystery`.
    let second = restart(first, SandboxConfig::default(), vec![killed]).await;

    let record = second.node.get("unidentified-0a0b0c0d").expect("recorded");
    assert_eq!(record.state, SandboxState::Exited);
    assert_eq!(kinds(&record), [ConditionKind::Unidentified]);
    let exit = record.exit.expect("exit");
    assert_eq!(exit.reason, ExitReason::Unidentified);
    assert!(exit.message.is_some_and(|m| m.contains("mystery")));

    let gone = second.node.get("vanished").expect("still listed");
    assert_eq!(gone.state, SandboxState::Exited);
    assert_eq!(gone.argv, vanished.argv);
    assert_eq!(kinds(&gone), [ConditionKind::RuntimeStateLost]);
    assert_eq!(gone.exit.expect("exit").exit, None, "its exit is unknown, not made up");
}

#[tokio::test(start_paused = true)]
async fn a_cleaned_up_lifecycle_without_a_record_is_recorded_and_then_forgotten() {
    let config = SandboxConfig { retention: Duration::from_secs(60), ..SandboxConfig::default() };
    let key = SandboxKey {
        id: SandboxId::parse("old").expect("id"),
        lifecycle: LifecycleId::parse("1234").expect("lifecycle"),
    };
    let leftover = Recovered::new(
        SandboxSpec::new(key.clone(), Vec::new()),
        SystemTime::now(),
        RecoveredState::CleanedUp,
    );
    let second = restart(TestNode::with(FakeRuntime::new(), config.clone()), config, vec![leftover]).await;
    let record = second.node.get("old").expect("recorded");
    assert_eq!(record.state, SandboxState::Exited);
    assert_eq!(kinds(&record), [ConditionKind::MetadataLost]);
    tokio::time::sleep(Duration::from_secs(61)).await;
    within("forgotten", async {
        while !second.fake.calls().contains(&Call::Forget(key.clone())) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert!(matches!(second.node.get("old"), Err(SandboxError::NotFound(_))));
}
