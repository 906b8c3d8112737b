//! `grpc.health.v1.Health`: SERVING (for `""` and both services) only while the node status is READY,
//! driven by the drain's progress watch; NOT_SERVING once the server stops. `Watch` streams end when
//! the server shuts down (tonic-health's own never end), so they cannot hold the shutdown up.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::drain::{DrainProgress, NodeStatus};

/// The names the health service reports: the server as a whole, and each service.
pub(crate) const HEALTH_NAMES: [&str; 3] = ["", "sandhost.v1.SandboxService", "sandhost.v1.NodeService"];

/// The health service and the task that keeps it in step with `progress` until `shutdown`.
pub(crate) fn service(
    progress: watch::Receiver<DrainProgress>,
    shutdown: CancellationToken,
) -> (HealthServer<HealthApi>, JoinHandle<()>) {
    let reporter = HealthReporter::new();
    let api = HealthApi {
        inner: HealthService::from_health_reporter(reporter.clone()),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(drive(reporter, progress, shutdown));
    (HealthServer::new(api), task)
}

/// tonic-health's service, with `Watch` streams that end on shutdown.
#[derive(Debug)]
pub(crate) struct HealthApi {
    inner: HealthService,
    shutdown: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream.take_until(self.shutdown.clone().cancelled_owned()))))
    }
}

/// SERVING while the node is READY, NOT_SERVING otherwise, and NOT_SERVING once the server stops.
async fn drive(
    reporter: HealthReporter,
    mut progress: watch::Receiver<DrainProgress>,
    shutdown: CancellationToken,
) {
    loop {
        let status = serving_status(progress.borrow_and_update().status);
        for name in HEALTH_NAMES {
            reporter.set_service_status(name, status).await;
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
}

fn serving_status(status: NodeStatus) -> ServingStatus {
    if status == NodeStatus::Ready { ServingStatus::Serving } else { ServingStatus::NotServing }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tonic_health::pb::health_check_response::ServingStatus as Wire;

    use super::*;

    #[test]
    fn only_ready_is_serving() {
        for status in NodeStatus::ALL {
            let expected =
                if status == NodeStatus::Ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            assert_eq!(serving_status(status), expected, "{status}");
        }
    }

    fn progress(status: NodeStatus) -> DrainProgress {
        DrainProgress::idle(status, SystemTime::UNIX_EPOCH)
    }

    async fn check(server: &HealthApi, name: &str) -> Wire {
        let request = Request::new(HealthCheckRequest { service: name.to_owned() });
        server.check(request).await.expect("registered").into_inner().status()
    }

    #[tokio::test]
    async fn health_follows_the_status_and_watch_ends_on_shutdown() {
        let (tx, rx) = watch::channel(progress(NodeStatus::Ready));
        let shutdown = CancellationToken::new();
        let reporter = HealthReporter::new();
        let api = HealthApi {
            inner: HealthService::from_health_reporter(reporter.clone()),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(drive(reporter, rx, shutdown.clone()));

        let mut watch = api
            .watch(Request::new(HealthCheckRequest { service: String::new() }))
            .await
            .expect("watch")
            .into_inner();
        // The first SERVING (the reporter starts at SERVING for "").
        assert_eq!(watch.next().await.expect("an item").expect("ok").status(), Wire::Serving);

        tx.send_replace(progress(NodeStatus::Draining));
        loop {
            let item = watch.next().await.expect("an item").expect("ok");
            if item.status() == Wire::NotServing {
                break;
            }
        }
        for name in HEALTH_NAMES {
            assert_eq!(check(&api, name).await, Wire::NotServing, "{name:?}");
        }
        tx.send_replace(progress(NodeStatus::Ready));
        loop {
            let item = watch.next().await.expect("an item").expect("ok");
            if item.status() == Wire::Serving {
                break;
            }
        }

        shutdown.cancel();
        task.await.expect("the driver ends");
        // The stream ends (after any last update) instead of waiting forever.
        while watch.next().await.is_some() {}
        assert_eq!(check(&api, "").await, Wire::NotServing);
    }
}
