//! The gRPC API in process, over the recording fake runtime (no root, nothing touches the host): the
//! drain as a client sees it, streams that end when the server shuts down, checkpoints on a backend
//! that can. The real binary is driven in `api_e2e.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use sandhost::sandbox::DrainPolicy;
use sandhost_proto::v1 as pb;
use sandhost_proto::v1::node_service_client::NodeServiceClient;
use sandhost_proto::v1::sandbox_service_client::SandboxServiceClient;
use sandhost_runtime::Exit;
use sandhost_runtime::fake::FakeRuntime;
use support::{TestNode, within};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

/// A gRPC server over a [`TestNode`] on a loopback port; cancelled (and awaited) on drop.
struct Server {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), sandhost::api::grpc::GrpcServeError>>>,
    channel: Channel,
}

impl Server {
    async fn start(node: &TestNode, token: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sandhost::api::grpc::serve(
            listener,
            node.node.clone(),
            token.map(str::to_owned),
            shutdown.clone(),
        ));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        Self { shutdown, task: Some(task), channel }
    }

    fn sandboxes(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(self.channel.clone())
    }

    fn nodes(&self) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel.clone())
    }

    async fn health(&self) -> ServingStatus {
        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
        HealthClient::new(self.channel.clone()).check(request).await.unwrap().into_inner().status()
    }

    /// Cancels the server and waits until it has returned.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("the server's stop", task).await.unwrap().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn create(id: &str) -> pb::CreateRequest {
    pb::CreateRequest { id: id.into(), argv: vec!["sleep".into(), "1000".into()], ..Default::default() }
}

#[tokio::test]
async fn a_create_admitted_before_the_drain_completes_and_later_ones_are_refused_retryably() {
    let node = TestNode::new();
    let server = Server::start(&node, None).await;
    assert_eq!(server.health().await, ServingStatus::Serving);

    // A Create admitted and held in the runtime's start.
    let hold = node.fake.hold_starts();
    let mut early = server.sandboxes();
    let in_flight = tokio::spawn(async move { early.create(create("early")).await });
    within("the start to be held", hold.wait_held(1)).await;

    // The drain begins while it is in flight.
    let progress = server.nodes().drain(pb::DrainRequest::default()).await.unwrap().into_inner();
    assert_eq!(progress.progress.unwrap().status(), pb::NodeStatus::Draining);

    // Once DRAINING is visible, health says so and new Creates are refused with RetryInfo.
    assert_eq!(server.health().await, ServingStatus::NotServing);
    let refused = server.sandboxes().create(create("late")).await.expect_err("draining");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("DRAINING"), "{refused:?}");
    assert!(refused.get_error_details().retry_info().is_some());
    let info = server.nodes().get_info(pb::GetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.status(), pb::NodeStatus::Draining);

    // The admitted start is not aborted by the drain.
    hold.release();
    let created =
        within("the admitted create", in_flight).await.unwrap().expect("admitted before the drain: OK");
    assert_eq!(created.into_inner().sandbox.unwrap().state(), pb::SandboxState::Running);

    // Reads and Deletes keep working while draining; the drain ends once it is gone.
    let mut watch = server.nodes().watch_drain(pb::WatchDrainRequest {}).await.unwrap().into_inner();
    server.sandboxes().get(pb::GetRequest { id: "early".into() }).await.unwrap();
    server.sandboxes().delete(pb::DeleteRequest { id: "early".into(), now: true }).await.unwrap();
    loop {
        let update = within("the drain's end", watch.message()).await.unwrap().expect("an update");
        if update.progress.unwrap().status() == pb::NodeStatus::Drained {
            break;
        }
    }

    // Undrain: READY and SERVING again.
    server.nodes().undrain(pb::UndrainRequest {}).await.unwrap();
    assert_eq!(server.health().await, ServingStatus::Serving);
    server.sandboxes().create(create("after")).await.expect("ready again");
}

#[tokio::test]
async fn long_streams_end_with_unavailable_when_the_server_shuts_down() {
    let node = TestNode::new();
    let mut server = Server::start(&node, None).await;
    let info = node.create("talker", DrainPolicy::Wait).await;
    node.fake.write_log(&support::key(&info), b"hello\n");

    let mut logs = server
        .sandboxes()
        .logs(pb::LogsRequest { id: "talker".into(), follow: true, since: None })
        .await
        .unwrap()
        .into_inner();
    let first = within("the first log chunk", logs.message()).await.unwrap().expect("a chunk");
    assert_eq!(first.data, b"hello\n");
    let mut watch = server.nodes().watch_drain(pb::WatchDrainRequest {}).await.unwrap().into_inner();
    within("the first update", watch.message()).await.unwrap().expect("an update");

    server.stop().await;

    let cut = within("the logs' end", logs.message()).await.expect_err("cut by the shutdown");
    assert_eq!(cut.code(), Code::Unavailable, "{cut:?}");
    let cut = within("the watch's end", watch.message()).await.expect_err("cut by the shutdown");
    assert_eq!(cut.code(), Code::Unavailable, "{cut:?}");
}

