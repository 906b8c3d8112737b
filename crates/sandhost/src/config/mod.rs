//! Typed configuration of `sandhost serve`: flags and environment variables with the names pinned in
//! docs/design.md, parsed and validated as separate steps. A malformed value is a [`ConfigError`] that
//! names the flag and the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sandhost_runtime::{CgroupParent, HostPaths, Limits};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5008";
/// Default HTTP (health, metrics) listen address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:5009";
/// Default state dir when running as root.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sandhost";
/// Default bound of the forced phase.
pub const DEFAULT_FORCE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default maximum of live sandboxes.
pub const DEFAULT_MAX_SANDBOXES: u64 = 4096;
/// Default maximum of admitted starts not yet finished (running, or waiting for their turn).
pub const DEFAULT_MAX_ADMITTED_STARTS: u64 = 256;
/// Default sandbox timeout when a Create names none.
pub const DEFAULT_SANDBOX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest timeout a Create may ask for.
pub const MAX_SANDBOX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long exited sandboxes stay readable.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);
/// The value of `--cgroup-parent` that leaves the choice to the agent (its default): inside its own
/// delegated subtree when it runs as a systemd service, else [`DEFAULT_CGROUP_PARENT`].
pub const AUTO_CGROUP_PARENT: &str = "auto";
/// The parent cgroup of the sandboxes, at the root of each hierarchy, when the agent is no systemd
/// service and none is given.
pub const DEFAULT_CGROUP_PARENT: &str = "sandhost";
/// Memory limit of a sandbox whose Create names none: its processes and its private tmpfs mounts
/// together (tmpfs pages are charged to the sandbox's memory cgroup).
pub const DEFAULT_SANDBOX_MEMORY: u64 = 512 << 20;
/// Pids limit of a sandbox whose Create names none.
pub const DEFAULT_SANDBOX_PIDS: u32 = 1024;
/// CPU limit, in millicores, of a sandbox whose Create names none: one core.
pub const DEFAULT_SANDBOX_CPU_MILLIS: u32 = 1000;
/// Host memory kept out of the sandboxes' allocation, for the agent and the host.
pub const DEFAULT_MEMORY_RESERVE: u64 = 1 << 30;
/// How many times the allocatable memory the sandboxes' limits may add up to. 1: a limit is a
/// reservation; above 1: sandboxes are expected to stay below their limits.
pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.0;

/// Bytes of each sandbox's log kept by default (the newest).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1 << 20;
/// The least a log may keep (two segments of a page each).
pub const MIN_LOG_MAX_BYTES: u64 = 8 << 10;
/// The most a log may keep.
pub const MAX_LOG_MAX_BYTES: u64 = 1 << 30;

/// Default SIGTERM-to-kill grace of a stop.
pub const DEFAULT_STOP_GRACE: Duration = sandhost_runtime::DEFAULT_STOP_GRACE;

