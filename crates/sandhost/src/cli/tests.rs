//! The command line as clap parses it: every subcommand, its flags, what they build.

use clap::Parser;
use sandhost_proto::v1 as pb;

use super::*;

#[derive(Debug, Parser)]
struct Wrapper {
    #[command(subcommand)]
    command: ClientCommand,
}

fn parse(argv: &[&str]) -> Result<ClientCommand, clap::Error> {
    Wrapper::try_parse_from(std::iter::once("sandhost").chain(argv.iter().copied())).map(|w| w.command)
}

fn create_args(argv: &[&str]) -> Box<create::CreateArgs> {
    match parse(argv).expect("parses") {
        ClientCommand::Create(args) => args,
        other => panic!("not create: {other:?}"),
    }
}

#[test]
fn create_takes_the_pinned_flags_and_the_command_after_dashes() {
    let args = create_args(&[
        "create",
        "--id",
        "sb-1",
        "--template",
        "host",
        "--timeout",
        "1m30s",
        "--memory",
        "256M",
        "--cpus",
        "0.5",
        "--pids",
        "64",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--cwd",
        "/tmp",
        "--label",
        "team=a",
        "--drain-policy",
        "checkpoint",
        "--stop-grace",
        "3s",
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi",
    ]);
    assert!(args.json);
    let request = args.request().expect("valid");
    assert_eq!(request.id, "sb-1");
    assert_eq!(request.argv, ["sh", "-c", "echo hi"]);
    assert_eq!(request.timeout, Some(prost_types::Duration { seconds: 90, nanos: 0 }));
    assert_eq!(request.stop_grace, Some(prost_types::Duration { seconds: 3, nanos: 0 }));
    assert_eq!(request.cwd, "/tmp");
    let resources = request.resources.expect("resources");
    assert_eq!(resources.memory_bytes, Some(256 << 20));
    assert_eq!(resources.cpu_millis, Some(500));
    assert_eq!(resources.pids_max, Some(64));
    assert_eq!(request.env[1].name, "B");
    assert_eq!(request.env[1].value, "x=y");
    assert_eq!(request.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(request.drain_policy(), pb::DrainPolicy::Checkpoint);
    assert_eq!(request.restore_from, "");
}

#[test]
fn a_malformed_stop_grace_names_the_flag() {
    let error =
        create_args(&["create", "--stop-grace", "soon", "--", "true"]).request().expect_err("invalid");
    assert!(error.to_string().contains("--stop-grace"), "{error}");
}

#[test]
fn a_restore_takes_no_command_and_refuses_one() {
    let request = create_args(&["create", "--restore-from", "snap-1"]).request().expect("valid");
    assert_eq!(request.restore_from, "snap-1");
    assert!(request.argv.is_empty());
    for extra in [&["--", "true"][..], &["--env", "A=1"], &["--cwd", "/tmp"], &["--template", "t"]] {
        let argv: Vec<&str> = ["create", "--restore-from", "snap-1"].iter().chain(extra).copied().collect();
        assert!(parse(&argv).is_err(), "{argv:?}");
    }
}

#[test]
fn create_needs_a_command() {
    assert!(parse(&["create"]).is_err());
    assert!(parse(&["create", "--id", "x"]).is_err());
}

#[test]
fn every_subcommand_parses_and_takes_json() {
    for argv in [
        &["create", "--json", "--", "true"][..],
        &["list", "--json"],
        &["list", "--state", "running", "--label", "a=1", "--label", "b=2", "-q"],
        &["get", "sb-1", "--json"],
        &["logs", "sb-1", "-f", "--tail", "5", "--timestamps"],
        &["logs", "sb-1", "--json"],
        &["kill", "sb-1", "--now", "--json"],
        &["pause", "sb-1", "--json"],
        &["resume", "sb-1", "--json"],
        &["update", "sb-1", "--timeout", "5m", "--label", "a=1", "--json"],
        &["update", "sb-1", "--clear-labels"],
        &["wait", "sb-1", "--json"],
        &["wait", "sb-1", "--exit-code"],
        &["checkpoint", "sb-1", "--stop", "--json"],
        &["snapshots", "--json"],
        &["snapshot-rm", "snap-1", "--json"],
        &["status", "--json"],
        &["drain", "--timeout", "5m", "--force", "--detach", "--json"],
        &["undrain", "--json"],
        &["force-stop", "--json"],
        &["list", "--addr", "127.0.0.1:1"],
        &["completion", "bash"],
        &["completion", "zsh"],
        &["man"],
        &["man", "--dir", "/tmp"],
    ] {
        parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
}

#[test]
fn conflicting_or_incomplete_flags_are_refused_by_clap() {
    for argv in [
        &["list", "-q", "--json"][..],
        &["list", "--state", "live"],
        &["logs", "sb-1", "--timestamps"],
        &["logs", "sb-1", "-f", "--timestamps", "--json"],
        &["logs", "sb-1", "--tail", "-1"],
        &["update", "sb-1"],
        &["update", "sb-1", "--label", "a=1", "--clear-labels"],
        &["completion", "cmd"],
    ] {
        let error = parse(argv).expect_err(&format!("{argv:?} is refused"));
        assert_eq!(error.exit_code(), 2, "{argv:?}: clap exits 2");
    }
}

#[test]
fn list_filters_by_state_and_labels() {
    let ClientCommand::List(args) =
        parse(&["list", "--state", "paused", "--label", "team=a", "-q"]).expect("parses")
    else {
        panic!("not list")
    };
    let request = args.request().expect("valid");
    assert_eq!(request.state(), pb::SandboxState::Paused);
    assert_eq!(request.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(args.format(), sandbox::ListFormat::Ids);
}

fn update_request(argv: &[&str]) -> pb::UpdateRequest {
    let ClientCommand::Update(args) = parse(argv).expect("parses") else { panic!("not update") };
    args.request().expect("valid")
}

#[test]
fn update_changes_only_what_is_given() {
    let request = update_request(&["update", "sb-1", "--timeout", "5m"]);
    assert_eq!(request.id, "sb-1");
    assert_eq!(
        request.end,
        Some(pb::update_request::End::Timeout(prost_types::Duration { seconds: 300, nanos: 0 }))
    );
    assert_eq!(request.labels, None, "labels left as they are");

    let request = update_request(&["update", "sb-1", "--label", "a=1", "--label", "b=2"]);
    assert_eq!(request.end, None);
    assert_eq!(request.labels.expect("replaced").labels.len(), 2);

    let request = update_request(&["update", "sb-1", "--clear-labels"]);
    assert_eq!(request.labels, Some(pb::Labels::default()), "replaced with none");
}

#[test]
fn the_address_after_the_subcommand_wins() {
    let ClientCommand::Status { target, .. } = parse(&["status", "--addr", "node-b:1"]).expect("parses")
    else {
        panic!("not status")
    };
    assert_eq!(target.or("node-a:1"), "node-b:1");
    let ClientCommand::Status { target, .. } = parse(&["status"]).expect("parses") else {
        panic!("not status")
    };
    assert_eq!(target.or("node-a:1"), "node-a:1");
}

#[test]
fn a_malformed_drain_timeout_is_refused() {
    let ClientCommand::Drain(args) = parse(&["drain", "--timeout", "soon"]).expect("parses") else {
        panic!("not drain")
    };
    assert!(args.request().is_err());
}