#[tokio::test]
async fn logs_follow_ends_when_the_sandbox_exits_and_wait_returns_its_exit() {
    let node = TestNode::new();
    let server = Server::start(&node, None).await;
    let info = node.create("short", DrainPolicy::Wait).await;
    let key = support::key(&info);
    node.fake.write_log(&key, b"one\n");

    let mut logs = server
        .sandboxes()
        .logs(pb::LogsRequest { id: "short".into(), follow: true, since: None })
        .await
        .unwrap()
        .into_inner();
    let mut waiter = server.sandboxes();
    let wait = tokio::spawn(async move { waiter.wait(pb::WaitRequest { id: "short".into() }).await });
    let mut received = within("a chunk", logs.message()).await.unwrap().expect("a chunk").data;
    node.fake.write_log(&key, b"two\n");
    node.fake.exit(&key, Exit::Code(7));
    while let Some(chunk) = within("the rest", logs.message()).await.unwrap() {
        received.extend(chunk.data);
    }
    assert_eq!(received, b"one\ntwo\n");

    let exited = within("the wait", wait).await.unwrap().unwrap().into_inner().sandbox.unwrap();
    let exit = exited.exit.unwrap();
    assert_eq!(exit.status, Some(pb::sandbox_exit::Status::Code(7)));
    assert_eq!(exit.reason(), pb::ExitReason::Exited);
}

#[tokio::test]
async fn logs_since_a_time_over_grpc_and_a_bad_timestamp_names_since() {
    let node = TestNode::new();
    let server = Server::start(&node, None).await;
    let info = node.create("dated", DrainPolicy::Wait).await;
    let key = support::key(&info);
    let early = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    node.fake.write_log_at(&key, b"early\n", early);
    node.fake.write_log_at(&key, b"late\n", early + std::time::Duration::from_secs(2));

    let since = Some(prost_types::Timestamp::from(early + std::time::Duration::from_secs(1)));
    let request = pb::LogsRequest { id: "dated".into(), follow: false, since };
    let mut logs = server.sandboxes().logs(request).await.unwrap().into_inner();
    let mut received = Vec::new();
    while let Some(chunk) = within("a chunk", logs.message()).await.unwrap() {
        assert_eq!(chunk.dropped_bytes, 0);
        received.extend(chunk.data);
    }
    assert_eq!(received, b"late\n");

    for (seconds, nanos) in [(1, 1_000_000_000), (1, -1), (-62_135_596_801, 0), (i64::MAX, 0)] {
        let since = Some(prost_types::Timestamp { seconds, nanos });
        let request = pb::LogsRequest { id: "dated".into(), follow: true, since };
        let status = server.sandboxes().logs(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}.{nanos}: {status:?}");
        let details = status.get_error_details();
        let field = &details.bad_request().expect("a BadRequest detail").field_violations[0].field;
        assert_eq!(field, "since");
    }
}

#[tokio::test]
async fn checkpoints_on_a_backend_that_can() {
    let node = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    let server = Server::start(&node, None).await;
    let mut sandboxes = server.sandboxes();
    sandboxes.create(create("saved")).await.unwrap();

    let snapshot = sandboxes
        .checkpoint(pb::CheckpointRequest { id: "saved".into(), stop: false })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snapshot.source_sandbox_id, "saved");
    let listed = sandboxes.list_snapshots(pb::ListSnapshotsRequest {}).await.unwrap().into_inner().snapshots;
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [snapshot.id.as_str()]);

    // A restore runs the snapshot's command: one given with it is refused, naming the field.
    let refused = sandboxes
        .create(pb::CreateRequest { restore_from: snapshot.id.clone(), ..create("copy") })
        .await
        .expect_err("a command with a restore");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("argv"), "{refused:?}");
    let restored = sandboxes
        .create(pb::CreateRequest { restore_from: snapshot.id.clone(), argv: Vec::new(), ..create("copy") })
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert_eq!(restored.restored_from, snapshot.id);
    assert!(restored.argv.is_empty() && restored.template.is_empty(), "{restored:?}");

    sandboxes.delete_snapshot(pb::DeleteSnapshotRequest { id: snapshot.id.clone() }).await.unwrap();
    let gone = sandboxes
        .delete_snapshot(pb::DeleteSnapshotRequest { id: snapshot.id.clone() })
        .await
        .expect_err("already deleted");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

