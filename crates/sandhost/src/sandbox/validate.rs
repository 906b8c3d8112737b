//! Validation of Create and Update requests. Everything in a request is hostile: each field is
//! bounded, paths cannot escape, and the error names the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandhost_runtime::{Limits, SandboxId, SnapshotId};

use super::InvalidArgument;
use crate::config::MAX_SANDBOX_TIMEOUT;

/// Most arguments in `argv`.
pub(crate) const MAX_ARGS: usize = 1024;
/// Most environment variables.
pub(crate) const MAX_ENV: usize = 1024;
/// Most bytes of `argv` plus `env`, all together.
pub(crate) const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Most labels.
pub(crate) const MAX_LABELS: usize = 64;
/// Longest label key.
pub(crate) const MAX_LABEL_KEY: usize = 63;
/// Longest label value.
pub(crate) const MAX_LABEL_VALUE: usize = 256;
/// Longest working directory.
pub(crate) const MAX_PATH: usize = 4096;
/// Smallest memory limit.
pub(crate) const MIN_MEMORY: u64 = 4 * 1024 * 1024;
/// Smallest CPU limit, in millicores.
pub(crate) const MIN_CPU_MILLIS: u32 = 10;
/// The pids limits a sandbox may have: its init and its command need two.
pub(crate) const PIDS: std::ops::RangeInclusive<u32> = 2..=32_768;
/// Longest stop grace.
pub(crate) const MAX_STOP_GRACE: Duration = Duration::from_secs(300);

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidArgument {
    InvalidArgument::new(field, reason)
}

/// A sandbox id from a request.
pub(crate) fn sandbox_id(field: &str, value: &str) -> Result<SandboxId, InvalidArgument> {
    SandboxId::parse(value).map_err(|e| invalid(field, e.rule))
}

/// A snapshot id from a request.
pub(crate) fn snapshot_id(field: &str, value: &str) -> Result<SnapshotId, InvalidArgument> {
    SnapshotId::parse(value).map_err(|e| invalid(field, e.rule))
}

/// A template's name: `host` or a name registered with `serve --template NAME=DIR`, which has the
/// rule of ids; anything else (a path, `..`) is refused, not looked up.
pub(crate) fn template_name(value: &str) -> Result<(), InvalidArgument> {
    SandboxId::parse(value).map(drop).map_err(|e| invalid("template", e.rule))
}

/// A restore runs the snapshot's command, environment, working directory and root filesystem: a
/// request that also names one of them is refused, not silently overridden.
pub(crate) fn restore_only(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    template: Option<&str>,
) -> Result<(), InvalidArgument> {
    let given = if !argv.is_empty() {
        "argv"
    } else if !env.is_empty() {
        "env"
    } else if cwd.is_some_and(|c| !c.is_empty()) {
        "cwd"
    } else if template.is_some_and(|t| !t.is_empty()) {
        "template"
    } else {
        return Ok(());
    };
    Err(invalid(given, "a sandbox restored from a snapshot runs the snapshot's; leave it empty"))
}

/// The command: present, bounded, no NUL bytes.
pub(crate) fn command(argv: &[String], env: &[(String, String)]) -> Result<(), InvalidArgument> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(invalid("argv", "a command is required"));
    }
    if argv.len() > MAX_ARGS {
        return Err(invalid("argv", format!("at most {MAX_ARGS} arguments")));
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("argv[{i}]"), "contains a NUL byte"));
    }
    if env.len() > MAX_ENV {
        return Err(invalid("env", format!("at most {MAX_ENV} variables")));
    }
    for (name, value) in env {
        let ok_name = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if !ok_name {
            return Err(invalid(
                format!("env[{:?}]", truncate(name)),
                "names must match [A-Za-z_][A-Za-z0-9_]{0,255}",
            ));
        }
        if value.contains('\0') {
            return Err(invalid(format!("env[{name:?}]"), "contains a NUL byte"));
        }
    }
    let total: usize = argv.iter().map(String::len).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len() + 1).sum::<usize>();
    if total > MAX_COMMAND_BYTES {
        return Err(invalid("argv", format!("argv and env together exceed {MAX_COMMAND_BYTES} bytes")));
    }
    Ok(())
}

