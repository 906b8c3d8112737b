//! The tests of `layout.rs`: the layouts parsed from mount tables, the cgroups planned and found.

use super::super::parent::Reason;
use super::*;

/// A configured parent.
fn at(parent: &str) -> Placement {
    Placement { parent: parent.to_owned(), service: None, reason: Reason::Configured }
}

const SERVICE: &str = "system.slice/sandhost.service";

/// The parent detected for the service [`SERVICE`].
fn delegated() -> Placement {
    Placement {
        parent: format!("{SERVICE}/sandboxes"),
        service: Some(SERVICE.to_owned()),
        reason: Reason::SystemdService { cgroup: format!("/{SERVICE}") },
    }
}

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn hybrid_limits_go_to_v1_and_freeze_and_kill_to_v2() {
    let mut layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), &at("sh")).expect("parse");
    layout.v2_freeze = true;
    layout.v2_kill = true;
    let cg = layout.cgroup("box.ab");
    let dirs: Vec<String> = cg.dirs.iter().map(|d| d.display().to_string()).collect();
    assert_eq!(
        dirs,
        [
            "/sys/fs/cgroup/unified/sh/box.ab",
            "/sys/fs/cgroup/memory/sh/box.ab",
            "/sys/fs/cgroup/cpu/sh/box.ab",
            "/sys/fs/cgroup/pids/sh/box.ab"
        ]
    );
    assert_eq!(cg.memory, Some((PathBuf::from("/sys/fs/cgroup/memory/sh/box.ab"), false)));
    assert!(matches!(&cg.freezer, Some(Freezer::V2(d)) if d.starts_with("/sys/fs/cgroup/unified")));
    assert_eq!(cg.kill_file, Some(PathBuf::from("/sys/fs/cgroup/unified/sh/box.ab/cgroup.kill")));
    // Without v2 freeze (old kernels), the v1 freezer joins the hierarchies.
    layout.v2_freeze = false;
    layout.v2_kill = false;
    let cg = layout.cgroup("box.ab");
    assert!(cg.dirs.contains(&PathBuf::from("/sys/fs/cgroup/freezer/sh/box.ab")));
    assert!(matches!(&cg.freezer, Some(Freezer::V1(_))));
    assert_eq!(cg.kill_file, None);
    // Every hierarchy counts once, v2 first, the named ones (systemd) too.
    assert_eq!(layout.hierarchies.len(), 7);
    assert_eq!(layout.hierarchies[0], PathBuf::from("/sys/fs/cgroup/unified"));
    assert!(layout.hierarchies.contains(&PathBuf::from("/sys/fs/cgroup/systemd")));
}

#[test]
fn pure_v2_puts_everything_in_one_directory() {
    let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                     31 23 0:26 / /mnt/again rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let mut layout =
        Layout::parse(mountinfo, |_| Ok("cpuset cpu io memory hugetlb pids rdma misc\n".into()), &at("sh"))
            .expect("parse");
    layout.v2_freeze = true;
    layout.v2_kill = true;
    let cg = layout.cgroup("box.ab");
    let dir = PathBuf::from("/sys/fs/cgroup/sh/box.ab");
    assert_eq!(cg.dirs, vec![dir.clone()]);
    for limit in [&cg.memory, &cg.cpu, &cg.pids] {
        assert_eq!(limit, &Some((dir.clone(), true)));
    }
    assert!(layout.describe().contains("memory=v2"));
    assert_eq!(layout.hierarchies, vec![PathBuf::from("/sys/fs/cgroup")], "a second mount is no hierarchy");
}

