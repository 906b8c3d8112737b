//! Where the sandboxes' cgroups go: the parent cgroup, one path relative to the root of every
//! hierarchy, chosen once when a backend opens ([`Placement::resolve`]).
//!
//! - [`CgroupParent::Path`]: that path (`sandhost`, or a deeper one such as `sandhost/a`).
//! - [`CgroupParent::Auto`]: when the agent runs as a systemd service, `<service>/sandboxes`, inside
//!   the subtree the unit delegates to it (`Delegate=yes`); otherwise the fallback name, as if it
//!   had been given. A systemd service is recognized by three things together: `INVOCATION_ID` is
//!   set (systemd sets it for every unit it starts); `SYSTEMD_EXEC_PID`, where systemd sets it
//!   (248 and later), names this very process, so an environment inherited from some other service
//!   does not count; and the agent's own cgroup ([`own_cgroup`]) is a `.service`, or the
//!   `supervisor` leaf of one (where `DelegateSubgroup=supervisor` starts it).
//!
//! # One path in every hierarchy
//!
//! The service's path is read from the line of `/proc/self/cgroup` that systemd tracks units in,
//! and the same parent is used in every hierarchy, also on a v1 host where the agent's own cgroup
//! in some hierarchy is the root (a controller systemd does not manage, such as the freezer). A
//! per-hierarchy parent would put those at `/sandboxes`: one cgroup for every agent on the host,
//! each of whose recoveries adopts or kills what it finds under its parent. With one path, two
//! units never share a parent, and runsc gets one absolute `cgroupsPath` that means the same on v1
//! and v2 (a relative one means different things in each). The price: in the hierarchies systemd
//! does not manage, the directories above `sandboxes` are made by sandhost and stay, empty.
//!
//! # Invariants
//!
//! - A parent is validated component by component ([`validate_cgroup_parent`]) wherever it comes
//!   from: the configuration, the detection, or a state file an earlier agent wrote (hostile
//!   input). A valid parent joined under a hierarchy's root never leaves it.
//! - Detection only reads (the environment and `/proc/self/cgroup`); what it finds is applied by
//!   `Layout::create_parents`.

use std::fmt;

/// The leaf under the service's cgroup where the sandboxes' cgroups go.
pub const SANDBOXES: &str = "sandboxes";
/// The leaf under the service's cgroup where the agent moves itself on cgroup v2, so that the
/// service's cgroup holds no process and can enable controllers for its children.
pub(crate) const SUPERVISOR: &str = "supervisor";

/// Most components in a parent.
const MAX_COMPONENTS: usize = 32;
/// Longest component (the kernel's `NAME_MAX`).
const MAX_COMPONENT_BYTES: usize = 255;
/// Longest parent.
const MAX_PARENT_BYTES: usize = 2048;

/// Where the sandboxes' cgroups go, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupParent {
    /// `<service>/sandboxes` when the agent runs as a systemd service (see the module's doc),
    /// otherwise `fallback` at the root of each hierarchy.
    Auto {
        /// The parent when the agent is no systemd service.
        fallback: String,
    },
    /// This path, relative to the root of each hierarchy.
    Path(String),
}

impl CgroupParent {
    /// [`CgroupParent::Auto`] with this fallback.
    #[must_use]
    pub fn auto(fallback: impl Into<String>) -> Self {
        Self::Auto { fallback: fallback.into() }
    }
}

impl From<&str> for CgroupParent {
    fn from(path: &str) -> Self {
        Self::Path(path.to_owned())
    }
}

impl From<String> for CgroupParent {
    fn from(path: String) -> Self {
        Self::Path(path)
    }
}

