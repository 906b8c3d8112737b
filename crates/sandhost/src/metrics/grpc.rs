//! Per-method gRPC metrics: calls by service, method and status code, and their duration. The API
//! layer (`api/grpc_metrics.rs`) observes each call; this module owns the families and their
//! labels, and knows nothing of tonic.
//!
//! Labels are bounded: the service and method come from the list of methods the server serves
//! (given at registration, from the descriptors), anything else is `unknown`; the code is one of the
//! seventeen gRPC codes, in lowercase (`ok`, `unavailable`, ...). Service and method keep their
//! spelling in the proto (`sandhost.v1.SandboxService`, `Create`), which is what grpcurl and every
//! gRPC tool print; every other label value sandhost writes is lowercase.

use std::collections::HashSet;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The gRPC status codes, indexed by their number, as label values.
pub const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The label value of gRPC status code `code` (`unknown` for a number outside the 17).
#[must_use]
pub fn code_label(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| GRPC_CODES.get(i)).copied().unwrap_or("unknown")
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    code: &'static str,
}

/// One call's method, as its labels will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodLabels {
    service: String,
    method: String,
}

/// The gRPC metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    seconds: Family<CallLabels, Histogram>,
    known: std::sync::Arc<HashSet<(String, String)>>,
}

impl GrpcMetrics {
    /// Registers the families on `registry` (prefix `sandhost_grpc_`) and pre-sets the count of
    /// every `(service, method)` in `methods` with every code to zero, so the first error of a kind
    /// is an increase, not a new series.
    pub fn register(registry: &mut Registry, methods: impl IntoIterator<Item = (String, String)>) -> Self {
        let seconds = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~55 min: unary calls are sub-millisecond to seconds; streams (Logs -f,
            // Wait, WatchDrain) last as long as their sandbox or drain.
            Histogram::new(exponential_buckets(0.000_1, 4.0, 13))
        });
        let metrics = Self {
            calls: Family::default(),
            seconds,
            known: std::sync::Arc::new(methods.into_iter().collect()),
        };
        let r = registry.sub_registry_with_prefix("sandhost_grpc");
        r.register("calls", "gRPC calls handled, by service, method and status code", metrics.calls.clone());
        r.register(
            "call_duration_seconds",
            "From a call's request to its last response message (a stream's whole life), by service, method and code",
            metrics.seconds.clone(),
        );
        for (service, method) in metrics.known.iter() {
            for code in GRPC_CODES {
                metrics
                    .calls
                    .get_or_create(&CallLabels { service: service.clone(), method: method.clone(), code })
                    .inc_by(0);
            }
        }
        metrics
    }

    /// The labels of the call to `path` (`/package.Service/Method`): the known method, or
    /// `unknown`.
    #[must_use]
    pub fn method(&self, path: &str) -> MethodLabels {
        let parts = path.strip_prefix('/').and_then(|p| p.split_once('/'));
        match parts {
            Some((service, method)) if self.known.contains(&(service.to_owned(), method.to_owned())) => {
                MethodLabels { service: service.to_owned(), method: method.to_owned() }
            }
            _ => MethodLabels { service: "unknown".to_owned(), method: "unknown".to_owned() },
        }
    }

    /// Counts one finished call of `method` with gRPC status `code`, which took `elapsed`.
    pub fn observe(&self, method: MethodLabels, code: i32, elapsed: Duration) {
        let labels = CallLabels { service: method.service, method: method.method, code: code_label(code) };
        self.calls.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_method_starts_at_zero_for_every_code_and_unknown_paths_are_one_series() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(
            &mut registry,
            [("sandhost.v1.NodeService".to_owned(), "Drain".to_owned())],
        );
        metrics.observe(metrics.method("/sandhost.v1.NodeService/Drain"), 14, Duration::from_millis(3));
        metrics.observe(metrics.method("/evil/aaaa"), 12, Duration::from_millis(1));
        metrics.observe(metrics.method("garbage"), 12, Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for code in GRPC_CODES {
            assert!(text.contains(&format!(
                "sandhost_grpc_calls_total{{service=\"sandhost.v1.NodeService\",method=\"Drain\",code=\"{code}\"}}"
            )), "{code}: {text}");
        }
        assert!(text.contains("method=\"Drain\",code=\"unavailable\"} 1"), "{text}");
        assert!(text.contains("service=\"unknown\",method=\"unknown\",code=\"unimplemented\"} 2"), "{text}");
        assert!(!text.contains("evil"), "{text}");
        assert_eq!(code_label(99), "unknown");
    }
}