#[test]
fn a_container_s_limits_only_cgroup_holds_the_limited_controllers_and_nothing_else() {
    let mut layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), &at("sh")).expect("parse");
    layout.v2_freeze = true;
    layout.v2_kill = true;
    let cg = layout.limits_only("box.ab.0");
    let dirs: Vec<String> = cg.dirs.iter().map(|d| d.display().to_string()).collect();
    // No controller-less v2 directory and no freezer: runsc never puts its processes there.
    assert_eq!(
        dirs,
        [
            "/sys/fs/cgroup/memory/sh/box.ab.0",
            "/sys/fs/cgroup/cpu/sh/box.ab.0",
            "/sys/fs/cgroup/pids/sh/box.ab.0"
        ]
    );
    assert!(!cg.has_v2);
    assert!(cg.freezer.is_none() && cg.kill_file.is_none());
    assert_eq!(cg.memory, Some((PathBuf::from("/sys/fs/cgroup/memory/sh/box.ab.0"), false)));

    let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let layout = Layout::parse(mountinfo, |_| Ok("cpu memory pids\n".into()), &at("sh")).expect("parse");
    let cg = layout.limits_only("box.ab.0");
    let dir = PathBuf::from("/sys/fs/cgroup/sh/box.ab.0");
    assert_eq!(cg.dirs, vec![dir.clone()], "one directory on v2");
    assert!(cg.has_v2);
    assert_eq!(cg.pids, Some((dir, true)));
}

/// A hybrid host under `root`, with the hierarchies as plain directories.
fn fake_hybrid(root: &Path) -> Layout {
    let mountinfo: String = ["cpu", "freezer", "systemd", "unified"]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (fstype, opts) = match *h {
                "unified" => ("cgroup2", "rw"),
                "systemd" => ("cgroup", "rw,name=systemd"),
                other => ("cgroup", other),
            };
            format!("{i} 1 0:{i} / {} rw - {fstype} cgroup {opts}\n", root.join(h).display())
        })
        .collect();
    Layout::parse(&mountinfo, |_| Ok(String::new()), &at("sh")).expect("parse")
}

#[test]
fn a_found_cgroup_is_where_its_maker_put_it_and_frozen_through_v1_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = fake_hybrid(tmp.path());
    for h in ["cpu", "freezer", "systemd"] {
        fs::create_dir_all(tmp.path().join(h).join("sh/box.ab.0")).expect("mkdir");
    }
    let cg = layout.find("box.ab.0");
    assert_eq!(cg.dirs.len(), 3, "{:?}", cg.dirs);
    assert!(!cg.has_v2);
    assert!(matches!(&cg.freezer, Some(Freezer::V1(d)) if d.starts_with(tmp.path().join("freezer"))));
    assert_eq!(cg.kill_file, None);
    assert!(layout.find("box.ab.1").dirs.is_empty(), "a cgroup nobody made has no directory");
    assert_eq!(layout.children(), ["box.ab.0"], "each name once, whatever the hierarchies");

    // Only on v2, with the kernel's freeze and kill files.
    let v2 = tmp.path().join("unified/sh/box.cd.0");
    fs::create_dir_all(&v2).expect("mkdir");
    fs::write(v2.join("cgroup.freeze"), "0").expect("write");
    fs::write(v2.join("cgroup.kill"), "").expect("write");
    let cg = layout.find("box.cd.0");
    assert!(cg.has_v2);
    assert!(matches!(&cg.freezer, Some(Freezer::V2(d)) if *d == v2));
    assert_eq!(cg.kill_file, Some(v2.join("cgroup.kill")));
}

#[test]
fn removing_the_parents_tries_every_hierarchy_and_names_the_first_that_stayed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = fake_hybrid(tmp.path());
    fs::create_dir_all(tmp.path().join("cpu/sh")).expect("mkdir");
    fs::create_dir_all(tmp.path().join("freezer/sh/still-here")).expect("mkdir");
    fs::create_dir_all(tmp.path().join("unified/sh")).expect("mkdir");
    match layout.remove_parents() {
        Err(CloseError::CgroupParent { path, .. }) => assert_eq!(path, tmp.path().join("freezer/sh")),
        other => panic!("expected the freezer's parent to stay, got {other:?}"),
    }
    assert!(!tmp.path().join("cpu/sh").exists() && !tmp.path().join("unified/sh").exists());
    fs::remove_dir(tmp.path().join("freezer/sh/still-here")).expect("rmdir");
    layout.remove_parents().expect("all empty now");
}