/// A cgroup parent that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cgroup parent {value:?}: {rule}")]
pub struct InvalidCgroupParent {
    /// The rejected value (truncated to 80 characters).
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

/// Checks that `path` is a parent that stays inside a hierarchy: relative, 1 to 32 components
/// separated by single `/`, each 1 to 255 bytes of `[A-Za-z0-9_.@-]` and neither `.` nor `..`, at
/// most 2048 bytes in all.
///
/// # Errors
///
/// [`InvalidCgroupParent`] naming the rule it broke.
pub fn validate_cgroup_parent(path: &str) -> Result<(), InvalidCgroupParent> {
    let broke = |rule| Err(InvalidCgroupParent { value: path.chars().take(80).collect(), rule });
    if path.is_empty() || path.len() > MAX_PARENT_BYTES {
        return broke("must be 1 to 2048 bytes");
    }
    if path.starts_with('/') {
        return broke("must be relative to the root of each hierarchy (no leading '/')");
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.len() > MAX_COMPONENTS {
        return broke("must have at most 32 components");
    }
    for component in components {
        if component.is_empty() {
            return broke("must not have an empty component ('//' or a trailing '/')");
        }
        if component == "." || component == ".." {
            return broke("must not have a '.' or '..' component");
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return broke("each component must be at most 255 bytes");
        }
        if !component.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')) {
            return broke("each component must match [A-Za-z0-9_.@-]+");
        }
    }
    Ok(())
}

/// Whether `path` passes [`validate_cgroup_parent`].
pub(crate) fn is_valid_cgroup_parent(path: &str) -> bool {
    validate_cgroup_parent(path).is_ok()
}

/// The parent chosen at open, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Relative to each hierarchy's root; valid.
    pub(crate) parent: String,
    /// The systemd service's cgroup (relative, valid) that the parent lies in, when the parent was
    /// detected: the top of what sandhost may change (it is the delegated subtree).
    pub(crate) service: Option<String>,
    /// Why, for the startup log.
    pub(crate) reason: Reason,
}

/// Why a parent was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Given in the configuration.
    Configured,
    /// Detected: the agent is this systemd service.
    SystemdService {
        /// The service's cgroup, as `/proc/self/cgroup` says.
        cgroup: String,
    },
    /// Left to the agent, which is no systemd service (or cannot use its cgroup): the fallback.
    Fallback(NotAService),
}

/// Why the agent does not count as a systemd service with a subtree of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotAService {
    /// `INVOCATION_ID` is not set: systemd did not start it.
    NoInvocationId,
    /// `SYSTEMD_EXEC_PID` names another process: the environment was inherited.
    InheritedEnvironment {
        /// The value of `SYSTEMD_EXEC_PID`.
        exec_pid: String,
    },
    /// `/proc/self/cgroup` could not be read or names no cgroup.
    NoOwnCgroup,
    /// Its cgroup is no service's (a session's scope, a container's, the root).
    ForeignCgroup {
        /// The agent's own cgroup.
        cgroup: String,
    },
    /// Its cgroup is a service's, but not usable as a parent.
    Unusable {
        /// The service's cgroup.
        cgroup: String,
        /// The rule it broke.
        rule: &'static str,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured => f.write_str("configured (--cgroup-parent)"),
            Self::SystemdService { cgroup } => write!(
                f,
                "a systemd service (INVOCATION_ID set, own cgroup {cgroup}): inside its delegated subtree"
            ),
            Self::Fallback(why) => write!(f, "the default at the root of each hierarchy: {why}"),
        }
    }
}

impl fmt::Display for NotAService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInvocationId => f.write_str("not a systemd service (INVOCATION_ID is not set)"),
            Self::InheritedEnvironment { exec_pid } => write!(
                f,
                "not a systemd service's main process (SYSTEMD_EXEC_PID={exec_pid} is another process)"
            ),
            Self::NoOwnCgroup => f.write_str("its own cgroup is unknown (/proc/self/cgroup)"),
            Self::ForeignCgroup { cgroup } => {
                write!(f, "its own cgroup {cgroup} is no systemd service's (*.service)")
            }
            Self::Unusable { cgroup, rule } => {
                write!(f, "its service's cgroup {cgroup} cannot hold the parent ({rule})")
            }
        }
    }
}

/// What the detection reads of the process: its environment and `/proc/self/cgroup`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub(crate) invocation_id: Option<String>,
    pub(crate) systemd_exec_pid: Option<String>,
    pub(crate) pid: u32,
    /// `/proc/self/cgroup`, if it could be read.
    pub(crate) proc_self_cgroup: Option<String>,
}

