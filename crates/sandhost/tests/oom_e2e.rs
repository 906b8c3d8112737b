//! End to end: a sandbox whose command the kernel's OOM killer killed says so in its exit
//! (`oom_killed`), not just "signal 9"; where the node cannot tell, it says nothing rather than
//! "not OOM-killed".
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;
mod e2e;

use common::Backend;
use e2e::{Serve, ok};

on_both_backends!(sync: an_oom_kill_says_so);

fn an_oom_kill_says_so(backend: Backend) {
    let serve = Serve::start_on(backend.name());
    // `tail` keeps the last ten lines; /dev/zero has no newline, so it grows until the limit.
    ok(&serve.cli(&["create", "--id", "hog", "--memory", "32m", "--", "tail", "/dev/zero"]));
    let _ = serve.cli(&["wait", "hog"]);
    let hog: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&ok(&serve.cli(&["get", "hog", "--json"])))
            .expect("get --json is JSON")["sandbox"]
            .clone();
    let table = ok(&serve.cli(&["get", "hog"]));
    assert_eq!(hog["exit"]["oomKilled"], true, "{hog}");
    assert!(table.contains("OOM-killed"), "{table}");

    // And one that ends on its own was not.
    ok(&serve.cli(&["create", "--id", "fine", "--memory", "32m", "--", "true"]));
    let _ = serve.cli(&["wait", "fine"]);
    let fine: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&ok(&serve.cli(&["get", "fine", "--json"])))
            .expect("get --json is JSON")["sandbox"]
            .clone();
    assert_eq!(fine["exit"]["oomKilled"], false, "{fine}");
}
