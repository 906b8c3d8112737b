//! The warm pool's metrics, read from the runtime at each scrape (the pool keeps the numbers; the
//! node only reports them): members ready and wanted, claims and misses, per template. The claim
//! latency is a histogram of `Metrics` (observed where a Create's start returns).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sandhost_runtime::{Runtime, WarmPoolStats};

/// A metric's name, its help, and its value in one template's stats.
type Metric = (&'static str, &'static str, fn(&WarmPoolStats) -> u64);

/// Registers the warm pool's per-template metrics (`sandhost_warm_pool_*`), read from `runtime`.
pub fn register_warm_pool(registry: &mut Registry, runtime: Arc<dyn Runtime>) {
    registry.register_collector(Box::new(WarmPoolCollector { runtime }));
}

#[derive(Debug)]
struct WarmPoolCollector {
    runtime: Arc<dyn Runtime>,
}

impl Collector for WarmPoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.runtime.warm_pool();
        if pools.is_empty() {
            return Ok(());
        }
        let gauges: [Metric; 2] = [
            ("sandhost_warm_pool_ready", "Warm pool members ready to be claimed, by template", |p| p.ready),
            ("sandhost_warm_pool_target", "Warm pool members kept ready, by template", |p| p.target),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for pool in &pools {
                let labels = [("template", pool.template.as_str())];
                let gauge = ConstGauge::new(i64::try_from(value(pool)).unwrap_or(i64::MAX));
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        let counters: [Metric; 2] = [
            ("sandhost_warm_pool_claims", "Creates served by a warm pool member, by template", |p| p.claims),
            (
                "sandhost_warm_pool_misses",
                "Creates of a pooled template that found no ready member and started cold",
                |p| p.misses,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for pool in &pools {
                let labels = [("template", pool.template.as_str())];
                ConstCounter::new(value(pool)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
