//! `sandhost serve`: config -> tracing -> state dir lock -> runtime -> node -> servers -> signals ->
//! drain -> bounded shutdown -> exit code. The wiring reads top to bottom in [`serve`]. Beside it:
//! `budget.rs` (the shutdown budget against the supervisor's stop timeout), `notify.rs` (sd_notify
//! for systemd), `state_dir.rs`.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | every phase was clean |
//! | 1 | startup failed (state dir, lock, runtime, listen address) |
//! | 2 | invalid configuration (the message names the variable) |
//! | 10 | sandboxes were force-stopped (drain deadline, second signal, `FORCE_STOP`, `ForceStop`) |
//! | 11 | a sandbox could not be stopped within the forced phase's bound |
//! | 12 | a service (gRPC or HTTP server) failed on its own |
//! | 13 | a step of the teardown after the drain failed (servers, runtime, state dir) |
//! | 14 | a third signal: exited at once, sandboxes left running for the next agent |
//!
//! When several apply, the code is the first of 11, 12, 13, 10; the message names every one.

use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{LogFormat, ServeArgs, ServeConfig};
use crate::drain::{DrainCoordinator, DrainReport};
use crate::metrics::grpc::GrpcMetrics;
use crate::node::{Node, NodeSettings, open_runtime};

mod budget;
mod notify;
mod state_dir;

use budget::ShutdownBudget;
use state_dir::StateDir;

/// How long the servers get to end their streams and close after the drain.
const SERVER_SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

/// Exit code: sandboxes were force-stopped.
pub const EXIT_FORCE_STOPPED: u8 = 10;
/// Exit code: a sandbox could not be stopped within the forced bound.
pub const EXIT_STOP_FAILED: u8 = 11;
/// Exit code: a service failed on its own.
pub const EXIT_SERVICE_FAILED: u8 = 12;
/// Exit code: a step of the teardown after the drain failed.
pub const EXIT_TEARDOWN_FAILED: u8 = 13;
/// Exit code: a third signal ended the process at once.
pub const EXIT_ABANDONED: u8 = 14;

/// Runs `sandhost serve` to its end and returns the process exit code.
#[must_use]
pub fn run(args: &ServeArgs) -> ExitCode {
    let config = match args.validate(std::env::var("SANDHOST_TOKEN").ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sandhost serve: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sandhost serve: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(config)) {
        Ok(outcome) => outcome.exit_code(),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "sandhost serve failed to start");
            eprintln!("sandhost serve: {error:#}");
            1
        }
    };
    // Sandbox supervisors may still be parked on their exits; they belong to the next agent.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What ended the process, for its exit code and its last message.
#[derive(Debug, Default)]
struct Outcome {
    drain: DrainReport,
    /// Services (gRPC, HTTP) that ended on their own.
    service_failures: Vec<String>,
    /// Steps of the teardown after the drain that failed: stopping the servers, settling and
    /// closing the runtime, marking the state dir cleanly closed.
    teardown_failures: Vec<String>,
}

