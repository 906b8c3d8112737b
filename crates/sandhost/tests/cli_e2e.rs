//! The CLI end to end: the real `sandhost` binary against a real `sandhost serve` (real sandboxes, as
//! root), asserting exit codes and output. What is tested here is the client, which is the same
//! whatever the backend, so these run on `process` alone (the API suites run on both).
//!
//! Each test starts its own serve on free loopback ports with a temp state dir; the guard stops it
//! (and so every sandbox) even when the test panics, and the tests that end on purpose check that
//! nothing is left. No test asserts timing.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use std::process::{Command, Output};

use e2e::{BIN, Serve, ServeOptions, ok, run_bounded, stderr, stdout};
use serde_json::Value;

/// The CLI with `args` and no `SANDHOST_ADDR` (or token) from the test's environment.
fn cli_bare(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("SANDHOST_ADDR")
        .env_remove("SANDHOST_TOKEN")
        .stdin(std::process::Stdio::null());
    run_bounded(command)
}

/// The serve's gRPC address as the CLI takes it: `HOST:PORT`, no scheme.
fn addr(serve: &Serve) -> String {
    serve.grpc.to_string()
}

/// `args` with `--json` (right after the subcommand, before any `--`), parsed.
fn json(serve: &Serve, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.insert(1, "--json");
    let out = ok(&serve.cli(&argv));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{argv:?} printed no JSON ({e}): {out}"))
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// Stops the serve and asserts that it left no sandbox process and no sandbox cgroup.
fn stop_and_check_clean(mut serve: Serve) {
    serve.stop();
    assert_eq!(serve.leftover_processes(), Vec::<String>::new(), "sandbox processes left");
    let parent = e2e::cgroup_parent_for(&serve.state_dir);
    assert_eq!(e2e::leftover_cgroups(&parent), Vec::<std::path::PathBuf>::new(), "sandbox cgroups left");
}

#[test]
fn an_unreachable_node_exits_75_like_a_draining_one() {
    // A port nobody listens on: bound, then released.
    let nobody = e2e::free_addr().to_string();
    for args in [
        vec!["--addr", nobody.as_str(), "list"],
        vec!["list", "--addr", nobody.as_str()],
        vec!["status", "--json", "--addr", nobody.as_str()],
    ] {
        let out = cli_bare(&args);
        assert_eq!(code(&out), Some(75), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot connect to http://"), "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "nothing on stdout");
    }
    let mut command = Command::new(BIN);
    command.args(["wait", "x"]).env("SANDHOST_ADDR", &nobody);
    assert_eq!(code(&run_bounded(command)), Some(75), "through SANDHOST_ADDR too");
}

#[test]
fn the_address_goes_before_or_after_the_subcommand_without_a_scheme() {
    let serve = Serve::start();
    let addr = addr(&serve);
    assert_eq!(ok(&cli_bare(&["--addr", &addr, "create", "--id", "before", "--", "true"])), "before");
    assert_eq!(ok(&cli_bare(&["create", "--addr", &addr, "--id", "after", "--", "true"])), "after");
    let url = serve.url();
    assert_eq!(ok(&cli_bare(&["list", "-q", "--addr", &url])), "after\nbefore", "http:// is accepted too");
    // After the subcommand wins over before it (and over SANDHOST_ADDR).
    let nobody = e2e::free_addr().to_string();
    ok(&cli_bare(&["--addr", &nobody, "get", "before", "--addr", &addr]));
    let mut command = Command::new(BIN);
    command.args(["get", "before", "--addr", &addr]).env("SANDHOST_ADDR", &nobody);
    ok(&run_bounded(command));
    // A scheme the CLI cannot speak is refused before any call, naming the flag.
    let https = cli_bare(&["list", "--addr", &format!("https://{addr}")]);
    assert_eq!(code(&https), Some(1));
    assert!(stderr(&https).contains("--addr") && stderr(&https).contains("TLS"), "{}", stderr(&https));
    // serve takes --listen, not --addr.
    let serve_addr = cli_bare(&["--addr", &addr, "serve"]);
    assert_eq!(code(&serve_addr), Some(2), "{}", stderr(&serve_addr));
    assert!(stderr(&serve_addr).contains("--listen"), "{}", stderr(&serve_addr));
    stop_and_check_clean(serve);
}

#[test]
fn wait_exits_with_codes_of_its_own_and_exit_code_gives_the_sandbox_code() {
    // A host directory the host template shows (besides its defaults), for a command below.
    let shown = tempfile::Builder::new().prefix("sandhost-cli-").tempdir_in("/var/tmp").expect("temp dir");
    let shown_path = shown.path().canonicalize().expect("canonical");
    let mut host_paths: Vec<String> =
        sandhost_runtime::HostPaths::defaults().paths().iter().map(|p| p.display().to_string()).collect();
    host_paths.push(shown_path.display().to_string());
    let mut options = ServeOptions::default();
    options.env.push(("SANDHOST_HOST_PATHS".into(), host_paths.join(",")));
    let serve = Serve::start_with(options);
    for (id, script) in [("zero", "exit 0"), ("one", "exit 1"), ("three", "exit 3"), ("tempfail", "exit 75")]
    {
        ok(&serve.cli(&["create", "--id", id, "--", "sh", "-c", script]));
    }
    assert_eq!(code(&serve.cli(&["wait", "zero"])), Some(0));
    for (id, own) in [("one", 1), ("three", 3), ("tempfail", 75)] {
        let wait = serve.cli(&["wait", id]);
        assert_eq!(code(&wait), Some(5), "{id}: a non-zero exit is 5, not the CLI's {own}");
        assert!(
            stderr(&wait).contains(&format!("(code {own})")),
            "{id}: the code on stderr: {}",
            stderr(&wait)
        );
        assert_eq!(code(&serve.cli(&["wait", id, "--exit-code"])), Some(own), "{id}: --exit-code");
    }

    ok(&serve.cli(&["create", "--id", "sleeper", "--", "sleep", "1000"]));
    ok(&serve.cli(&["kill", "sleeper", "--now"]));
    let wait = serve.cli(&["wait", "sleeper"]);
    assert_eq!(code(&wait), Some(6), "a signal: {}", stderr(&wait));
    assert!(stderr(&wait).contains("signal 9"), "{}", stderr(&wait));
    assert_eq!(code(&serve.cli(&["wait", "sleeper", "--exit-code"])), Some(128 + 9));

    // A command that only its start can find unusable (an executable file that is no program:
    // execve says ENOEXEC): the Create fails, the sandbox is kept as start_failed.
    let not_a_program = shown_path.join("not-a-program");
    std::fs::write(&not_a_program, b"not a program\n").expect("write");
    std::fs::set_permissions(&not_a_program, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = not_a_program.to_str().expect("utf-8");
    let create = serve.cli(&["create", "--id", "never", "--", path]);
    assert_eq!(code(&create), Some(1), "{}", stderr(&create));
    let wait = serve.cli(&["wait", "never"]);
    assert_eq!(code(&wait), Some(7), "it never ran: {}", stderr(&wait));
    assert!(stderr(&wait).contains("start_failed"), "{}", stderr(&wait));

    // --json prints the reply; the exit code is the same.
    let wait = serve.cli(&["wait", "three", "--json"]);
    assert_eq!(code(&wait), Some(5));
    let reply: Value = serde_json::from_str(&stdout(&wait)).expect("JSON");
    assert_eq!(reply["sandbox"]["exit"]["code"], 3, "{reply}");
    stop_and_check_clean(serve);
}

#[test]
fn json_is_the_proto3_mapping_of_each_reply() {
    let serve = Serve::start();
    let created =
        json(&serve, &["create", "--id", "j", "--label", "team=a", "--memory", "64m", "--", "sleep", "1000"]);
    let sandbox = &created["sandbox"];
    assert_eq!(sandbox["id"], "j", "{created}");
    assert_eq!(sandbox["state"], "SANDBOX_STATE_RUNNING", "enums by name: {created}");
    assert_eq!(sandbox["resources"]["memoryBytes"], "67108864", "lowerCamelCase, uint64 as a string");
    assert!(sandbox["lifecycleId"].as_str().is_some_and(|l| !l.is_empty()), "{created}");
    assert!(sandbox["createdAt"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{created}");
    assert!(sandbox.get("exit").is_none() && sandbox.get("restoredFrom").is_none(), "defaults left out");
    assert_eq!(sandbox["labels"]["team"], "a");

    assert_eq!(json(&serve, &["get", "j"])["sandbox"]["id"], "j");
    let listed = json(&serve, &["list"]);
    assert_eq!(listed["sandboxes"][0]["id"], "j", "{listed}");
    assert_eq!(json(&serve, &["pause", "j"])["sandbox"]["state"], "SANDBOX_STATE_PAUSED");
    assert_eq!(json(&serve, &["resume", "j"])["sandbox"]["state"], "SANDBOX_STATE_RUNNING");
    assert_eq!(json(&serve, &["update", "j", "--label", "team=b"])["sandbox"]["labels"]["team"], "b");

    let status = json(&serve, &["status"]);
    assert_eq!(status["status"], "NODE_STATUS_READY", "{status}");
    assert!(status["nodeId"].as_str().is_some_and(|id| !id.is_empty()), "{status}");
    assert_eq!(status["runtime"], "process");

    let killed = json(&serve, &["kill", "j", "--now"]);
    assert_eq!(killed["sandbox"]["exit"]["reason"], "EXIT_REASON_KILLED", "{killed}");
    assert_eq!(killed["sandbox"]["exit"]["signal"], 9, "{killed}");
    assert_eq!(json(&serve, &["snapshots"]), serde_json::json!({}), "an empty reply is {{}}");

    let drained = json(&serve, &["drain", "--detach"]);
    assert!(
        drained["progress"]["status"].as_str().is_some_and(|s| s.starts_with("NODE_STATUS_")),
        "{drained}"
    );
    let stopped = json(&serve, &["force-stop"]);
    assert!(stopped["progress"].is_object(), "{stopped}");
    let undrained = json(&serve, &["undrain"]);
    assert_eq!(undrained["progress"]["status"], "NODE_STATUS_READY", "{undrained}");

    // A stream: one reply per line, the bytes in base64.
    ok(&serve.cli(&["create", "--id", "talker", "--", "sh", "-c", "echo hello"]));
    let _ = serve.cli(&["wait", "talker"]);
    let lines = ok(&serve.cli(&["logs", "talker", "--json"]));
    let first: Value = serde_json::from_str(lines.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["data"], "aGVsbG8K", "\"hello\\n\" in base64: {lines}");
    stop_and_check_clean(serve);
}

#[test]
fn list_filters_by_state_and_label_and_prints_ids_alone() {
    let serve = Serve::start();
    ok(&serve.cli(&["create", "--id", "a", "--label", "team=x", "--", "sleep", "1000"]));
    ok(&serve.cli(&["create", "--id", "b", "--label", "team=y", "--label", "tier=1", "--", "sleep", "1000"]));
    ok(&serve.cli(&["create", "--id", "c", "--label", "team=y", "--", "true"]));
    assert_eq!(code(&serve.cli(&["wait", "c"])), Some(0));

    assert_eq!(ok(&serve.cli(&["list", "-q"])), "a\nb\nc");
    assert_eq!(ok(&serve.cli(&["list", "--state", "running", "-q"])), "a\nb");
    assert_eq!(ok(&serve.cli(&["list", "--state", "exited", "--quiet"])), "c");
    assert_eq!(ok(&serve.cli(&["list", "--label", "team=y", "-q"])), "b\nc");
    assert_eq!(ok(&serve.cli(&["list", "--label", "team=y", "--label", "tier=1", "-q"])), "b");
    assert_eq!(ok(&serve.cli(&["list", "--state", "paused", "-q"])), "", "none: nothing printed");
    let table = ok(&serve.cli(&["list", "--state", "running"]));
    assert!(table.starts_with("ID") && table.contains("sleep 1000") && !table.contains("\nc "), "{table}");
    stop_and_check_clean(serve);
}

#[test]
fn a_sandbox_s_argv_never_reaches_the_terminal_raw_and_json_keeps_it_exact() {
    let serve = Serve::start();
    let hostile = "\u{1b}[2J\nforged  running";
    ok(&serve.cli(&["create", "--id", "h", "--", "echo", hostile]));
    assert_eq!(code(&serve.cli(&["wait", "h"])), Some(0));
    for args in [&["list"][..], &["get", "h"]] {
        let text = ok(&serve.cli(args));
        assert!(!text.contains('\u{1b}'), "{args:?}: a raw escape: {text:?}");
        assert!(!text.lines().any(|line| line.starts_with("forged")), "{args:?}: a forged row: {text:?}");
        assert!(text.contains("\\u{1b}[2J\\nforged"), "{args:?}: shown escaped: {text:?}");
    }
    let reply = json(&serve, &["get", "h"]);
    assert_eq!(reply["sandbox"]["argv"][1], hostile, "JSON stays exact");
    stop_and_check_clean(serve);
}

#[test]
fn update_moves_the_end_time_and_replaces_the_labels() {
    let serve = Serve::start();
    ok(&serve.cli(&["create", "--id", "u", "--timeout", "1h", "--label", "a=1", "--", "sleep", "1000"]));
    let before = json(&serve, &["get", "u"])["sandbox"]["endTime"].as_str().unwrap().to_owned();
    let human = ok(&serve.cli(&["update", "u", "--timeout", "5m", "--label", "b=2", "--label", "c=3"]));
    assert!(human.contains("b=2,c=3"), "{human}");
    let after = json(&serve, &["get", "u"]);
    let end = after["sandbox"]["endTime"].as_str().unwrap().to_owned();
    // RFC 3339 in UTC with the same layout: the text order is the time order.
    assert!(end < before, "5m from now is before 1h from then: {end} vs {before}");
    assert_eq!(after["sandbox"]["labels"], serde_json::json!({"b": "2", "c": "3"}), "replaced, not merged");
    let cleared = json(&serve, &["update", "u", "--clear-labels"]);
    assert!(cleared["sandbox"].get("labels").is_none(), "no labels left: {cleared}");
    let nothing = serve.cli(&["update", "u"]);
    assert_eq!(code(&nothing), Some(2), "an update of nothing is a usage error: {}", stderr(&nothing));
    stop_and_check_clean(serve);
}

#[test]
fn create_takes_a_working_directory_and_a_stop_grace() {
    let serve = Serve::start();
    ok(&serve.cli(&["create", "--id", "cwd", "--cwd", "/tmp", "--", "sh", "-c", "pwd"]));
    assert_eq!(code(&serve.cli(&["wait", "cwd"])), Some(0));
    assert_eq!(ok(&serve.cli(&["logs", "cwd"])), "/tmp");

    // The grace reaches the node: an absurd one is refused there, naming the field.
    let absurd = serve.cli(&["create", "--stop-grace", "1000d", "--", "true"]);
    assert_eq!(code(&absurd), Some(1));
    assert!(
        stderr(&absurd).contains("INVALID_ARGUMENT") && stderr(&absurd).contains("grace"),
        "{}",
        stderr(&absurd)
    );
    // A command that ignores SIGTERM is killed once its grace is over.
    ok(&serve.cli(&[
        "create",
        "--id",
        "stubborn",
        "--stop-grace",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; sleep 1000",
    ]));
    // Only once the trap is set: a SIGTERM before it would end `sh` at once.
    let mut follow = serve.spawn_cli(&["logs", "-f", "stubborn"]);
    assert_eq!(follow.next_line().as_deref(), Some("ready"));
    drop(follow);
    let killed = ok(&serve.cli(&["kill", "stubborn"]));
    assert!(killed.contains("signal 9"), "killed after the grace: {killed}");
    stop_and_check_clean(serve);
}

#[test]
fn logs_tail_and_timestamps() {
    let serve = Serve::start();
    ok(&serve.cli(&[
        "create",
        "--id",
        "lines",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done",
    ]));
    assert_eq!(code(&serve.cli(&["wait", "lines"])), Some(0));
    assert_eq!(ok(&serve.cli(&["logs", "lines", "--tail", "2"])), "line4\nline5");
    assert_eq!(ok(&serve.cli(&["logs", "lines", "--tail", "0"])), "");
    assert_eq!(ok(&serve.cli(&["logs", "lines", "--tail", "99"])), "line1\nline2\nline3\nline4\nline5");
    // Following an exited sandbox ends; each line gets the time it was received.
    let stamped = ok(&serve.cli(&["logs", "lines", "-f", "--tail", "2", "--timestamps"]));
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    for (line, text) in lines.iter().zip(["line4", "line5"]) {
        let (stamp, rest) = line.split_once(' ').expect("a stamp, then the line");
        assert_eq!(rest, text);
        assert!(stamp.len() == "2026-01-01T00:00:00.000Z".len() && stamp.ends_with('Z'), "{stamp}");
    }
    let refused = serve.cli(&["logs", "lines", "--timestamps"]);
    assert_eq!(code(&refused), Some(2), "--timestamps needs -f: {}", stderr(&refused));

    // The tail, then the rest as it is written: every line once, in order.
    ok(&serve.cli(&[
        "create",
        "--id",
        "slow",
        "--",
        "sh",
        "-c",
        "echo a; echo b; sleep 1; echo c; sleep 1; echo d",
    ]));
    let followed = ok(&serve.cli(&["logs", "slow", "-f", "--tail", "10"]));
    assert_eq!(followed, "a\nb\nc\nd", "nothing twice, nothing lost");
    let last = ok(&serve.cli(&["logs", "slow", "-f", "--tail", "1"]));
    assert_eq!(last, "d");
    stop_and_check_clean(serve);
}

#[test]
fn a_drain_that_must_force_exits_3_and_names_what_held_it() {
    let serve = Serve::start();
    ok(&serve.cli(&["create", "--id", "holder", "--", "sleep", "1000"]));
    let drain = serve.cli(&["drain", "--timeout", "1s"]);
    assert_eq!(code(&drain), Some(3), "force-stopped: {}", stderr(&drain));
    // Without a terminal each change of the progress is a line on stderr, naming the holders.
    assert!(stderr(&drain).contains("held by: holder"), "{}", stderr(&drain));
    assert!(stderr(&drain).contains("1 force-stopped"), "{}", stderr(&drain));
    assert_eq!(stdout(&drain), "DRAINED: 0 live, 1 exited, 1 force-stopped");
    assert!(stderr(&drain).lines().all(|l| l.chars().count() <= 120), "{}", stderr(&drain));
    // Asked again: the same drain, the same answer; --json prints the last progress reply.
    let again = serve.cli(&["drain", "--json"]);
    assert_eq!(code(&again), Some(3), "{}", stderr(&again));
    let reply: Value = serde_json::from_str(&stdout(&again)).expect("JSON");
    assert_eq!(reply["progress"]["status"], "NODE_STATUS_DRAINED", "{reply}");
    assert_eq!(reply["progress"]["forceStopped"], "1", "{reply}");
    // --detach does not wait for the outcome.
    assert_eq!(code(&serve.cli(&["drain", "--detach"])), Some(0));
    ok(&serve.cli(&["undrain"]));

    // A drain that nothing holds is clean.
    ok(&serve.cli(&["create", "--id", "brief", "--", "true"]));
    assert_eq!(code(&serve.cli(&["wait", "brief"])), Some(0));
    let clean = serve.cli(&["drain"]);
    assert_eq!(code(&clean), Some(0), "{}", stderr(&clean));
    stop_and_check_clean(serve);
}

#[test]
fn completion_and_man_describe_the_cli() {
    let bash = ok(&cli_bare(&["completion", "bash"]));
    assert!(bash.contains("create") && bash.contains("--addr"), "{bash}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(!ok(&cli_bare(&["completion", shell])).is_empty(), "{shell}");
    }
    assert_eq!(code(&cli_bare(&["completion", "tcsh"])), Some(2));

    let page = ok(&cli_bare(&["man"]));
    assert!(page.contains(".TH sandhost 1"), "{page}");
    assert!(page.contains("EXIT STATUS") && page.contains("SANDHOST_ADDR"), "{page}");
    if let Some(rendered) = render_with_man(&page) {
        assert!(rendered.contains("EXIT STATUS"), "{rendered}");
        assert!(rendered.contains("sandhost-create(1)"), "{rendered}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let written = ok(&cli_bare(&["man", "--dir", dir.path().to_str().unwrap()]));
    for page in ["sandhost.1", "sandhost-create.1", "sandhost-drain.1"] {
        let path = dir.path().join(page);
        assert!(written.contains(path.to_str().unwrap()), "{written}");
        assert!(std::fs::read_to_string(&path).unwrap().contains(".TH"), "{page}");
    }

    let help = ok(&cli_bare(&["--help"]));
    assert!(help.contains("Exit codes of the client subcommands"), "{help}");
    for line in ["  3  drain:", "  5  wait:", " 75  the node is unreachable"] {
        assert!(help.contains(line), "{line} in {help}");
    }
}

/// The page as `man -l` renders it, where man is installed (else `None`: the test then checks the
/// roff alone).
fn render_with_man(page: &str) -> Option<String> {
    Command::new("man").arg("--version").output().ok().filter(|o| o.status.success())?;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sandhost.1");
    std::fs::write(&path, page).expect("write the page");
    let mut command = Command::new("man");
    command.arg("-l").arg(&path).env("MANPAGER", "cat").env("MANWIDTH", "80");
    let output = run_bounded(command);
    assert!(output.status.success(), "man -l failed: {}", stderr(&output));
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}
