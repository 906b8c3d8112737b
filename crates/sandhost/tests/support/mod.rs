//! A node over the recording fake runtime, for the manager and drain tests. Everything lives in
//! memory and a temp dir; nothing touches the host.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sandhost::config::SandboxConfig;
use sandhost::drain::{DrainCoordinator, NodeStatus};
use sandhost::node::{Node, NodeSettings};
use sandhost::sandbox::{CreateRequest, DrainPolicy, Manager, SandboxInfo};
use sandhost_runtime::SandboxKey;
use sandhost_runtime::fake::FakeRuntime;

/// The memory of the fake host the tests' nodes run on.
pub const TEST_HOST_MEMORY: u64 = 1 << 40;

/// The forced phase's bound in these tests.
pub const FORCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A node on the fake runtime.
pub struct TestNode {
    pub node: Node,
    pub fake: FakeRuntime,
    pub manager: Arc<Manager>,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// A node with default limits over a fresh fake that cannot checkpoint.
    pub fn new() -> Self {
        Self::with(FakeRuntime::new(), SandboxConfig::default())
    }

    /// A node over `fake` with `config`, in a fresh state dir.
    pub fn with(fake: FakeRuntime, config: SandboxConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::in_dir(fake, config, dir)
    }

    /// A node over `fake` with `config`, in `dir` (a restarted agent reuses the dir).
    pub fn in_dir(fake: FakeRuntime, config: SandboxConfig, dir: tempfile::TempDir) -> Self {
        // A host of 1 TiB, whatever this one has: the tests' own sandboxes never fill it, and a test
        // of the capacity sets its own.
        Self::on_host(fake, config, dir, TEST_HOST_MEMORY)
    }

    /// A node over `fake` with `config`, in `dir`, on a host of `memory` bytes.
    pub fn on_host(fake: FakeRuntime, config: SandboxConfig, dir: tempfile::TempDir, memory: u64) -> Self {
        let mut registry = Registry::default();
        let mut settings = NodeSettings::new(config, FORCE_TIMEOUT, "test-node");
        settings.capacity.memory_bytes = memory;
        let node = Node::build(Arc::new(fake.clone()), settings, dir.path(), &mut registry);
        let manager = Arc::clone(node.manager());
        Self { node, fake, manager, registry, dir }
    }

    pub fn coordinator(&self) -> &DrainCoordinator {
        self.node.coordinator()
    }

    /// Creates a `sleep` sandbox with this id and drain policy.
    pub async fn create(&self, id: &str, policy: DrainPolicy) -> SandboxInfo {
        self.node.create(request(id, policy)).await.expect("create")
    }

    pub fn status(&self) -> NodeStatus {
        self.node.status()
    }

    /// Waits until the sandbox `id` is in the table (its Create was admitted).
    pub async fn until_admitted(&self, id: &str) {
        within("admitted", async {
            while self.node.get(id).is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

/// A Create request for a long `sleep`.
pub fn request(id: &str, policy: DrainPolicy) -> CreateRequest {
    CreateRequest {
        id: Some(id.to_owned()),
        argv: vec!["sleep".into(), "1000".into()],
        drain_policy: policy,
        ..CreateRequest::default()
    }
}

/// The runtime key of a sandbox.
pub fn key(info: &SandboxInfo) -> SandboxKey {
    SandboxKey { id: info.id.clone(), lifecycle: info.lifecycle.clone() }
}

/// Fails the test instead of hanging it.
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish"))
}

/// The node's metrics, in the text format.
pub fn metrics_text(t: &TestNode) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &t.registry).expect("encode");
    text
}