#[test]
fn mountinfo_escapes_are_undone() {
    assert_eq!(unescape(r"/sys/fs/cgroup/a\040b"), PathBuf::from("/sys/fs/cgroup/a b"));
    assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
}

const PURE_V2: &str = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

#[test]
fn on_v2_a_service_moves_itself_to_a_leaf_before_it_enables_controllers_from_its_own_cgroup_down() {
    let root = PathBuf::from("/sys/fs/cgroup");
    let service = root.join(SERVICE);
    let asked = std::cell::RefCell::new(Vec::new());
    let layout = Layout::parse(
        PURE_V2,
        |dir| {
            asked.borrow_mut().push(dir.to_path_buf());
            // The service is offered less than the root has: what systemd delegates.
            Ok("cpu memory pids\n".into())
        },
        &delegated(),
    )
    .expect("parse");
    assert_eq!(
        asked.borrow().as_slice(),
        std::slice::from_ref(&service),
        "the controllers the service may hand down"
    );
    let sandboxes = service.join("sandboxes");
    let enable = |dir: &Path| Controller::ALL.map(|c| Step::Enable(dir.to_path_buf(), c.name()));
    let mut expected = vec![
        Step::Mkdir(root.join("system.slice")),
        Step::Mkdir(service.clone()),
        Step::Mkdir(service.join("supervisor")),
        Step::MoveSelf(service.join("supervisor/cgroup.procs")),
    ];
    expected.extend(enable(&service));
    expected.push(Step::Mkdir(sandboxes.clone()));
    expected.extend(enable(&sandboxes));
    assert_eq!(layout.plan(), expected);
    // Nothing above the service's cgroup is written to: that is systemd's.
    let cg = layout.cgroup("box.ab");
    assert_eq!(cg.dirs, [sandboxes.join("box.ab")]);
    assert_eq!(cg.memory, Some((sandboxes.join("box.ab"), true)));
}

#[test]
fn on_v2_a_controller_the_service_is_not_offered_is_not_enabled() {
    let layout = Layout::parse(PURE_V2, |_| Ok("memory pids\n".into()), &delegated()).expect("parse");
    let enabled: BTreeSet<&str> = layout
        .plan()
        .iter()
        .filter_map(|s| if let Step::Enable(_, c) = s { Some(*c) } else { None })
        .collect();
    assert_eq!(enabled, BTreeSet::from(["memory", "pids"]));
    assert!(layout.describe().contains("cpu=missing"), "{}", layout.describe());
    // Offered nothing at all: no reason to leave the service's cgroup.
    let layout = Layout::parse(PURE_V2, |_| Ok("\n".into()), &delegated()).expect("parse");
    assert!(!layout.plan().iter().any(|s| matches!(s, Step::MoveSelf(_) | Step::Enable(..))));
}

#[test]
fn without_a_service_controllers_are_enabled_from_the_root_as_before() {
    let layout = Layout::parse(PURE_V2, |_| Ok("cpu memory pids\n".into()), &at("sh/deeper")).expect("parse");
    let root = PathBuf::from("/sys/fs/cgroup");
    let enable = |dir: &Path| Controller::ALL.map(|c| Step::Enable(dir.to_path_buf(), c.name()));
    let mut expected: Vec<Step> = enable(&root).into();
    expected.push(Step::Mkdir(root.join("sh")));
    expected.extend(enable(&root.join("sh")));
    expected.push(Step::Mkdir(root.join("sh/deeper")));
    expected.extend(enable(&root.join("sh/deeper")));
    assert_eq!(layout.plan(), expected);
}