impl Outcome {
    fn exit_code(&self) -> u8 {
        if !self.drain.failures.is_empty() {
            EXIT_STOP_FAILED
        } else if !self.service_failures.is_empty() {
            EXIT_SERVICE_FAILED
        } else if !self.teardown_failures.is_empty() {
            EXIT_TEARDOWN_FAILED
        } else if self.drain.force_stopped > 0 {
            EXIT_FORCE_STOPPED
        } else {
            0
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.drain.force_stopped > 0 {
            parts.push(format!("{} sandbox(es) force-stopped", self.drain.force_stopped));
        }
        if !self.drain.evacuated.is_empty() {
            let each: Vec<String> =
                self.drain.evacuated.iter().map(|e| format!("{} -> {}", e.sandbox, e.snapshot)).collect();
            parts.push(format!("{} sandbox(es) evacuated to snapshots: {}", each.len(), each.join(", ")));
        }
        for failure in &self.drain.failures {
            parts.push(format!(
                "sandbox {} not stopped: {}",
                failure.sandbox,
                crate::error_chain(&failure.error)
            ));
        }
        for service in &self.service_failures {
            parts.push(format!("service failed: {service}"));
        }
        for step in &self.teardown_failures {
            parts.push(format!("teardown failed: {step}"));
        }
        if parts.is_empty() { f.write_str("clean shutdown") } else { f.write_str(&parts.join("; ")) }
    }
}

/// A server task: its name and its handle.
type Service = (&'static str, JoinHandle<anyhow::Result<()>>);

async fn serve(config: ServeConfig) -> anyhow::Result<Outcome> {
    let state_dir = StateDir::open(&config.state_dir)?;
    let runtime = open_runtime(
        config.runtime,
        state_dir.path(),
        &config.cgroup_parent,
        config.log_max_bytes,
        &config.host_paths,
        &config.warm_pool,
        config.sandbox.start_parallelism,
    )?;
    let mut registry = Registry::default();
    let settings = NodeSettings {
        templates: config.templates.clone(),
        ..NodeSettings::new(config.sandbox.clone(), config.force_shutdown_timeout, state_dir.node_id())
    };
    let node = Node::build(Arc::clone(&runtime), settings, state_dir.path(), &mut registry);
    crate::metrics::register_process(&mut registry);
    let grpc_metrics = GrpcMetrics::register(&mut registry, crate::api::grpc::served_methods());
    let budget = ShutdownBudget::of(&config);
    budget::register_metrics(&mut registry, &budget, config.supervisor_stop_timeout);
    if let Some(warning) = budget.check(config.supervisor_stop_timeout).warning(&budget) {
        tracing::warn!(
            budget = ?budget.total(),
            supervisor_stop_timeout = ?config.supervisor_stop_timeout,
            "{warning}"
        );
    }
    let recovery = node.recover().await.context("re-adopting the sandboxes of the previous agent")?;
    if recovery.adopted > 0 {
        tracing::info!(adopted = recovery.adopted, "re-adopted running sandboxes");
    }
    let coordinator = node.coordinator().clone();

    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen / SANDHOST_LISTEN)", config.listen))?;
    let http_listener = TcpListener::bind(config.http_listen).await.with_context(|| {
        format!("cannot listen on {} (--http-listen / SANDHOST_HTTP_LISTEN)", config.http_listen)
    })?;
    let shutdown = CancellationToken::new();
    let services: Vec<Service> = vec![
        (
            "grpc",
            tokio::spawn({
                let server = crate::api::grpc::serve_with_metrics(
                    grpc_listener,
                    node.clone(),
                    config.token.clone(),
                    Some(grpc_metrics),
                    shutdown.clone(),
                );
                async move { server.await.context("gRPC server") }
            }),
        ),
        (
            "http",
            tokio::spawn({
                let server = crate::api::http::serve(
                    http_listener,
                    node.clone(),
                    Arc::new(registry),
                    shutdown.clone(),
                );
                async move { server.await.context("HTTP server") }
            }),
        ),
    ];
    tracing::info!(
        grpc = %config.listen,
        http = %config.http_listen,
        state_dir = %config.state_dir.display(),
        runtime = node.info().runtime,
        auth = config.token.is_some(),
        "sandhost serving"
    );
    // READY=1 and what follows it, for systemd (nothing without NOTIFY_SOCKET).
    let _notifier = notify::spawn(node.watch_drain(), budget);

    let (services, service_failures) = wait_for_shutdown(&config, &coordinator, services).await?;

    // The drain is complete (DRAINED): stop the servers, settle and close the runtime, close the
    // state dir.
    shutdown.cancel();
    let mut outcome =
        Outcome { drain: coordinator.report(), service_failures, teardown_failures: Vec::new() };
    for (name, handle) in services {
        match tokio::time::timeout(SERVER_SHUTDOWN_BOUND, handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => outcome.teardown_failures.push(format!("{name} server: {error:#}")),
            Ok(Err(join)) => outcome.teardown_failures.push(format!("{name} server: {join}")),
            Err(_) => outcome
                .teardown_failures
                .push(format!("{name} server did not stop within {SERVER_SHUTDOWN_BOUND:?}")),
        }
    }
    coordinator.complete_shutdown();
    // Slow deletes the backend left running in the background end before the state dir closes.
    if tokio::time::timeout(config.force_shutdown_timeout, runtime.settle()).await.is_err() {
        outcome.teardown_failures.push(format!(
            "the runtime's background deletes did not finish within {:?}",
            config.force_shutdown_timeout
        ));
    }
    if let Err(error) = runtime.close().await {
        outcome.teardown_failures.push(format!("runtime: {}", crate::error_chain(&error)));
    }
    // The records written on the way (synced in the background) are on disk before the clean exit
    // is.
    let _ = tokio::task::spawn_blocking(sandhost_runtime::durable::sync).await;
    if let Err(error) = state_dir.close_cleanly() {
        outcome.teardown_failures.push(format!("state dir: {error:#}"));
    }
    let code = outcome.exit_code();
    match code {
        0 => tracing::info!(%outcome, "sandhost stopped"),
        // Stopping what was left at the deadline is what a bounded drain is for: not an error.
        EXIT_FORCE_STOPPED => tracing::warn!(%outcome, exit_code = code, "sandhost stopped"),
        _ => tracing::error!(%outcome, exit_code = code, "sandhost stopped"),
    }
    if code != 0 {
        eprintln!("sandhost serve: {outcome}");
    }
    Ok(outcome)
}

/// Waits for signals and service exits; drives the shutdown drain; returns once DRAINED.
async fn wait_for_shutdown(
    config: &ServeConfig,
    coordinator: &DrainCoordinator,
    mut services: Vec<Service>,
) -> anyhow::Result<(Vec<Service>, Vec<String>)> {
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut signals = 0u32;
    let mut failures = Vec::new();
    let drained = coordinator.wait_drained();
    tokio::pin!(drained);
    let mut shutting_down = false;
    loop {
        let next_exit = async {
            if services.is_empty() {
                std::future::pending::<()>().await;
            }
            let (index, result) = wait_any(&mut services).await;
            (index, result)
        };
        tokio::select! {
            () = &mut drained, if shutting_down => break,
            _ = terminate.recv() => signals += 1,
            _ = interrupt.recv() => signals += 1,
            (index, result) = next_exit => {
                let (name, _) = services.remove(index);
                let message = match result {
                    Ok(Ok(())) => format!("{name}: exited unexpectedly"),
                    Ok(Err(error)) => format!("{name}: {error:#}"),
                    Err(join) => format!("{name}: {join}"),
                };
                tracing::error!(service = name, error = %message, "a service failed on its own; shutting down");
                failures.push(message);
                if !shutting_down {
                    shutting_down = true;
                    coordinator.begin_shutdown(config.shutdown_drain_timeout, config.force_stop);
                }
                continue;
            }
        }
        match signals {
            1 => {
                tracing::info!(
                    drain_timeout = ?config.shutdown_drain_timeout,
                    force_stop = config.force_stop,
                    "shutdown signal: draining (a second signal forces, a third exits at once)"
                );
                shutting_down = true;
                coordinator.begin_shutdown(config.shutdown_drain_timeout, config.force_stop);
            }
            2 => {
                tracing::warn!("second signal: stopping every sandbox now");
                coordinator.escalate();
            }
            _ => {
                let live = coordinator.progress().live;
                // The operator asked for it (and the sandboxes run on): a warning, not an error.
                tracing::warn!(
                    live,
                    "third signal: exiting at once; the sandboxes are left for the next agent to re-adopt"
                );
                eprintln!("sandhost serve: third signal: exited at once, leaving {live} sandbox(es) running");
                std::process::exit(i32::from(EXIT_ABANDONED));
            }
        }
    }
    Ok((services, failures))
}

/// Waits for the first of the services to end.
async fn wait_any(services: &mut [Service]) -> (usize, Result<anyhow::Result<()>, tokio::task::JoinError>) {
    let futures = services.iter_mut().map(|(_, handle)| handle);
    let (result, index, _) = futures::future::select_all(futures).await;
    (index, result)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use sandhost_runtime::fake::FakeRuntime;

    use super::*;
    use crate::drain::{DrainFailure, StopFailure};

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config() -> ServeConfig {
        Args::parse_from(["serve", "--state-dir", "/nonexistent"]).serve.validate(None).expect("config")
    }

    fn coordinator(dir: &std::path::Path) -> DrainCoordinator {
        let settings =
            NodeSettings::new(crate::config::SandboxConfig::default(), Duration::from_secs(30), "test");
        let node = Node::build(Arc::new(FakeRuntime::new()), settings, dir, &mut Registry::default());
        node.coordinator().clone()
    }

    #[tokio::test]
    async fn a_service_that_fails_on_its_own_shuts_the_node_down_with_a_non_zero_exit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let coordinator = coordinator(dir.path());
        let shutdown = CancellationToken::new();
        let http_shutdown = shutdown.clone();
        let services: Vec<Service> = vec![
            ("grpc", tokio::spawn(async { Err(anyhow::anyhow!("the listener broke")) })),
            (
                "http",
                tokio::spawn(async move {
                    http_shutdown.cancelled().await;
                    Ok(())
                }),
            ),
        ];
        let (left, failures) = tokio::time::timeout(
            Duration::from_secs(60),
            wait_for_shutdown(&config(), &coordinator, services),
        )
        .await
        .expect("hang guard")
        .expect("signals installed");
        assert_eq!(failures, ["grpc: the listener broke"]);
        assert_eq!(left.len(), 1, "the healthy service is still to be stopped");
        assert!(coordinator.progress().shutting_down, "the failure started a shutdown");
        let outcome = Outcome {
            drain: coordinator.report(),
            service_failures: failures,
            teardown_failures: Vec::new(),
        };
        assert_eq!(outcome.exit_code(), EXIT_SERVICE_FAILED);
        assert!(outcome.to_string().contains("service failed: grpc: the listener broke"));
        shutdown.cancel();
    }