impl Observed {
    /// This process, now.
    fn read() -> Self {
        Self {
            invocation_id: std::env::var("INVOCATION_ID").ok(),
            systemd_exec_pid: std::env::var("SYSTEMD_EXEC_PID").ok(),
            pid: std::process::id(),
            proc_self_cgroup: std::fs::read_to_string("/proc/self/cgroup").ok(),
        }
    }
}

impl Placement {
    /// The parent `configured` means for this process.
    ///
    /// # Errors
    ///
    /// A configured path (or fallback) that is not valid.
    pub(crate) fn resolve(configured: &CgroupParent) -> Result<Self, InvalidCgroupParent> {
        Self::choose(configured, &Observed::read())
    }

    /// The parent `configured` means for a process that `observed` describes.
    pub(crate) fn choose(
        configured: &CgroupParent,
        observed: &Observed,
    ) -> Result<Self, InvalidCgroupParent> {
        let fallback = match configured {
            CgroupParent::Path(path) => {
                validate_cgroup_parent(path)?;
                return Ok(Self { parent: path.clone(), service: None, reason: Reason::Configured });
            }
            CgroupParent::Auto { fallback } => fallback,
        };
        validate_cgroup_parent(fallback)?;
        Ok(match systemd_service(observed) {
            Ok(service) => Self {
                parent: format!("{service}/{SANDBOXES}"),
                reason: Reason::SystemdService { cgroup: format!("/{service}") },
                service: Some(service),
            },
            Err(why) => Self { parent: fallback.clone(), service: None, reason: Reason::Fallback(why) },
        })
    }
}

/// The cgroup of the systemd service this process is the main process of, relative to the root
/// (valid, with room for `/sandboxes`).
fn systemd_service(observed: &Observed) -> Result<String, NotAService> {
    if observed.invocation_id.as_deref().is_none_or(str::is_empty) {
        return Err(NotAService::NoInvocationId);
    }
    if let Some(exec_pid) = observed.systemd_exec_pid.as_deref()
        && exec_pid.trim() != observed.pid.to_string()
    {
        return Err(NotAService::InheritedEnvironment { exec_pid: exec_pid.chars().take(20).collect() });
    }
    let own = observed.proc_self_cgroup.as_deref().and_then(own_cgroup).ok_or(NotAService::NoOwnCgroup)?;
    let relative = own.trim_start_matches('/');
    let service = match relative.rsplit_once('/') {
        Some((service, SUPERVISOR)) => service,
        _ => relative,
    };
    let is_service = service
        .rsplit('/')
        .next()
        .is_some_and(|unit| unit.len() > ".service".len() && unit.ends_with(".service"));
    if !is_service {
        return Err(NotAService::ForeignCgroup { cgroup: own.chars().take(200).collect() });
    }
    if let Err(invalid) = validate_cgroup_parent(&format!("{service}/{SANDBOXES}")) {
        return Err(NotAService::Unusable { cgroup: own.chars().take(200).collect(), rule: invalid.rule });
    }
    Ok(service.to_owned())
}