#[test]
fn on_v1_and_hybrid_a_service_only_makes_its_directories() {
    // Hybrid: the v2 hierarchy has none of the controllers (hugetlb only), so no move.
    let layout = Layout::parse(HYBRID, |_| Ok("hugetlb\n".into()), &delegated()).expect("parse");
    let plan = layout.plan();
    assert!(plan.iter().all(|s| matches!(s, Step::Mkdir(_))), "{plan:?}");
    for h in ["unified", "memory", "cpu", "pids", "freezer"] {
        let dir = PathBuf::from("/sys/fs/cgroup").join(h).join(SERVICE).join("sandboxes");
        assert!(plan.contains(&Step::Mkdir(dir.clone())), "{h}: {plan:?}");
    }
    // The directories above it too, in order: the freezer is no hierarchy systemd manages.
    let freezer = PathBuf::from("/sys/fs/cgroup/freezer");
    let made: Vec<&Step> =
        plan.iter().filter(|s| matches!(s, Step::Mkdir(d) if d.starts_with(&freezer))).collect();
    assert_eq!(
        made,
        [
            &Step::Mkdir(freezer.join("system.slice")),
            &Step::Mkdir(freezer.join(SERVICE)),
            &Step::Mkdir(freezer.join(SERVICE).join("sandboxes"))
        ]
    );
    // Pure v1: the same, with no v2 hierarchy.
    let v1: String = HYBRID.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
    let layout = Layout::parse(&v1, |_| panic!("no v2 to read"), &delegated()).expect("parse");
    assert!(layout.plan().iter().all(|s| matches!(s, Step::Mkdir(_))));
    assert_eq!(
        layout.cgroup("box.ab").memory,
        Some((PathBuf::from("/sys/fs/cgroup/memory").join(SERVICE).join("sandboxes/box.ab"), false))
    );
}

