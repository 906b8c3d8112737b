//! `grpc.health.v1.Health`, one answer per name:
//!
//! - `""` is **admission**: SERVING only while the node status is READY (what load balancers and
//!   probes watch: a draining node takes no new sandboxes), driven by the drain's progress watch.
//! - `sandhost.v1.SandboxService` and `sandhost.v1.NodeService` are SERVING for as long as the
//!   process serves: a draining node still answers Get, Wait, Logs, Undrain and WatchDrain, so a
//!   client on grpc's health-checked channel keeps reaching them. NOT_SERVING only at shutdown.
//!
//! `Watch` sends changes only: the driver sets a name only when its status changes (the progress
//! watch fires on every count change), and each stream drops repeats besides. `Watch` streams end
//! when the server shuts down (tonic-health's own never end), so they cannot hold the shutdown up.

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

/// The name whose health is admission (the server as a whole).
pub(crate) const ADMISSION: &str = "";
/// The services, SERVING for as long as the process serves.
pub(crate) const SERVICES: [&str; 2] = ["sandhost.v1.SandboxService", "sandhost.v1.NodeService"];

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
        let changes = stream.scan(None, |last: &mut Option<i32>, item| {
            let repeat = matches!((&item, *last), (Ok(response), Some(status)) if response.status == status);
            if let Ok(response) = &item {
                *last = Some(response.status);
            }
            std::future::ready(Some((!repeat).then_some(item)))
        });
        let changes = changes.filter_map(std::future::ready);
        Ok(Response::new(Box::pin(changes.take_until(self.shutdown.clone().cancelled_owned()))))
    }
}

/// The services SERVING until the server stops; admission SERVING while the node is READY, set
/// only when it changes. Everything NOT_SERVING once the server stops.
async fn drive(
    reporter: HealthReporter,
    mut progress: watch::Receiver<DrainProgress>,
    shutdown: CancellationToken,
) {
    for name in SERVICES {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    let mut admission = None;
    loop {
        let status = serving_status(progress.borrow_and_update().status);
        if admission != Some(status) {
            reporter.set_service_status(ADMISSION, status).await;
            admission = Some(status);
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    for name in std::iter::once(ADMISSION).chain(SERVICES) {
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

        // Draining, then counts that change while it drains: one NOT_SERVING, not one per change.
        tx.send_replace(progress(NodeStatus::Draining));
        assert_eq!(watch.next().await.expect("an item").expect("ok").status(), Wire::NotServing);
        for live in 1..=5 {
            tx.send_replace(DrainProgress { live, ..progress(NodeStatus::Draining) });
        }
        tx.send_replace(progress(NodeStatus::Forcing));
        assert_eq!(check(&api, ADMISSION).await, Wire::NotServing);
        for name in SERVICES {
            assert_eq!(check(&api, name).await, Wire::Serving, "{name} serves while the node drains");
        }
        tx.send_replace(progress(NodeStatus::Ready));
        assert_eq!(
            watch.next().await.expect("an item").expect("ok").status(),
            Wire::Serving,
            "the next message after NOT_SERVING is the change back, no repeat between"
        );

        shutdown.cancel();
        task.await.expect("the driver ends");
        // The stream ends (after any last update) instead of waiting forever.
        let rest: Vec<Wire> = watch.map(|item| item.expect("ok").status()).collect().await;
        assert!(rest.iter().all(|s| *s == Wire::NotServing) && rest.len() <= 1, "{rest:?}");
        for name in std::iter::once(ADMISSION).chain(SERVICES) {
            assert_eq!(check(&api, name).await, Wire::NotServing, "{name:?} at shutdown");
        }
    }
}