/// This process's cgroup as systemd sees it, from `/proc/self/cgroup` (`ID:CONTROLLERS:PATH`
/// lines): on a pure v2 host the `0::` line; on v1 and hybrid hosts the `name=systemd` line (where
/// systemd tracks units there), else the hybrid's `0::` line, else the memory controller's, else
/// the pids controller's.
pub(crate) fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    let lines: Vec<(&str, &str)> = proc_self_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with('/').then_some((controllers, path))
        })
        .collect();
    let on = |name: &str| {
        lines.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == name)).map(|(_, path)| *path)
    };
    let unified = lines.iter().find(|(controllers, _)| controllers.is_empty()).map(|(_, path)| *path);
    if lines.iter().all(|(controllers, _)| controllers.is_empty()) {
        return unified;
    }
    on("name=systemd").or(unified).or_else(|| on("memory")).or_else(|| on("pids"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_validated_component_by_component() {
        let long_component = "a".repeat(256);
        let too_long = vec!["a"; 1025].join("/");
        let too_deep = vec!["a"; 33].join("/");
        let table = [
            ("sandhost", true),
            ("sandhost-e2e-1", true),
            ("system.slice/sandhost.service/sandboxes", true),
            ("system.slice/sandhost@node-1.service/sandboxes", true),
            ("A_b.c@d-e", true),
            ("..a", true),
            ("a..", true),
            ("a/b/", false),
            ("", false),
            ("/sandhost", false),
            ("sandhost/", false),
            ("a//b", false),
            (".", false),
            ("..", false),
            ("a/../b", false),
            ("a/./b", false),
            ("../etc", false),
            ("a b", false),
            ("a\\x2db.service", false),
            ("a:b", false),
            ("a\nb", false),
            ("ünicode", false),
            (long_component.as_str(), false),
            (too_deep.as_str(), false),
        ];
        for (value, valid) in table {
            assert_eq!(is_valid_cgroup_parent(value), valid, "{value:?}");
        }
        assert!(!is_valid_cgroup_parent(&too_long), "more than 2048 bytes");
        assert!(is_valid_cgroup_parent(&vec!["a"; 32].join("/")), "32 components");
        assert!(is_valid_cgroup_parent(&"a".repeat(255)), "a component of 255 bytes");
        let err = validate_cgroup_parent("a/../b").expect_err("invalid");
        assert!(err.to_string().contains("'..'"), "{err}");
    }

    const PURE_V2: &str = "0::/system.slice/sandhost.service\n";
    const V1: &str = "\
12:pids:/system.slice/sandhost.service
11:memory:/system.slice/sandhost.service
10:freezer:/
9:cpu,cpuacct:/system.slice/sandhost.service
1:name=systemd:/system.slice/sandhost.service
";
    const HYBRID: &str = "\
12:pids:/system.slice/sandhost.service
11:memory:/system.slice/sandhost.service
10:freezer:/
1:name=systemd:/system.slice/sandhost.service
0::/system.slice/sandhost.service
";

    #[test]
    fn the_own_cgroup_is_the_line_systemd_tracks_units_in() {
        assert_eq!(own_cgroup(PURE_V2), Some("/system.slice/sandhost.service"));
        assert_eq!(own_cgroup(V1), Some("/system.slice/sandhost.service"));
        assert_eq!(own_cgroup(HYBRID), Some("/system.slice/sandhost.service"));
        // name=systemd before the others, whatever the order of the lines.
        assert_eq!(own_cgroup("4:memory:/m\n1:name=systemd:/s.service\n0::/u\n"), Some("/s.service"));
        // Without name=systemd: the hybrid's v2 line, then memory, then pids.
        assert_eq!(own_cgroup("4:memory:/m\n0::/u\n"), Some("/u"));
        assert_eq!(own_cgroup("5:pids:/p\n4:memory:/m\n"), Some("/m"));
        assert_eq!(own_cgroup("5:pids:/p\n3:freezer:/\n"), Some("/p"));
        // Nothing that names one.
        assert_eq!(own_cgroup("3:freezer:/\n"), None);
        assert_eq!(own_cgroup(""), None);
        assert_eq!(own_cgroup("garbage\n0:/x\n"), None);
        // A path may hold ':'.
        assert_eq!(own_cgroup("0::/a:b.service\n"), Some("/a:b.service"));
    }

    fn service_observed(proc_self_cgroup: &str) -> Observed {
        Observed {
            invocation_id: Some("5e3c1f0e2b6a4d7f9c8b7a6e5d4c3b2a".into()),
            systemd_exec_pid: None,
            pid: 4242,
            proc_self_cgroup: Some(proc_self_cgroup.into()),
        }
    }

    fn auto() -> CgroupParent {
        CgroupParent::auto("sandhost")
    }

    #[test]
    fn a_systemd_service_gets_its_sandboxes_inside_its_own_cgroup_on_every_layout() {
        for layout in [PURE_V2, V1, HYBRID] {
            let placement = Placement::choose(&auto(), &service_observed(layout)).expect("valid");
            assert_eq!(placement.parent, "system.slice/sandhost.service/sandboxes", "{layout}");
            assert_eq!(placement.service.as_deref(), Some("system.slice/sandhost.service"));
            assert!(placement.reason.to_string().contains("/system.slice/sandhost.service"));
        }
        // Already in the supervisor leaf (DelegateSubgroup=supervisor): the service is its parent.
        let placement =
            Placement::choose(&auto(), &service_observed("0::/system.slice/sandhost.service/supervisor\n"))
                .expect("valid");
        assert_eq!(placement.parent, "system.slice/sandhost.service/sandboxes");
        // An instance of a template unit.
        let placement = Placement::choose(
            &auto(),
            &service_observed("0::/system.slice/system-sandhost.slice/sandhost@a.service\n"),
        )
        .expect("valid");
        assert_eq!(placement.parent, "system.slice/system-sandhost.slice/sandhost@a.service/sandboxes");
        // SYSTEMD_EXEC_PID naming this very process (systemd 248 and later).
        let mut observed = service_observed(PURE_V2);
        observed.systemd_exec_pid = Some("4242".into());
        assert!(Placement::choose(&auto(), &observed).expect("valid").service.is_some());
    }

    #[test]
    fn anything_else_falls_back_to_the_root_and_says_why() {
        let fallback = |observed: &Observed| {
            let placement = Placement::choose(&auto(), observed).expect("valid");
            assert_eq!(placement.parent, "sandhost");
            assert_eq!(placement.service, None);
            match placement.reason {
                Reason::Fallback(why) => why,
                other => panic!("expected a fallback, got {other:?}"),
            }
        };
        let mut no_invocation = service_observed(PURE_V2);
        no_invocation.invocation_id = None;
        assert_eq!(fallback(&no_invocation), NotAService::NoInvocationId);
        no_invocation.invocation_id = Some(String::new());
        assert_eq!(fallback(&no_invocation), NotAService::NoInvocationId);

        let mut inherited = service_observed(PURE_V2);
        inherited.systemd_exec_pid = Some("17".into());
        assert!(matches!(fallback(&inherited), NotAService::InheritedEnvironment { .. }));

        let mut unreadable = service_observed(PURE_V2);
        unreadable.proc_self_cgroup = None;
        assert_eq!(fallback(&unreadable), NotAService::NoOwnCgroup);
        assert_eq!(fallback(&service_observed("3:freezer:/\n")), NotAService::NoOwnCgroup);

        for not_a_service in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/\n",
            "0::/.service\n",
            "0::/system.slice/sandhost.service/other\n",
            "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope\n",
            "0::/system.slice/sandhost.service (deleted)\n",
            "12:pids:/docker/0123\n11:memory:/docker/0123\n1:name=systemd:/docker/0123\n",
        ] {
            assert!(
                matches!(fallback(&service_observed(not_a_service)), NotAService::ForeignCgroup { .. }),
                "{not_a_service}"
            );
        }
        // A service whose path no parent may take (systemd's escapes): the fallback, saying so.
        let why = fallback(&service_observed("0::/system.slice/sandhost@a\\x2db.service\n"));
        assert!(matches!(why, NotAService::Unusable { .. }), "{why:?}");
        assert!(Reason::Fallback(why).to_string().contains("cannot hold the parent"));
    }

    #[test]
    fn a_configured_parent_is_used_as_given_and_validated() {
        for configured in [CgroupParent::from("sandhost-e2e"), CgroupParent::from("a/b.slice/c")] {
            let placement = Placement::choose(&configured, &service_observed(PURE_V2)).expect("valid");
            let CgroupParent::Path(path) = &configured else { unreachable!() };
            assert_eq!(&placement.parent, path, "a systemd service keeps an explicit parent");
            assert_eq!((placement.service, placement.reason), (None, Reason::Configured));
        }
        assert!(Placement::choose(&CgroupParent::from("../x"), &Observed::default()).is_err());
        assert!(Placement::choose(&CgroupParent::auto("/abs"), &Observed::default()).is_err());
    }
}