/// The flags of `sandhost serve`, as given (strings where they need validation of their own).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "SANDHOST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// HTTP listen address for /health/live, /health/ready and /metrics.
    #[arg(long, env = "SANDHOST_HTTP_LISTEN", default_value = DEFAULT_HTTP_LISTEN)]
    pub http_listen: String,
    /// State dir [default: /var/lib/sandhost, or $XDG_STATE_HOME/sandhost when not root].
    #[arg(long, env = "SANDHOST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Runtime backend: process or gvisor.
    #[arg(long, env = "SANDHOST_RUNTIME", default_value = "process")]
    pub runtime: String,
    /// A file holding the bearer token every RPC must carry (SANDHOST_TOKEN sets it directly).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Bound of the graceful phase of a shutdown drain (0 or unset: wait forever).
    #[arg(long, env = "SHUTDOWN_DRAIN_TIMEOUT")]
    pub shutdown_drain_timeout: Option<String>,
    /// `true`: skip the graceful phase on shutdown and stop every sandbox at once.
    #[arg(long, env = "FORCE_STOP")]
    pub force_stop: Option<String>,
    /// Bound of the forced phase [default: 30s].
    #[arg(long, env = "FORCE_SHUTDOWN_TIMEOUT")]
    pub force_shutdown_timeout: Option<String>,
    /// Maximum of live sandboxes.
    #[arg(long, env = "SANDHOST_MAX_SANDBOXES")]
    pub max_sandboxes: Option<String>,
    /// Maximum of admitted starts not yet finished, running or waiting for their turn; beyond it a
    /// Create is refused (RESOURCE_EXHAUSTED, retryable) [default: 256].
    #[arg(long, env = "SANDHOST_MAX_ADMITTED_STARTS")]
    pub max_admitted_starts: Option<String>,
    /// The earlier name of `--max-admitted-starts` and its variable, still read.
    #[arg(long = "max-concurrent-starts", env = "SANDHOST_MAX_CONCURRENT_STARTS", hide = true)]
    pub max_concurrent_starts: Option<String>,
    /// Starts that run in the runtime at once; the other admitted ones wait for their turn, in
    /// order [default: 16 per CPU on process, 4 per CPU on gvisor].
    #[arg(long, env = "SANDHOST_START_PARALLELISM")]
    pub start_parallelism: Option<String>,
    /// Timeout of a sandbox whose Create names none [default: 1h].
    #[arg(long, env = "SANDHOST_DEFAULT_TIMEOUT")]
    pub default_timeout: Option<String>,
    /// How long exited sandboxes stay readable [default: 10m].
    #[arg(long, env = "SANDHOST_RETENTION")]
    pub retention: Option<String>,
    /// SIGTERM-to-kill grace of a stop [default: 10s].
    #[arg(long, env = "SANDHOST_STOP_GRACE")]
    pub stop_grace: Option<String>,
    /// A rootfs template, `NAME=DIR` (repeatable).
    #[arg(long = "template", value_name = "NAME=DIR")]
    pub templates: Vec<String>,
    /// What a sandbox on the `host` template sees of the host: comma-separated absolute paths, each
    /// bound read-only at the same place in an otherwise empty root [default:
    /// /bin,/sbin,/lib,/lib32,/lib64,/libx32,/usr,/etc, those the host has].
    #[arg(long, env = "SANDHOST_HOST_PATHS", value_name = "PATHS")]
    pub host_paths: Option<String>,
    /// Process runtime: members kept ready per template, claimed by Creates of that template
    /// (`host` or a `--template` name), e.g. `host=16,img=4`.
    #[arg(long, env = "SANDHOST_WARM_POOL", value_name = "TEMPLATE=N[,TEMPLATE=N...]")]
    pub warm_pool: Option<String>,
    /// How long a warm pool member stays ready before it is replaced [default: 10m].
    #[arg(long, env = "SANDHOST_WARM_POOL_MAX_AGE")]
    pub warm_pool_max_age: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "SANDHOST_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Memory limit of a sandbox whose Create names none (e.g. 512m, 2g) [default: 512m].
    #[arg(long, env = "SANDHOST_DEFAULT_MEMORY")]
    pub default_memory: Option<String>,
    /// Pids limit of a sandbox whose Create names none [default: 1024].
    #[arg(long, env = "SANDHOST_DEFAULT_PIDS")]
    pub default_pids: Option<String>,
    /// CPUs of a sandbox whose Create names none (e.g. 1, 0.5) [default: 1].
    #[arg(long, env = "SANDHOST_DEFAULT_CPUS")]
    pub default_cpus: Option<String>,
    /// Host memory kept out of the sandboxes' allocation [default: 1g].
    #[arg(long, env = "SANDHOST_MEMORY_RESERVE")]
    pub memory_reserve: Option<String>,
    /// How many times the allocatable memory (host memory minus the reserve) the sandboxes' memory
    /// limits may add up to; beyond it a Create is RESOURCE_EXHAUSTED [default: 1].
    #[arg(long, env = "SANDHOST_MEMORY_OVERCOMMIT")]
    pub memory_overcommit: Option<String>,
    /// Bytes of each sandbox's log (stdout and stderr) the node keeps: the newest; a read says how
    /// many came before [default: 1m].
    #[arg(long, env = "SANDHOST_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<String>,
    /// The cgroup, in every hierarchy, under which sandboxes get their own: a path relative to each
    /// hierarchy's root (`sandhost`, `a/b`), or `auto`: `<its own service's cgroup>/sandboxes` when
    /// run as a systemd service (INVOCATION_ID set, its cgroup a .service), else `sandhost`.
    #[arg(long, env = "SANDHOST_CGROUP_PARENT", default_value = AUTO_CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// How long the supervisor (systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds,
    /// Nomad's kill_timeout) waits after its SIGTERM before it kills the agent; the deploy files set
    /// it to their own value. Unset: not known, nothing is checked.
    #[arg(long, env = "SANDHOST_SUPERVISOR_STOP_TIMEOUT")]
    pub supervisor_stop_timeout: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The runtime backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Namespaces, cgroups and seccomp in sandhost's own code.
    Process,
    /// gVisor's runsc.
    Gvisor,
}