    #[test]
    fn the_exit_report_names_each_evacuated_sandbox_and_its_snapshot() {
        let drain = DrainReport {
            checkpointed: 2,
            evacuated: vec![
                crate::drain::Evacuation { sandbox: "a".into(), snapshot: "a-1".into() },
                crate::drain::Evacuation { sandbox: "b".into(), snapshot: "b-1".into() },
            ],
            ..DrainReport::default()
        };
        let outcome = Outcome { drain, ..Outcome::default() };
        assert_eq!(outcome.exit_code(), 0, "an evacuation is a clean exit");
        assert_eq!(outcome.to_string(), "2 sandbox(es) evacuated to snapshots: a -> a-1, b -> b-1");
    }

    #[tokio::test]
    async fn a_clean_exit_of_a_service_is_a_failure_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let coordinator = coordinator(dir.path());
        let services: Vec<Service> = vec![("http", tokio::spawn(async { Ok(()) }))];
        let (_, failures) = tokio::time::timeout(
            Duration::from_secs(60),
            wait_for_shutdown(&config(), &coordinator, services),
        )
        .await
        .expect("hang guard")
        .expect("signals installed");
        assert_eq!(failures, ["http: exited unexpectedly"]);
    }

    #[test]
    fn exit_codes_follow_the_documented_precedence() {
        let sandbox = sandhost_runtime::SandboxKey {
            id: sandhost_runtime::SandboxId::parse("a").expect("id"),
            lifecycle: sandhost_runtime::LifecycleId::parse("1").expect("lifecycle"),
        };
        let failure =
            DrainFailure { sandbox, error: StopFailure::NotStoppedInTime { bound: Duration::from_secs(3) } };
        let mut outcome = Outcome::default();
        assert_eq!(outcome.exit_code(), 0);
        outcome.drain.force_stopped = 2;
        assert_eq!(outcome.exit_code(), EXIT_FORCE_STOPPED);
        outcome.teardown_failures.push("state dir".into());
        assert_eq!(outcome.exit_code(), EXIT_TEARDOWN_FAILED);
        outcome.service_failures.push("grpc".into());
        assert_eq!(outcome.exit_code(), EXIT_SERVICE_FAILED);
        outcome.drain.failures.push(failure);
        assert_eq!(outcome.exit_code(), EXIT_STOP_FAILED);
        let message = outcome.to_string();
        for part in [
            "2 sandbox(es) force-stopped",
            "sandbox a/1 not stopped: not stopped within FORCE_SHUTDOWN_TIMEOUT (3s)",
            "service failed: grpc",
            "teardown failed: state dir",
        ] {
            assert!(message.contains(part), "{message}");
        }
    }
}
