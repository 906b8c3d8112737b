//! What a sandbox on the `host` template sees of the host, for real and on both backends: its allow
//! list of host paths (the defaults, or a configured list) read-only in an otherwise empty root,
//! the host's secrets masked, and no host path on the command line or in the environment of
//! anything inside (the process backend's init included). Every test ends by checking that nothing
//! of it is left on the host.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Backend, Options, TestEnv};
use sandhost_runtime::{Exit, HostPaths, User};

on_both_backends!(async:
    only_the_allow_list_of_the_host_is_seen,
    a_configured_host_path_is_seen_read_only,
    nothing_inside_names_a_host_path,
);

/// The sandhost binary: each process sandbox's init.
const SANDHOST: &str = env!("CARGO_BIN_EXE_sandhost");

/// A host directory outside every allow list (under `/var/tmp`), holding a world-readable file
/// `data` with `content`.
fn host_dir(content: &str) -> (tempfile::TempDir, PathBuf) {
    std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
    let dir = tempfile::Builder::new().prefix("sandhost-host-").tempdir_in("/var/tmp").expect("host dir");
    let path = dir.path().canonicalize().expect("canonical");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(path.join("data"), content).expect("write");
    std::fs::set_permissions(path.join("data"), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    (dir, path)
}

/// Runs `script` as `user` to its end; its log.
async fn run(t: &TestEnv, script: &str, user: User) -> String {
    let mut spec = t.sh(script);
    spec.user = user;
    t.runtime.start(&spec).await.expect("start");
    let exit = t.runtime.wait(&spec.key).await.expect("wait");
    let log = t.log(&spec.key).await;
    assert_eq!(exit, Exit::Code(0), "log: {log}");
    t.runtime.forget(&spec.key).await.expect("forget");
    log
}

/// The lines of `log` between the line `from` and the line `to`.
fn between<'a>(log: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    log.lines().skip_while(|l| *l != from).skip(1).take_while(|l| *l != to).collect()
}

async fn only_the_allow_list_of_the_host_is_seen(backend: Backend) {
    let t = TestEnv::on(backend);
    let (_dir, outside) = host_dir("host-data-not-for-sandboxes");
    // No `ls`: coreutils' statx flags are refused by Debian's gVisor (EINVAL); globs and `test`
    // are not.
    let script = format!(
        "echo begin; for p in /* /.[!.]*; do [ -e \"$p\" ] || [ -L \"$p\" ] && echo \"$p\"; done; echo listed; \
         cat {outside}/data; [ -e {outside} ] && echo outside-seen; \
         for p in /work /srv /opt /var /mnt /media /root /boot {state}; do [ -e $p ] && echo \"seen $p\"; done; \
         [ -x /usr/bin/env ] && /usr/bin/env true && echo env-runs; \
         echo secrets; cat /etc/shadow /etc/gshadow 2>/dev/null; echo secrets-read; \
         touch /new 2>/dev/null && echo root-written; mkdir /usr/new 2>/dev/null && echo usr-written; echo end",
        outside = outside.display(),
        state = t.state_dir.display(),
    );
    let mut shown: BTreeSet<String> =
        ["/dev", "/home", "/proc", "/run", "/sys", "/tmp"].map(String::from).into();
    shown.extend(HostPaths::defaults().paths().iter().map(|p| p.display().to_string()));
    for user in [User::UNPRIVILEGED, User { uid: 0, gid: 0 }] {
        let log = run(&t, &script, user).await;
        assert!(log.contains("end"), "{log}");
        let root: Vec<&str> = between(&log, "begin", "listed");
        assert!(root.contains(&"/usr") && root.contains(&"/tmp"), "{root:?}");
        let extra: Vec<&&str> = root.iter().filter(|p| !shown.contains(**p)).collect();
        assert!(extra.is_empty(), "the root shows {extra:?} beyond the allow list ({user:?}): {root:?}");
        assert!(!log.contains("host-data-not-for-sandboxes") && !log.contains("outside-seen"), "{log}");
        assert!(!log.contains("seen /"), "host paths outside the allow list are seen ({user:?}): {log}");
        assert!(log.contains("env-runs"), "{log}");
        let secrets = between(&log, "secrets", "secrets-read");
        assert!(secrets.is_empty(), "host secrets are readable as {user:?}: {secrets:?}");
        assert!(!log.contains("written"), "the root is writable as {user:?}: {log}");
    }
    t.assert_clean();
}

async fn a_configured_host_path_is_seen_read_only(backend: Backend) {
    let (_dir, listed) = host_dir("listed-data");
    let (_other, unlisted) = host_dir("unlisted-data");
    let host_paths = HostPaths::new(HostPaths::defaults().paths().iter().cloned().chain([listed.clone()]))
        .expect("a valid list");
    let t = TestEnv::with(backend, Options { host_paths, ..Options::default() });
    let parent = listed.parent().expect("parent").display().to_string();
    let script = format!(
        "cat {listed}/data; echo; echo x > {listed}/new && echo created; echo y > {listed}/data && echo changed; \
         cat {unlisted}/data; echo siblings; for p in {parent}/*; do echo \"$p\"; done; echo end",
        listed = listed.display(),
        unlisted = unlisted.display(),
    );
    let log = run(&t, &script, User { uid: 0, gid: 0 }).await;
    assert!(log.contains("listed-data"), "the listed path is not seen: {log}");
    assert!(!log.contains("created") && !log.contains("changed"), "the listed path is writable: {log}");
    assert!(!log.contains("unlisted-data"), "{log}");
    assert_eq!(
        between(&log, "siblings", "end"),
        [listed.display().to_string()],
        "the parent of a listed path holds it alone: {log}"
    );
    assert_eq!(std::fs::read_to_string(listed.join("data")).expect("read"), "listed-data");
    assert!(!listed.join("new").exists());
    t.assert_clean();
}

async fn nothing_inside_names_a_host_path(backend: Backend) {
    let t = TestEnv::on(backend);
    let script = "echo cmdline; tr '\\0' ' ' < /proc/1/cmdline; echo; echo environ; \
                  tr '\\0' '\\n' < /proc/1/environ 2>/dev/null; echo own; env; echo end";
    let needles: Vec<String> = [Path::new(SANDHOST), t.state_dir.as_path()]
        .iter()
        .flat_map(|p| [p.display().to_string(), p.canonicalize().expect("canonical").display().to_string()])
        .collect();
    for user in [User::UNPRIVILEGED, User { uid: 0, gid: 0 }] {
        let log = run(&t, script, user).await;
        assert!(log.contains("end"), "{log}");
        for needle in &needles {
            assert!(!log.contains(needle.as_str()), "{needle} is seen inside as {user:?}: {log}");
        }
        let cmdline = between(&log, "cmdline", "environ");
        match backend {
            // Our init is pid 1.
            Backend::Process => assert_eq!(cmdline, ["sandhost-init __init "], "{log}"),
            // gVisor's pid 1 is the command.
            Backend::Gvisor => assert!(cmdline.concat().starts_with("/bin/sh -c"), "{log}"),
        }
    }
    t.assert_clean();
}