/// The working directory: absolute, normal (no `..`), bounded.
pub(crate) fn cwd(value: Option<&str>) -> Result<Option<PathBuf>, InvalidArgument> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_PATH || value.contains('\0') {
        return Err(invalid("cwd", "too long or contains a NUL byte"));
    }
    // Checked as written: `Path::components` would drop a `.` and make `/./tmp` pass as `/tmp`.
    let path = Path::new(value);
    let normal = path.is_absolute() && value.split('/').all(|segment| segment != "." && segment != "..");
    if !normal {
        return Err(invalid("cwd", "must be an absolute path without `.` or `..`"));
    }
    Ok(Some(path.to_path_buf()))
}

/// A timeout: above zero and at most [`MAX_SANDBOX_TIMEOUT`].
pub(crate) fn timeout(field: &str, value: Duration) -> Result<Duration, InvalidArgument> {
    if value.is_zero() || value > MAX_SANDBOX_TIMEOUT {
        return Err(invalid(
            field,
            format!("must be above 0 and at most {}", humantime::format_duration(MAX_SANDBOX_TIMEOUT)),
        ));
    }
    Ok(value)
}

/// A stop grace: at most [`MAX_STOP_GRACE`].
pub(crate) fn stop_grace(value: Duration) -> Result<Duration, InvalidArgument> {
    if value > MAX_STOP_GRACE {
        return Err(invalid("stop_grace", format!("at most {}", humantime::format_duration(MAX_STOP_GRACE))));
    }
    Ok(value)
}

/// Resource limits, checked against the host.
pub(crate) fn limits(
    memory_bytes: Option<u64>,
    cpu_millis: Option<u32>,
    pids_max: Option<u32>,
    host_memory: u64,
    host_cpu_millis: u64,
) -> Result<Limits, InvalidArgument> {
    if let Some(memory) = memory_bytes
        && !(MIN_MEMORY..=host_memory).contains(&memory)
    {
        return Err(invalid(
            "resources.memory_bytes",
            format!("must be from {MIN_MEMORY} to the host's {host_memory}"),
        ));
    }
    if let Some(cpu) = cpu_millis
        && !(u64::from(MIN_CPU_MILLIS)..=host_cpu_millis).contains(&u64::from(cpu))
    {
        return Err(invalid(
            "resources.cpu_millis",
            format!("must be from {MIN_CPU_MILLIS} to the host's {host_cpu_millis}"),
        ));
    }
    if let Some(pids) = pids_max
        && !PIDS.contains(&pids)
    {
        return Err(invalid(
            "resources.pids_max",
            format!("must be from {} to {}", PIDS.start(), PIDS.end()),
        ));
    }
    Ok(Limits { memory_bytes, cpu_millis, pids_max })
}

/// Labels: bounded keys and values, printable.
pub(crate) fn labels(labels: &BTreeMap<String, String>) -> Result<(), InvalidArgument> {
    if labels.len() > MAX_LABELS {
        return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
    }
    for (key, value) in labels {
        let ok_key = (1..=MAX_LABEL_KEY).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !ok_key {
            return Err(invalid(
                format!("labels[{:?}]", truncate(key)),
                "keys are 1 to 63 of [A-Za-z0-9._/-]",
            ));
        }
        if value.chars().count() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
            return Err(invalid(format!("labels[{key:?}]"), "values are at most 256 printable characters"));
        }
    }
    Ok(())
}