#[tokio::test]
async fn a_paused_sandbox_is_paused_again_after_a_checkpoint_and_the_table_follows_a_failed_pause() {
    use sandhost::sandbox::SandboxState;
    use sandhost_runtime::fake::{Behaviour, Op};
    let node = TestNode::with(FakeRuntime::with_checkpoint(), sandhost::config::SandboxConfig::default());
    let server = Server::start(&node, None).await;
    let mut sandboxes = server.sandboxes();
    let key = |id: &str| node.fake.running().into_iter().find(|k| k.id.as_str() == id).unwrap();
    for id in ["kept", "failed"] {
        sandboxes.create(create(id)).await.unwrap();
        node.node.pause(id).await.unwrap();
    }
    // The checkpoint thaws it (as gvisor must); the manager pauses it again.
    sandboxes.checkpoint(pb::CheckpointRequest { id: "kept".into(), stop: false }).await.unwrap();
    assert_eq!(node.node.get("kept").unwrap().state, SandboxState::Paused);
    assert!(node.fake.is_paused(&key("kept")));
    // A running one is not paused by it.
    sandboxes.create(create("running")).await.unwrap();
    sandboxes.checkpoint(pb::CheckpointRequest { id: "running".into(), stop: false }).await.unwrap();
    assert_eq!(node.node.get("running").unwrap().state, SandboxState::Running);
    assert!(!node.fake.is_paused(&key("running")));
    // Where pausing again fails, it runs, and the table says so.
    node.fake.script(Op::Pause, Behaviour::Fail);
    sandboxes.checkpoint(pb::CheckpointRequest { id: "failed".into(), stop: false }).await.unwrap();
    assert_eq!(node.node.get("failed").unwrap().state, SandboxState::Running);
    assert!(!node.fake.is_paused(&key("failed")));
}

#[tokio::test]
async fn force_stop_through_the_api_reports_what_it_stopped() {
    let node = TestNode::new();
    let server = Server::start(&node, None).await;
    for id in ["a", "b"] {
        server.sandboxes().create(create(id)).await.unwrap();
    }
    let mut watch = server.nodes().watch_drain(pb::WatchDrainRequest {}).await.unwrap().into_inner();
    server.nodes().force_stop(pb::ForceStopRequest {}).await.unwrap();
    let last = loop {
        let progress =
            within("the forced stop", watch.message()).await.unwrap().expect("an update").progress.unwrap();
        if progress.status() == pb::NodeStatus::Drained {
            break progress;
        }
    };
    assert_eq!(last.force_stopped, 2);
    assert_eq!(last.live, 0);
    assert!(last.failures.is_empty(), "{:?}", last.failures);
    let listed = server.sandboxes().list(pb::ListRequest::default()).await.unwrap().into_inner().sandboxes;
    for sandbox in listed {
        assert_eq!(sandbox.exit.unwrap().reason(), pb::ExitReason::ForceStopped);
    }
}

