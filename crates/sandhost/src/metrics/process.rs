//! The agent process's own metrics, under the names every Prometheus client library uses
//! (`process_*`), so stock dashboards and alerts work: CPU seconds, resident and virtual memory,
//! open and maximum file descriptors, start time. Read from `/proc/self` on each scrape (a
//! collector: the kernel keeps these numbers, there is no transition of ours to update them at).
//!
//! `process_start_time_seconds` is a Unix time and keeps its standard name rather than sandhost's
//! `_timestamp_seconds` rule: every dashboard that computes uptime looks for this one.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) cpu_seconds: f64,
    pub(crate) resident_bytes: f64,
    pub(crate) virtual_bytes: f64,
    pub(crate) start_time_seconds: f64,
    pub(crate) open_fds: f64,
    pub(crate) max_fds: f64,
}

impl ProcessStats {
    /// Reads the current process's numbers; `None` if `/proc` cannot be read.
    pub(crate) fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<f64>().ok())?;
        let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK)?;
        let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(f64::NAN, |(soft, _)| soft as f64);
        Self::parse(&stat, boot_time, ticks, page, open_fds as f64, max_fds)
    }

    /// The numbers in a `/proc/<pid>/stat` line, with the host's boot time, clock ticks per second
    /// and page size.
    fn parse(stat: &str, boot_time: f64, ticks: f64, page: f64, open_fds: f64, max_fds: f64) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): field N is fields[N - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let (utime, stime, start, vsize, rss) = (field(14)?, field(15)?, field(22)?, field(23)?, field(24)?);
        Some(Self {
            cpu_seconds: (utime + stime) / ticks,
            resident_bytes: rss * page,
            virtual_bytes: vsize,
            start_time_seconds: boot_time + start / ticks,
            open_fds,
            max_fds,
        })
    }
}

#[allow(clippy::cast_precision_loss)] // ticks per second and page sizes are small
fn sysconf(var: nix::unistd::SysconfVar) -> Option<f64> {
    nix::unistd::sysconf(var).ok().flatten().map(|v| v as f64)
}

/// The collector registered on the registry: one read of `/proc/self` per scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else { return Ok(()) };
        let counter = ConstCounter::new(stats.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", stats.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", stats.virtual_bytes),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                stats.start_time_seconds,
            ),
            ("process_open_fds", "Number of open file descriptors.", stats.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", stats.max_fds),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_name_is_read_by_field() {
        // pid (comm) state ppid ... utime=14 stime=15 ... starttime=22 vsize=23 rss=24
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 8192000 300 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stats = ProcessStats::parse(stat, 1_700_000_000.0, 100.0, 4096.0, 7.0, 1024.0).expect("parses");
        assert!((stats.cpu_seconds - 3.0).abs() < 1e-9, "{stats:?}");
        assert!((stats.start_time_seconds - 1_700_000_010.0).abs() < 1e-6, "{stats:?}");
        assert!((stats.virtual_bytes - 8_192_000.0).abs() < 1e-6, "{stats:?}");
        assert!((stats.resident_bytes - 300.0 * 4096.0).abs() < 1e-6, "{stats:?}");
    }

    #[test]
    fn this_process_has_memory_fds_and_a_start_time() {
        let stats = ProcessStats::read().expect("/proc/self is readable");
        assert!(stats.resident_bytes > 0.0 && stats.open_fds >= 1.0 && stats.start_time_seconds > 0.0);
    }
}