fn truncate(value: &str) -> String {
    value.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_names_no_command_env_cwd_or_template() {
        assert!(restore_only(&[], &[], None, Some("")).is_ok());
        assert_eq!(restore_only(&["true".into()], &[], None, None).unwrap_err().field, "argv");
        assert_eq!(restore_only(&[], &[("A".into(), "1".into())], None, None).unwrap_err().field, "env");
        assert_eq!(restore_only(&[], &[], Some("/tmp"), None).unwrap_err().field, "cwd");
        assert_eq!(restore_only(&[], &[], None, Some("host")).unwrap_err().field, "template");
    }

    #[test]
    fn command_needs_argv_and_bounds_it() {
        assert_eq!(command(&[], &[]).unwrap_err().field, "argv");
        assert_eq!(command(&[String::new()], &[]).unwrap_err().field, "argv");
        assert_eq!(command(&["a\0b".into()], &[]).unwrap_err().field, "argv[0]");
        assert_eq!(command(&vec!["x".into(); MAX_ARGS + 1], &[]).unwrap_err().field, "argv");
        assert_eq!(command(&["x".repeat(MAX_COMMAND_BYTES + 1)], &[]).unwrap_err().field, "argv");
        assert!(command(&["true".into()], &[("PATH".into(), "/bin".into())]).is_ok());
    }

    #[test]
    fn env_names_are_checked() {
        for bad in ["", "1A", "A=B", "A B", "é"] {
            let error = command(&["true".into()], &[(bad.into(), "v".into())]).unwrap_err();
            assert!(error.field.starts_with("env["), "{bad}: {error}");
        }
    }

    #[test]
    fn cwd_cannot_escape() {
        assert_eq!(cwd(None), Ok(None));
        assert_eq!(cwd(Some("/work/dir")), Ok(Some(PathBuf::from("/work/dir"))));
        for bad in ["relative", "/a/../b", "./a", "/a\0", "/./tmp", "/tmp/.", "/tmp/.."] {
            assert_eq!(cwd(Some(bad)).unwrap_err().field, "cwd", "{bad}");
        }
        assert_eq!(cwd(Some("/tmp/.hidden")), Ok(Some(PathBuf::from("/tmp/.hidden"))));
        // At most MAX_PATH bytes.
        let longest = format!("/{}", "a".repeat(MAX_PATH - 1));
        assert_eq!(cwd(Some(&longest)), Ok(Some(PathBuf::from(&longest))));
        assert_eq!(cwd(Some(&format!("{longest}a"))).unwrap_err().field, "cwd");
    }

    #[test]
    fn a_template_is_named_like_an_id() {
        assert_eq!(template_name("rootfs-1"), Ok(()));
        for bad in ["../etc", "/", "Host", "a/b", ""] {
            assert_eq!(template_name(bad).unwrap_err().field, "template", "{bad}");
        }
    }

    #[test]
    fn absurd_resources_are_refused() {
        let gib = 1 << 30;
        assert!(limits(Some(64 << 20), Some(500), Some(100), gib, 2000).is_ok());
        assert_eq!(limits(Some(1), None, None, gib, 2000).unwrap_err().field, "resources.memory_bytes");
        assert_eq!(
            limits(Some(u64::MAX), None, None, gib, 2000).unwrap_err().field,
            "resources.memory_bytes"
        );
        assert_eq!(limits(None, Some(1), None, gib, 2000).unwrap_err().field, "resources.cpu_millis");
        assert_eq!(limits(None, Some(1_000_000), None, gib, 2000).unwrap_err().field, "resources.cpu_millis");
        assert_eq!(limits(None, None, Some(0), gib, 2000).unwrap_err().field, "resources.pids_max");
        // The init and the command need two; the message states the one range that is checked.
        let one = limits(None, None, Some(1), gib, 2000).unwrap_err();
        assert_eq!(
            (one.field.as_str(), one.reason.as_str()),
            ("resources.pids_max", "must be from 2 to 32768")
        );
        assert!(limits(None, None, Some(2), gib, 2000).is_ok());
        assert!(limits(None, None, Some(32_768), gib, 2000).is_ok());
        assert!(limits(None, None, Some(32_769), gib, 2000).is_err());
    }

    #[test]
    fn labels_are_bounded() {
        let mut map = BTreeMap::new();
        map.insert("team".into(), "a".into());
        assert!(labels(&map).is_ok());
        map.insert("bad key".into(), "a".into());
        assert!(labels(&map).unwrap_err().field.starts_with("labels["));
        let many: BTreeMap<_, _> = (0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(labels(&many).unwrap_err().field, "labels");
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(timeout("timeout", Duration::from_secs(1)).is_ok());
        assert!(timeout("timeout", Duration::ZERO).is_err());
        assert!(timeout("timeout", MAX_SANDBOX_TIMEOUT + Duration::from_secs(1)).is_err());
    }
}