#[test]
fn a_service_prepares_its_subtree_for_real_files() {
    // A pure v2 host under `tmp`, with the service's cgroup as systemd leaves it.
    let tmp = tempfile::tempdir().expect("tmp");
    let v2 = tmp.path().join("v2");
    let service = v2.join(SERVICE);
    fs::create_dir_all(&service).expect("mkdir");
    fs::write(service.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
    let mountinfo = format!("30 23 0:26 / {} rw - cgroup2 cgroup2 rw\n", v2.display());
    let mut layout = Layout::detect_from(&mountinfo, &delegated()).expect("parse");
    layout.create_parents().expect("create");
    let procs = fs::read_to_string(service.join("supervisor/cgroup.procs")).expect("moved");
    assert_eq!(procs, std::process::id().to_string());
    assert!(service.join("sandboxes").is_dir());
    assert!(service.join("sandboxes/cgroup.subtree_control").exists(), "controllers enabled below");
    assert!(!v2.join("cgroup.subtree_control").exists(), "nothing written above the service");
    assert!(!v2.join("system.slice/cgroup.subtree_control").exists(), "nor in its slice");
    // Closing removes the parent, and leaves the supervisor (the agent is in it).
    fs::remove_file(service.join("sandboxes/cgroup.subtree_control")).expect("rm");
    layout.remove_parents().expect("remove");
    assert!(!service.join("sandboxes").exists());
    assert!(service.join("supervisor").is_dir());
}

/// Moves this process back into its cgroup, removes the test's cgroups and disables the
/// controller at the root again if the test enabled it, even on failure.
struct Restore {
    procs: PathBuf,
    dirs: Vec<PathBuf>,
    enabled_at_root: Option<(PathBuf, &'static str)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = write(&self.procs, &std::process::id().to_string());
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
        if let Some((file, controller)) = &self.enabled_at_root {
            let _ = write(file, &format!("-{controller}"));
        }
    }
}

/// The v2 steps for real, on this host's v2 hierarchy (the hybrid's holds `hugetlb`, a pure v2
/// host's all of them), as root: in a service's cgroup that holds the agent, the kernel refuses
/// to enable a controller for the children (and the error names the process in the way); the
/// planned move of the whole process (every thread) into `supervisor` is what lets it.
#[test]
fn on_real_cgroup_v2_the_move_into_the_supervisor_leaf_lets_the_service_enable_controllers() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let service = format!("sandhost-test-v2-{}.service", std::process::id());
    let placement = Placement {
        parent: format!("{service}/sandboxes"),
        service: Some(service.clone()),
        reason: Reason::Configured,
    };
    let layout = Layout::parse(&mountinfo, |_| Ok(String::new()), &placement).expect("parse");
    let root = layout.v2_root.clone().expect("a cgroup v2 hierarchy (pure v2, or the hybrid's)");
    let offered = fs::read_to_string(root.join("cgroup.controllers")).expect("v2 controllers");
    let controller = ["pids", "memory", "hugetlb", "io", "cpu", "misc", "rdma"]
        .into_iter()
        .find(|c| offered.split_whitespace().any(|o| o == *c))
        .expect("a controller on v2 to enable");
    let own = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a v2 line");
    let svc = root.join(&service);
    let pid = i32::try_from(std::process::id()).expect("pid");
    let mut restore = Restore {
        procs: root.join(own.trim_start_matches('/')).join("cgroup.procs"),
        dirs: ["sandboxes/box.1", "sandboxes", "supervisor", ""].iter().map(|d| svc.join(d)).collect(),
        enabled_at_root: None,
    };
    // What systemd does for a delegated service: the controller offered to its cgroup.
    let root_control = root.join("cgroup.subtree_control");
    let at_root = fs::read_to_string(&root_control).expect("the root's subtree_control");
    if !at_root.split_whitespace().any(|c| c == controller) {
        write(&root_control, &format!("+{controller}")).expect("enable it at the root");
        restore.enabled_at_root = Some((root_control, controller));
    }
    fs::create_dir(&svc).expect("make a v2 cgroup (as root)");
    // Started in it, as systemd starts a service.
    write(&svc.join("cgroup.procs"), &pid.to_string()).expect("join it");

    match layout.run(&Step::Enable(svc.clone(), controller)) {
        Err(CgroupSetupError::ServiceNotEmpty { path, pids }) => {
            assert_eq!(path, svc);
            assert!(pids.contains(&pid), "{pids:?} names the agent");
        }
        other => panic!("expected the kernel's refusal, got {other:?}"),
    }

    // The v2 steps (the v1 ones only make directories).
    let on_v2 = |step: &Step| match step {
        Step::Mkdir(path) | Step::MoveSelf(path) | Step::Enable(path, _) => path.starts_with(&root),
    };
    for step in layout.plan_enabling(&[controller]).iter().filter(|s| on_v2(s)) {
        layout.run(step).unwrap_or_else(|e| panic!("{step:?}: {e}"));
    }
    assert_eq!(pids_in(&svc), Vec::<i32>::new(), "the service's cgroup is empty");
    let threads = fs::read_to_string(svc.join("cgroup.threads")).expect("threads");
    assert_eq!(threads.trim(), "", "every thread moved");
    assert!(pids_in(&svc.join(SUPERVISOR)).contains(&pid));
    for dir in [svc.clone(), svc.join("sandboxes")] {
        let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).expect("subtree_control");
        assert!(enabled.split_whitespace().any(|c| c == controller), "{}: {enabled}", dir.display());
    }
    // A sandbox's cgroup under the parent has the controller.
    let sandbox = svc.join("sandboxes/box.1");
    fs::create_dir(&sandbox).expect("a sandbox's cgroup");
    let controllers = fs::read_to_string(sandbox.join("cgroup.controllers")).expect("controllers");
    assert!(controllers.split_whitespace().any(|c| c == controller), "{controllers}");
}
