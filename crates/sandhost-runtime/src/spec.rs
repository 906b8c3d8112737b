//! What a sandbox is made of: its identity and its spec. Every id is validated on construction, so a
//! value of these types can be used in a path under the state dir without escaping it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StartError;

/// An id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct IdError {
    /// Which kind of id.
    pub kind: &'static str,
    /// The rejected value (truncated to 80 characters).
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

/// `[a-z0-9][a-z0-9-]{0,62}`: the syntax of sandbox and snapshot ids.
fn check_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    let ok = (1..=63).contains(&value.len())
        && value
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: value.chars().take(80).collect(),
            rule: "must match [a-z0-9][a-z0-9-]{0,62}",
        })
    }
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as this kind of id.
            ///
            /// # Errors
            ///
            /// [`IdError`] naming the rule it broke.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                $check($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

fn check_lifecycle(kind: &'static str, value: &str) -> Result<(), IdError> {
    if (1..=32).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: value.chars().take(80).collect(),
            rule: "must be 1 to 32 lowercase hex digits",
        })
    }
}

name_type!(
    /// A sandbox's id: client-supplied or generated, `[a-z0-9][a-z0-9-]{0,62}`.
    SandboxId, "sandbox id", check_name
);
name_type!(
    /// A snapshot's id, with the syntax of a sandbox id.
    SnapshotId, "snapshot id", check_name
);
name_type!(
    /// New on every start of a sandbox, so a stale operation never hits a later sandbox with the
    /// same id: 1 to 32 lowercase hex digits.
    LifecycleId, "lifecycle id", check_lifecycle
);

/// One lifecycle of one sandbox: what every runtime operation is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SandboxKey {
    /// The sandbox's id.
    pub id: SandboxId,
    /// The lifecycle's id.
    pub lifecycle: LifecycleId,
}

impl fmt::Display for SandboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.id, self.lifecycle)
    }
}

/// The root filesystem a sandbox sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    /// The host's root filesystem, read-only, with a private writable `/tmp` and home.
    Host,
    /// A rootfs directory registered by name (resolved by the caller to a path it trusts).
    Rootfs {
        /// The registered name.
        name: String,
        /// The directory.
        path: PathBuf,
    },
}

/// Resource limits; `None` means "no limit of ours".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU, in thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// Maximum number of processes and threads.
    pub pids_max: Option<u32>,
}

/// The uid and gid the command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl User {
    /// The default: an unprivileged user ("nobody").
    pub const UNPRIVILEGED: Self = Self { uid: 65534, gid: 65534 };
}

/// Everything a backend needs to start one sandbox. Built and validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Which sandbox, which lifecycle.
    pub key: SandboxKey,
    /// The command and its arguments; not empty, except with `restore_from`, which runs the
    /// snapshot's command (and its environment, working directory and user): then it must be
    /// empty, and so must `env` and `cwd`.
    pub argv: Vec<String>,
    /// The environment of the command.
    pub env: Vec<(String, String)>,
    /// The working directory inside the sandbox (default: the sandbox's home).
    pub cwd: Option<PathBuf>,
    /// The root filesystem.
    pub template: Template,
    /// Resource limits.
    pub limits: Limits,
    /// Who the command runs as.
    pub user: User,
    /// How long the command gets between SIGTERM and the cgroup kill when it is stopped.
    pub stop_grace: Duration,
    /// Start from this snapshot instead of from scratch (backends that can checkpoint).
    pub restore_from: Option<SnapshotId>,
}

impl SandboxSpec {
    /// A spec for `argv` with the defaults: the host template, no limits, the unprivileged user, the
    /// default stop grace, the command's environment empty, no snapshot.
    #[must_use]
    pub fn new(key: SandboxKey, argv: Vec<String>) -> Self {
        Self {
            key,
            argv,
            env: Vec::new(),
            cwd: None,
            template: Template::Host,
            limits: Limits::default(),
            user: User::UNPRIVILEGED,
            stop_grace: crate::DEFAULT_STOP_GRACE,
            restore_from: None,
        }
    }
}

/// The bounds every backend holds limits to.
const MIN_MEMORY: u64 = 4 << 20;
const MAX_MEMORY: u64 = 1 << 52;
const MIN_CPU_MILLIS: u32 = 10;
const MAX_CPU_MILLIS: u32 = 1_000_000;
const MIN_PIDS: u32 = 2;
const MAX_PIDS: u32 = 4 << 20;

impl SandboxSpec {
    /// Checks what every backend needs of a spec before it touches the host: a command (or, for a
    /// restore, none: the snapshot's runs), no NUL anywhere, an absolute working directory, limits
    /// within bounds, a usable rootfs.
    ///
    /// # Errors
    ///
    /// [`StartError::InvalidSpec`] naming the field.
    pub fn validate(&self) -> Result<(), StartError> {
        use std::os::unix::ffi::OsStrExt;
        let invalid = |field: &'static str, reason: &str| StartError::InvalidSpec {
            key: self.key.clone(),
            field,
            reason: reason.to_owned(),
        };
        if self.restore_from.is_some() {
            if !self.argv.is_empty() {
                return Err(invalid("argv", "a restore runs the snapshot's command: give none"));
            }
            if !self.env.is_empty() || self.cwd.is_some() {
                return Err(invalid("env", "a restore keeps the snapshot's environment and cwd: give none"));
            }
        } else if self.argv.first().is_none_or(String::is_empty) {
            return Err(invalid("argv", "must name a command"));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(invalid("argv", "contains a NUL byte"));
        }
        if self
            .env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(invalid("env", "names must be non-empty without '=' or NUL; values without NUL"));
        }
        if self.cwd.as_ref().is_some_and(|cwd| !cwd.is_absolute() || cwd.as_os_str().as_bytes().contains(&0))
        {
            return Err(invalid("cwd", "must be an absolute path"));
        }
        let limits = &self.limits;
        if limits.memory_bytes.is_some_and(|m| !(MIN_MEMORY..=MAX_MEMORY).contains(&m)) {
            return Err(invalid("limits.memory_bytes", "must be between 4 MiB and 4 PiB"));
        }
        if limits.cpu_millis.is_some_and(|c| !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&c)) {
            return Err(invalid("limits.cpu_millis", "must be between 10 and 1000000"));
        }
        if limits.pids_max.is_some_and(|p| !(MIN_PIDS..=MAX_PIDS).contains(&p)) {
            return Err(invalid("limits.pids_max", "must be between 2 and 4194304"));
        }
        if let Template::Rootfs { path, .. } = &self.template {
            if !path.is_absolute() || path.as_os_str().as_bytes().contains(&0) {
                return Err(invalid("template", "the rootfs path must be absolute"));
            }
            if !path.is_dir() {
                return Err(invalid("template", "the rootfs is not a directory"));
            }
            for needed in ["proc", "dev", "tmp"] {
                if !path.join(needed).is_dir() {
                    return Err(invalid("template", "the rootfs lacks /proc, /dev or /tmp"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_follow_the_pinned_syntax() {
        for good in ["a", "0", "abc-123", &"a".repeat(63)] {
            assert!(SandboxId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "..", "a.b", &"a".repeat(64), "é"] {
            assert!(SandboxId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifecycle_ids_are_hex() {
        assert!(LifecycleId::parse("0123abcdef").is_ok());
        assert!(LifecycleId::parse("xyz").is_err());
        assert!(LifecycleId::parse("").is_err());
    }

    #[test]
    fn ids_refuse_bad_values_when_deserialized() {
        assert!(serde_json::from_str::<SandboxId>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<SandboxId>("\"ok-1\"").is_ok());
    }
}
