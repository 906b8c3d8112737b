//! The configuration's flags, defaults and checks.

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Wrapper {
    #[command(flatten)]
    args: ServeArgs,
}

fn args(flags: &[&str]) -> ServeArgs {
    let mut argv = vec!["serve"];
    argv.extend_from_slice(flags);
    Wrapper::try_parse_from(argv).expect("flags parse").args
}

#[test]
fn durations_accept_the_pinned_forms() {
    for (text, secs) in [("90s", 90), ("5m", 300), ("1h30m", 5400), ("1m30s", 90), ("0", 0)] {
        assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
    }
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("-5s").is_err());
}

#[test]
fn defaults_are_the_pinned_ones() {
    let config = args(&["--state-dir", "/tmp/x"]).validate(None).expect("valid");
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
    assert_eq!(config.shutdown_drain_timeout, None);
    assert!(!config.force_stop);
    assert_eq!(config.force_shutdown_timeout, DEFAULT_FORCE_SHUTDOWN_TIMEOUT);
    assert_eq!(config.runtime, RuntimeKind::Process);
    assert_eq!(config.supervisor_stop_timeout, None);
}

#[test]
fn the_supervisor_stop_timeout_is_a_duration_naming_its_variable() {
    let config = args(&["--supervisor-stop-timeout", "12m"]).validate(None).expect("valid");
    assert_eq!(config.supervisor_stop_timeout, Some(Duration::from_secs(720)));
    let error = args(&["--supervisor-stop-timeout", "soon"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("SANDHOST_SUPERVISOR_STOP_TIMEOUT"), "{error}");
}

#[test]
fn a_malformed_value_names_its_variable() {
    let error = args(&["--shutdown-drain-timeout", "soon"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("SHUTDOWN_DRAIN_TIMEOUT"), "{error}");
    let error = args(&["--force-stop", "maybe"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("FORCE_STOP"), "{error}");
    let error = args(&["--force-shutdown-timeout", "0"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("FORCE_SHUTDOWN_TIMEOUT"), "{error}");
}

#[test]
fn the_start_parallelism_defaults_by_backend_and_is_checked() {
    let process = args(&[]).validate(None).expect("valid").sandbox.start_parallelism;
    let gvisor = args(&["--runtime", "gvisor"]).validate(None).expect("valid").sandbox.start_parallelism;
    assert_eq!(process, RuntimeKind::Process.default_start_parallelism());
    assert_eq!(gvisor, RuntimeKind::Gvisor.default_start_parallelism());
    assert!(gvisor >= 4 && process == 4 * gvisor, "{process} {gvisor}");
    let set = args(&["--start-parallelism", "3"]).validate(None).expect("valid");
    assert_eq!(set.sandbox.start_parallelism, 3);
    let error = args(&["--start-parallelism", "0"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("SANDHOST_START_PARALLELISM"), "{error}");
}

#[test]
fn the_admitted_starts_bound_takes_its_new_name_first_and_still_reads_the_old_one() {
    let default = args(&[]).validate(None).expect("valid").sandbox.max_admitted_starts;
    assert_eq!(default, DEFAULT_MAX_ADMITTED_STARTS);
    let old = args(&["--max-concurrent-starts", "7"]).validate(None).expect("valid");
    assert_eq!(old.sandbox.max_admitted_starts, 7);
    let both = args(&["--max-concurrent-starts", "7", "--max-admitted-starts", "9"]).validate(None);
    assert_eq!(both.expect("valid").sandbox.max_admitted_starts, 9);
    let error = args(&["--max-admitted-starts", "0"]).validate(None).expect_err("invalid");
    assert!(error.to_string().contains("SANDHOST_MAX_ADMITTED_STARTS"), "{error}");
}

#[test]
fn sandboxes_are_bounded_by_default_and_the_defaults_are_checked() {
    let config = args(&[]).validate(None).expect("valid").sandbox;
    assert_eq!(config.default_limits.memory_bytes, Some(DEFAULT_SANDBOX_MEMORY));
    assert_eq!(config.default_limits.cpu_millis, Some(DEFAULT_SANDBOX_CPU_MILLIS));
    assert_eq!(config.default_limits.pids_max, Some(DEFAULT_SANDBOX_PIDS));
    let set = args(&["--default-memory", "1g", "--default-cpus", "0.5", "--default-pids", "64"])
        .validate(None)
        .expect("valid")
        .sandbox;
    assert_eq!(
        (set.default_limits.memory_bytes, set.default_limits.cpu_millis, set.default_limits.pids_max),
        (Some(1 << 30), Some(500), Some(64))
    );
    for (flag, value, variable) in [
        ("--default-memory", "lots", "SANDHOST_DEFAULT_MEMORY"),
        ("--default-memory", "1k", "SANDHOST_DEFAULT_MEMORY"),
        ("--default-cpus", "0", "SANDHOST_DEFAULT_CPUS"),
        ("--default-pids", "1", "SANDHOST_DEFAULT_PIDS"),
        ("--memory-reserve", "some", "SANDHOST_MEMORY_RESERVE"),
        ("--memory-overcommit", "0", "SANDHOST_MEMORY_OVERCOMMIT"),
        ("--memory-overcommit", "NaN", "SANDHOST_MEMORY_OVERCOMMIT"),
    ] {
        let error = args(&[flag, value]).validate(None).expect_err("invalid");
        assert!(error.to_string().contains(variable), "{flag} {value}: {error}");
    }
}

#[test]
fn the_allocatable_memory_is_the_host_less_the_reserve_times_the_overcommit() {
    let config =
        SandboxConfig { memory_reserve: 1 << 30, memory_overcommit: 1.5, ..SandboxConfig::default() };
    assert_eq!(config.allocatable_memory(9 << 30), 12 << 30);
    assert_eq!(config.allocatable_memory(1 << 29), 0, "a host smaller than the reserve");
}

#[test]
fn a_public_listen_needs_a_token() {
    assert!(args(&["--listen", "0.0.0.0:5008"]).validate(None).is_err());
    assert!(args(&["--listen", "0.0.0.0:5008"]).validate(Some("secret".into())).is_ok());
}

#[test]
fn templates_are_checked() {
    assert!(args(&["--template", "../x=/tmp"]).validate(None).is_err());
    assert!(args(&["--template", "host=/tmp"]).validate(None).is_err());
    assert!(args(&["--template", "img=relative"]).validate(None).is_err());
    let config = args(&["--template", "img=/tmp"]).validate(None).expect("valid");
    assert_eq!(config.templates, vec![("img".to_owned(), PathBuf::from("/tmp"))]);
}

#[test]
fn the_warm_pool_names_known_templates_with_a_bounded_size() {
    let none = args(&[]).validate(None).expect("valid");
    assert!(none.warm_pool.templates.is_empty());
    let config =
        args(&["--template", "img=/tmp", "--warm-pool", "host=16,img=2", "--warm-pool-max-age", "5m"])
            .validate(None)
            .expect("valid");
    let pool: Vec<(&str, usize)> =
        config.warm_pool.templates.iter().map(|t| (t.name.as_str(), t.size)).collect();
    assert_eq!(pool, [("host", 16), ("img", 2)]);
    assert_eq!(
        config.warm_pool.templates[1].template,
        sandhost_runtime::Template::Rootfs { name: "img".into(), path: "/tmp".into() }
    );
    assert_eq!(config.warm_pool.max_age, Duration::from_secs(300));
    for (bad, why) in [
        ("host", "expected TEMPLATE=N"),
        ("host=", "N must be a whole number"),
        ("host=0", "N must be a whole number"),
        ("host=-1", "N must be a whole number"),
        ("host=99999999", "N must be a whole number"),
        ("nope=1", "`host` or a name registered"),
        ("host=1,host=2", "named once"),
        ("../x=1", "`host` or a name registered"),
    ] {
        let error = args(&["--warm-pool", bad]).validate(None).expect_err(bad).to_string();
        assert!(error.contains("SANDHOST_WARM_POOL") && error.contains(why), "{bad}: {error}");
    }
    let gvisor = args(&["--runtime", "gvisor", "--warm-pool", "host=1"]).validate(None).expect_err("gvisor");
    assert!(gvisor.to_string().contains("only the process runtime"), "{gvisor}");
    let zero = args(&["--warm-pool", "host=1", "--warm-pool-max-age", "0s"]).validate(None).expect_err("age");
    assert!(zero.to_string().contains("SANDHOST_WARM_POOL_MAX_AGE"), "{zero}");
}

#[test]
fn the_host_paths_default_to_the_system_directories_and_a_list_replaces_them() {
    let config = args(&["--state-dir", "/var/lib/sandhost"]).validate(None).expect("valid");
    assert_eq!(config.host_paths, HostPaths::defaults());
    assert!(config.host_paths.paths().contains(&PathBuf::from("/usr")), "{:?}", config.host_paths);
    let set = args(&["--host-paths", "/usr, /etc", "--state-dir", "/var/lib/sandhost"])
        .validate(None)
        .expect("valid");
    assert_eq!(set.host_paths.paths(), [PathBuf::from("/usr"), PathBuf::from("/etc")]);
}

#[test]
fn the_host_paths_are_checked_and_an_error_names_the_variable() {
    std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
    let state = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let state_dir = state.path().to_str().expect("utf-8").to_owned();
    std::fs::create_dir(state.path().join("sub")).expect("mkdir");
    let inside = format!("{state_dir}/sub");
    let holding = state.path().parent().expect("parent").to_str().expect("utf-8").to_owned();
    for (list, state_dir, why) in [
        ("", "/var/lib/sandhost", "empty"),
        ("usr", "/var/lib/sandhost", "not an absolute path"),
        ("/", "/var/lib/sandhost", "whole host"),
        ("/usr/", "/var/lib/sandhost", "not normalised"),
        ("/usr/../etc", "/var/lib/sandhost", "not normalised"),
        ("/usr,,/etc", "/var/lib/sandhost", "not an absolute path"),
        ("/no/such/dir", "/var/lib/sandhost", "does not exist"),
        ("/proc", "/var/lib/sandhost", "has its own /proc"),
        ("/usr,/usr/bin", "/var/lib/sandhost", "already shown"),
        ("/usr", "/usr/local/sandhost", "state dir"),
        (&inside, &state_dir, "state dir"),
        (&holding, &state_dir, "state dir"),
    ] {
        let error = args(&["--host-paths", list, "--state-dir", state_dir]).validate(None).expect_err(list);
        let text = error.to_string();
        assert!(text.contains("SANDHOST_HOST_PATHS") && text.contains(why), "{list:?}: {text}");
    }
    // The defaults are checked against the state dir too.
    let error = args(&["--state-dir", "/etc/sandhost"]).validate(None).expect_err("under /etc");
    assert!(error.to_string().contains("SANDHOST_HOST_PATHS"), "{error}");
}

#[test]
fn the_cgroup_parent_is_left_to_the_agent_unless_a_valid_path_is_given() {
    let config = args(&[]).validate(None).expect("valid");
    assert_eq!(config.cgroup_parent, CgroupParent::auto(DEFAULT_CGROUP_PARENT), "the default");
    let config = args(&["--cgroup-parent", "auto"]).validate(None).expect("valid");
    assert_eq!(config.cgroup_parent, CgroupParent::auto(DEFAULT_CGROUP_PARENT), "said explicitly");
    for path in ["sandhost", "sandhost-2", "ops.slice/sandhost"] {
        let config = args(&["--cgroup-parent", path]).validate(None).expect("valid");
        assert_eq!(config.cgroup_parent, CgroupParent::from(path));
    }
    for invalid in ["/sandhost", "a/../b", "a//b", "a b", "", "sandhost/"] {
        let error = args(&["--cgroup-parent", invalid]).validate(None).expect_err(invalid);
        assert!(error.to_string().contains("SANDHOST_CGROUP_PARENT"), "{error}");
    }
}