#[tokio::test]
async fn with_a_token_health_and_reflection_need_it_too() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request::MessageRequest};

    let node = TestNode::new();
    let server = Server::start(&node, Some("s3cret")).await;
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let refused = HealthClient::new(server.channel.clone()).check(request).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::once(ask))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let refused = server.sandboxes().list(pb::ListRequest::default()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

/// Every page of `List`, followed through its tokens; each page's size checked against `page_size`.
async fn all_pages(server: &Server, page_size: u32) -> (Vec<String>, usize) {
    let mut client = server.sandboxes().max_decoding_message_size(4 << 20);
    let (mut ids, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let request = pb::ListRequest { page_size, page_token: token.clone(), ..Default::default() };
        let reply = client.list(request).await.unwrap().into_inner();
        let most = if page_size == 0 { 100 } else { page_size.min(1000) as usize };
        assert!(
            reply.sandboxes.len() <= most,
            "a page of {} for a size of {page_size}",
            reply.sandboxes.len()
        );
        ids.extend(reply.sandboxes.into_iter().map(|s| s.id));
        pages += 1;
        if reply.next_page_token.is_empty() {
            return (ids, pages);
        }
        token = reply.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_sandbox_once_in_order() {
    let t = TestNode::new();
    for n in 0..250 {
        t.create(&format!("s{n:03}"), DrainPolicy::Wait).await;
    }
    let mut server = Server::start(&t, None).await;
    let mut expected: Vec<String> = (0..250).map(|n| format!("s{n:03}")).collect();
    expected.sort();
    for (page_size, pages) in [(0, 3), (100, 3), (7, 36), (5000, 1)] {
        let (ids, got) = all_pages(&server, page_size).await;
        assert_eq!(ids, expected, "page size {page_size}");
        assert_eq!(got, pages, "page size {page_size}");
    }
    let status = server
        .sandboxes()
        .list(pb::ListRequest { page_token: "../../etc".into(), ..Default::default() })
        .await
        .expect_err("a token this node never gave");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations[0].field, "page_token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_reply_fits_a_stock_client_however_large_the_sandboxes() {
    let t = TestNode::new();
    // Seventy sandboxes of 250 KB of argv each: 17 MB in all, more than the 4 MiB a stock client takes.
    let big = "x".repeat(250 * 1024);
    for n in 0..70 {
        let request = sandhost::sandbox::CreateRequest {
            id: Some(format!("big{n:02}")),
            argv: vec!["echo".into(), big.clone()],
            ..sandhost::sandbox::CreateRequest::default()
        };
        t.node.create(request).await.expect("create");
    }
    let mut server = Server::start(&t, None).await;
    let (ids, pages) = all_pages(&server, 1000).await;
    assert_eq!(ids.len(), 70, "every sandbox, once");
    assert!(pages >= 6, "the replies were cut by their size: {pages} pages");
    server.stop().await;
}

/// A message whose field 1 is a number, where `CreateRequest`'s field 1 is a string: sent as a
/// CreateRequest, it is not valid protobuf for it.
#[derive(Clone, PartialEq, prost::Message)]
struct NotACreateRequest {
    #[prost(uint64, tag = "1")]
    id: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_reach_a_handler_get_the_codes_of_the_error_table() {
    let t = TestNode::new();
    let mut server = Server::start(&t, None).await;

    // Not valid protobuf for the method: the client's fault, INVALID_ARGUMENT (tonic says INTERNAL,
    // which the table keeps for runtime failures).
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<NotACreateRequest, pb::CreateResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/sandhost.v1.SandboxService/Create");
    let status =
        grpc.unary(tonic::Request::new(NotACreateRequest { id: 7 }), path, codec).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Over the size limit: RESOURCE_EXHAUSTED, the gRPC convention (tonic says OUT_OF_RANGE).
    let huge = "x".repeat(sandhost::api::grpc::MAX_REQUEST_BYTES + 1);
    let request = pb::CreateRequest { argv: vec!["echo".into(), huge], ..Default::default() };
    let status = server.sandboxes().create(request).await.expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Nothing was created; the node still answers.
    let listed = server.sandboxes().list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert!(listed.sandboxes.is_empty(), "{listed:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_names_the_field_of_the_request_that_carried_it() {
    let t = TestNode::new();
    t.create("a", DrainPolicy::Wait).await;
    let mut server = Server::start(&t, None).await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.get_error_details().bad_request().expect("BadRequest").field_violations[0].field.clone()
    };
    // DeleteSnapshot's field is `id`.
    let status = server
        .sandboxes()
        .delete_snapshot(pb::DeleteSnapshotRequest { id: "../x".into() })
        .await
        .expect_err("not an id");
    assert_eq!(field(status), "id");
    // An end time beyond the longest timeout is the `end_time`'s fault, not `timeout`'s.
    let far = std::time::SystemTime::now() + std::time::Duration::from_secs(60 * 24 * 3600);
    let request = pb::UpdateRequest {
        id: "a".into(),
        end: Some(pb::update_request::End::EndTime(far.into())),
        labels: None,
    };
    assert_eq!(field(server.sandboxes().update(request).await.expect_err("too far")), "end_time");
    // A Duration whose nanos are a second or more is refused, not carried into its seconds.
    let request = pb::UpdateRequest {
        id: "a".into(),
        end: Some(pb::update_request::End::Timeout(prost_types::Duration {
            seconds: 1,
            nanos: 2_000_000_000,
        })),
        labels: None,
    };
    assert_eq!(field(server.sandboxes().update(request).await.expect_err("bad nanos")), "timeout");
    server.stop().await;
}