impl RuntimeKind {
    /// Starts that run at once by default, per CPU the agent may use. A process start mostly waits
    /// on the kernel (namespaces, cgroups), so many overlap well; a gVisor start boots a kernel of
    /// its own and is CPU-bound. The `api` bench's burst measured both (BENCHMARKS.md).
    #[must_use]
    pub fn default_start_parallelism(self) -> u64 {
        let per_cpu = match self {
            Self::Process => 16,
            Self::Gvisor => 4,
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        u64::try_from(cpus).unwrap_or(u64::MAX).saturating_mul(per_cpu)
    }
}

/// Validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// State dir.
    pub state_dir: PathBuf,
    /// Runtime backend.
    pub runtime: RuntimeKind,
    /// Bearer token; `None`: no auth (loopback only).
    pub token: Option<String>,
    /// Bound of the graceful phase of a shutdown; `None`: wait forever.
    pub shutdown_drain_timeout: Option<Duration>,
    /// Skip the graceful phase on shutdown.
    pub force_stop: bool,
    /// Bound of the forced phase.
    pub force_shutdown_timeout: Duration,
    /// Node limits and defaults of the sandbox manager.
    pub sandbox: SandboxConfig,
    /// Registered rootfs templates.
    pub templates: Vec<(String, PathBuf)>,
    /// What the `host` template shows of the host.
    pub host_paths: HostPaths,
    /// The warm pool (process runtime).
    pub warm_pool: WarmPoolConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Where the sandboxes' cgroups go: a path, or left to the agent.
    pub cgroup_parent: CgroupParent,
    /// Bytes of each sandbox's log the node keeps (the newest).
    pub log_max_bytes: u64,
    /// How long the supervisor waits after its SIGTERM before it kills the agent; `None`: unknown.
    pub supervisor_stop_timeout: Option<Duration>,
}

/// Limits and defaults of the sandbox manager.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Maximum of live sandboxes.
    pub max_sandboxes: u64,
    /// Maximum of admitted starts not yet finished (running, or waiting for their turn).
    pub max_admitted_starts: u64,
    /// Starts that run in the runtime at once (the start parallelism).
    pub start_parallelism: u64,
    /// Timeout of a sandbox whose Create names none.
    pub default_timeout: Duration,
    /// How long exited sandboxes stay readable.
    pub retention: Duration,
    /// SIGTERM-to-kill grace of a stop.
    pub stop_grace: Duration,
    /// The limits of a sandbox whose Create names none, field by field.
    pub default_limits: Limits,
    /// Host memory kept out of the sandboxes' allocation.
    pub memory_reserve: u64,
    /// How many times the allocatable memory the sandboxes' memory limits may add up to.
    pub memory_overcommit: f64,
}

