//! The root filesystems a node offers and what it keeps ready of them: `--template`,
//! `--host-paths` and `--warm-pool`, each parsed and checked against the others.

use std::path::PathBuf;
use std::time::Duration;

use sandhost_runtime::process::WarmTemplate;
use sandhost_runtime::{HostPaths, Template};

use super::{ConfigError, RuntimeKind, SandboxConfig};

const WARM_POOL: &str = "--warm-pool / SANDHOST_WARM_POOL";

/// The warm pool: which templates, how many members each, how long one stays ready.
#[derive(Debug, Clone, Default)]
pub struct WarmPoolConfig {
    /// Members kept ready per template (none: no pool).
    pub templates: Vec<WarmTemplate>,
    /// How long a member stays ready before it is replaced.
    pub max_age: Duration,
}

/// `--host-paths`, or the defaults; none of them may show the state dir.
pub(super) fn host_paths(value: Option<&str>, state_dir: &std::path::Path) -> Result<HostPaths, ConfigError> {
    const NAME: &str = "--host-paths / SANDHOST_HOST_PATHS";
    let host_paths = match value {
        Some(list) => HostPaths::parse(list).map_err(|e| ConfigError::new(NAME, list, e.to_string()))?,
        None => HostPaths::defaults(),
    };
    host_paths.check_state_dir(state_dir).map_err(|e| {
        let list: Vec<String> = host_paths.paths().iter().map(|p| p.display().to_string()).collect();
        ConfigError::new(NAME, &list.join(","), format!("{e}; choose another --state-dir or --host-paths"))
    })?;
    Ok(host_paths)
}

pub(super) fn parse_template(value: &str) -> Result<(String, PathBuf), ConfigError> {
    let (name, dir) =
        value.split_once('=').ok_or_else(|| ConfigError::new("--template", value, "expected NAME=DIR"))?;
    if sandhost_runtime::SandboxId::parse(name).is_err() || name == "host" {
        return Err(ConfigError::new(
            "--template",
            value,
            "NAME must match [a-z0-9][a-z0-9-]{0,62} and not be `host`",
        ));
    }
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(ConfigError::new("--template", value, "DIR must be an existing absolute directory"));
    }
    Ok((name.to_owned(), dir))
}

/// `--warm-pool TEMPLATE=N[,TEMPLATE=N...]`: each template `host` or a registered one, once; each
/// N from 1 to the node's maximum of sandboxes (members are not sandboxes, but each costs what
/// an idle sandbox costs). Only the process runtime has a pool.
pub(super) fn warm_pool(
    value: Option<&str>,
    max_age: Duration,
    runtime: RuntimeKind,
    templates: &[(String, PathBuf)],
    sandbox: &SandboxConfig,
) -> Result<WarmPoolConfig, ConfigError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(WarmPoolConfig { templates: Vec::new(), max_age });
    };
    if runtime != RuntimeKind::Process {
        return Err(ConfigError::new(WARM_POOL, value, "only the process runtime has a warm pool"));
    }
    if max_age.is_zero() {
        return Err(ConfigError::new(
            "--warm-pool-max-age / SANDHOST_WARM_POOL_MAX_AGE",
            "0",
            "a member must be allowed to stay ready for some time",
        ));
    }
    let mut pool: Vec<WarmTemplate> = Vec::new();
    for item in value.split(',') {
        let (name, size) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::new(WARM_POOL, item, "expected TEMPLATE=N, e.g. host=16"))?;
        let template = match name {
            "host" => Template::Host,
            _ => match templates.iter().find(|(n, _)| n == name) {
                Some((n, path)) => Template::Rootfs { name: n.clone(), path: path.clone() },
                None => {
                    return Err(ConfigError::new(
                        WARM_POOL,
                        item,
                        "TEMPLATE must be `host` or a name registered with --template",
                    ));
                }
            },
        };
        let size = size.parse::<u64>().ok().filter(|n| (1..=sandbox.max_sandboxes).contains(n)).ok_or_else(
            || {
                ConfigError::new(
                    WARM_POOL,
                    item,
                    format!("N must be a whole number from 1 to --max-sandboxes ({})", sandbox.max_sandboxes),
                )
            },
        )?;
        if pool.iter().any(|t| t.name == name) {
            return Err(ConfigError::new(WARM_POOL, item, "each template may be named once"));
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        pool.push(WarmTemplate { name: name.to_owned(), template, size });
    }
    Ok(WarmPoolConfig { templates: pool, max_age })
}