impl SandboxConfig {
    /// The memory the sandboxes' limits may add up to on a host of `host_memory` bytes.
    #[must_use]
    pub fn allocatable_memory(&self, host_memory: u64) -> u64 {
        let allocatable = host_memory.saturating_sub(self.memory_reserve) as f64 * self.memory_overcommit;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // finite and >= 0; saturates
        let bytes = allocatable as u64;
        bytes
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_sandboxes: DEFAULT_MAX_SANDBOXES,
            max_admitted_starts: DEFAULT_MAX_ADMITTED_STARTS,
            start_parallelism: RuntimeKind::Process.default_start_parallelism(),
            default_timeout: DEFAULT_SANDBOX_TIMEOUT,
            retention: DEFAULT_RETENTION,
            stop_grace: DEFAULT_STOP_GRACE,
            default_limits: Limits {
                memory_bytes: Some(DEFAULT_SANDBOX_MEMORY),
                cpu_millis: Some(DEFAULT_SANDBOX_CPU_MILLIS),
                pids_max: Some(DEFAULT_SANDBOX_PIDS),
            },
            memory_reserve: DEFAULT_MEMORY_RESERVE,
            memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
        }
    }
}

/// A configuration value that cannot be used. Names the flag and the environment variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}: {value:?}: {reason}")]
pub struct ConfigError {
    /// `--flag` / `ENV_VAR`.
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl ConfigError {
    fn new(name: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self { name, value: value.chars().take(200).collect(), reason: reason.into() }
    }
}

/// Parses a duration as the pinned settings accept it: `90s`, `5m`, `1h30m`, `1m30s`, `250ms`; a
/// bare `0` means zero.
///
/// # Errors
///
/// A message saying what is accepted.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| format!("{e}; expected a duration such as 90s, 5m or 1h30m"))
}

fn duration(name: &'static str, value: Option<&String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => parse_duration(value).map_err(|reason| ConfigError::new(name, value, reason)),
    }
}

fn parsed<T>(
    name: &'static str,
    value: Option<&String>,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => parse(value).map_err(|reason| ConfigError::new(name, value, reason)),
    }
}

fn count(name: &'static str, value: Option<&String>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 && n <= 1_000_000 => Ok(n),
            _ => Err(ConfigError::new(name, value, "expected a whole number from 1 to 1000000")),
        },
    }
}

fn addr(name: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| ConfigError::new(name, value, format!("{e}; expected IP:PORT")))
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(DEFAULT_STATE_DIR);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    base.unwrap_or_else(std::env::temp_dir).join("sandhost")
}

impl ServeArgs {
    /// Validates the flags into a [`ServeConfig`]. `env_token` is `SANDHOST_TOKEN`'s value.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self, env_token: Option<String>) -> Result<ServeConfig, ConfigError> {
        let listen = addr("--listen / SANDHOST_LISTEN", &self.listen)?;
        let http_listen = addr("--http-listen / SANDHOST_HTTP_LISTEN", &self.http_listen)?;
        let runtime = match self.runtime.as_str() {
            "process" => RuntimeKind::Process,
            "gvisor" => RuntimeKind::Gvisor,
            other => {
                return Err(ConfigError::new(
                    "--runtime / SANDHOST_RUNTIME",
                    other,
                    "expected process or gvisor",
                ));
            }
        };
        let token = match (&self.token_file, env_token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--token-file", &path.display().to_string(), e.to_string())
                })?;
                Some(text.trim().to_owned())
            }
            (None, token) => token.map(|t| t.trim().to_owned()),
        };
        if token.as_deref() == Some("") {
            return Err(ConfigError::new("SANDHOST_TOKEN / --token-file", "", "the token is empty"));
        }
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "--listen / SANDHOST_LISTEN",
                &self.listen,
                "a non-loopback address needs a token (SANDHOST_TOKEN or --token-file)",
            ));
        }
        let drain_timeout = duration(
            "--shutdown-drain-timeout / SHUTDOWN_DRAIN_TIMEOUT",
            self.shutdown_drain_timeout.as_ref(),
            Duration::ZERO,
        )?;
        let force_stop = match self.force_stop.as_deref().map(str::trim) {
            None | Some("" | "false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(ConfigError::new("--force-stop / FORCE_STOP", other, "expected true or false"));
            }
        };
        let force_shutdown_timeout = duration(
            "--force-shutdown-timeout / FORCE_SHUTDOWN_TIMEOUT",
            self.force_shutdown_timeout.as_ref(),
            DEFAULT_FORCE_SHUTDOWN_TIMEOUT,
        )?;
        if force_shutdown_timeout.is_zero() {
            return Err(ConfigError::new(
                "--force-shutdown-timeout / FORCE_SHUTDOWN_TIMEOUT",
                "0",
                "the forced phase needs a bound above zero",
            ));
        }
        let sandbox = SandboxConfig {
            max_sandboxes: count(
                "--max-sandboxes / SANDHOST_MAX_SANDBOXES",
                self.max_sandboxes.as_ref(),
                DEFAULT_MAX_SANDBOXES,
            )?,
            max_admitted_starts: match (&self.max_admitted_starts, &self.max_concurrent_starts) {
                (None, Some(old)) => count(
                    "--max-concurrent-starts / SANDHOST_MAX_CONCURRENT_STARTS",
                    Some(old),
                    DEFAULT_MAX_ADMITTED_STARTS,
                )?,
                (value, _) => count(
                    "--max-admitted-starts / SANDHOST_MAX_ADMITTED_STARTS",
                    value.as_ref(),
                    DEFAULT_MAX_ADMITTED_STARTS,
                )?,
            },
            start_parallelism: count(
                "--start-parallelism / SANDHOST_START_PARALLELISM",
                self.start_parallelism.as_ref(),
                runtime.default_start_parallelism(),
            )?,
            default_timeout: duration(
                "--default-timeout / SANDHOST_DEFAULT_TIMEOUT",
                self.default_timeout.as_ref(),
                DEFAULT_SANDBOX_TIMEOUT,
            )?,
            retention: duration(
                "--retention / SANDHOST_RETENTION",
                self.retention.as_ref(),
                DEFAULT_RETENTION,
            )?,
            stop_grace: duration(
                "--stop-grace / SANDHOST_STOP_GRACE",
                self.stop_grace.as_ref(),
                DEFAULT_STOP_GRACE,
            )?,
            default_limits: Limits {
                memory_bytes: Some(parsed(
                    "--default-memory / SANDHOST_DEFAULT_MEMORY",
                    self.default_memory.as_ref(),
                    DEFAULT_SANDBOX_MEMORY,
                    crate::cli::parse::size,
                )?),
                cpu_millis: Some(parsed(
                    "--default-cpus / SANDHOST_DEFAULT_CPUS",
                    self.default_cpus.as_ref(),
                    DEFAULT_SANDBOX_CPU_MILLIS,
                    crate::cli::parse::cpus,
                )?),
                pids_max: Some(parsed(
                    "--default-pids / SANDHOST_DEFAULT_PIDS",
                    self.default_pids.as_ref(),
                    DEFAULT_SANDBOX_PIDS,
                    |text| text.trim().parse::<u32>().map_err(|e| e.to_string()),
                )?),
            },
            memory_reserve: parsed(
                "--memory-reserve / SANDHOST_MEMORY_RESERVE",
                self.memory_reserve.as_ref(),
                DEFAULT_MEMORY_RESERVE,
                crate::cli::parse::size,
            )?,
            memory_overcommit: parsed(
                "--memory-overcommit / SANDHOST_MEMORY_OVERCOMMIT",
                self.memory_overcommit.as_ref(),
                DEFAULT_MEMORY_OVERCOMMIT,
                |text| match text.trim().parse::<f64>() {
                    Ok(ratio) if ratio.is_finite() && ratio > 0.0 && ratio <= 1000.0 => Ok(ratio),
                    _ => Err("expected a ratio above 0 and at most 1000, such as 1 or 1.5".to_owned()),
                },
            )?,
        };
        // The defaults are checked as a request's limits are, so a node never applies one it
        // would refuse.
        let defaults = sandbox.default_limits;
        crate::sandbox::check_limits(
            defaults.memory_bytes,
            defaults.cpu_millis,
            defaults.pids_max,
            u64::MAX,
            u64::MAX,
        )
        .map_err(|invalid| {
            let name = match invalid.field.as_str() {
                "resources.memory_bytes" => "--default-memory / SANDHOST_DEFAULT_MEMORY",
                "resources.cpu_millis" => "--default-cpus / SANDHOST_DEFAULT_CPUS",
                _ => "--default-pids / SANDHOST_DEFAULT_PIDS",
            };
            ConfigError::new(name, &invalid.field, invalid.reason)
        })?;
        let templates = self.templates.iter().map(|t| parse_template(t)).collect::<Result<Vec<_>, _>>()?;
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let host_paths = host_paths(self.host_paths.as_deref(), &state_dir)?;
        let warm_pool = warm_pool(
            self.warm_pool.as_deref(),
            duration(
                "--warm-pool-max-age / SANDHOST_WARM_POOL_MAX_AGE",
                self.warm_pool_max_age.as_ref(),
                sandhost_runtime::process::DEFAULT_WARM_POOL_MAX_AGE,
            )?,
            runtime,
            &templates,
            &sandbox,
        )?;
        let log_format = match self.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "--log-format / SANDHOST_LOG_FORMAT",
                    other,
                    "expected text or json",
                ));
            }
        };
        let cgroup_parent = match self.cgroup_parent.as_str() {
            AUTO_CGROUP_PARENT => CgroupParent::auto(DEFAULT_CGROUP_PARENT),
            path => {
                sandhost_runtime::validate_cgroup_parent(path).map_err(|invalid| {
                    ConfigError::new("--cgroup-parent / SANDHOST_CGROUP_PARENT", path, invalid.rule)
                })?;
                CgroupParent::from(path)
            }
        };
        let supervisor_stop_timeout = self
            .supervisor_stop_timeout
            .as_ref()
            .map(|value| {
                duration(
                    "--supervisor-stop-timeout / SANDHOST_SUPERVISOR_STOP_TIMEOUT",
                    Some(value),
                    Duration::ZERO,
                )
            })
            .transpose()?;
        let log_max_bytes = parsed(
            "--log-max-bytes / SANDHOST_LOG_MAX_BYTES",
            self.log_max_bytes.as_ref(),
            DEFAULT_LOG_MAX_BYTES,
            |text| match crate::cli::parse::size(text)? {
                bytes if (MIN_LOG_MAX_BYTES..=MAX_LOG_MAX_BYTES).contains(&bytes) => Ok(bytes),
                _ => Err(format!("expected a size from {MIN_LOG_MAX_BYTES} bytes to 1g")),
            },
        )?;
        Ok(ServeConfig {
            log_max_bytes,
            cgroup_parent,
            supervisor_stop_timeout,
            listen,
            http_listen,
            state_dir,
            runtime,
            token,
            shutdown_drain_timeout: (!drain_timeout.is_zero()).then_some(drain_timeout),
            force_stop,
            force_shutdown_timeout,
            sandbox,
            templates,
            host_paths,
            warm_pool,
            log_format,
        })
    }
}

mod templates;

pub use templates::WarmPoolConfig;
use templates::{host_paths, parse_template, warm_pool};

#[cfg(test)]
mod tests;
