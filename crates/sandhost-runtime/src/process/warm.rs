//! The warm pool: per configured template, inits that have done everything a start does before
//! the request matters (namespaces, cgroup joined, the template's root built, `pivot_root`) and
//! wait for a claim. A start of that template takes one (`start::run_claimed`) instead of
//! building a sandbox from nothing; with none ready it starts cold, never waiting for the pool.
//!
//! A member lives in `<state>/warm/<name>/` with the cgroup `<name>` under the sandboxes' parent,
//! `<name>` being `warm-<hex>` ([`is_member_name`]): neither is a sandbox's (`<id>/<lifecycle>`,
//! `<id>.<lifecycle>`), so the rest of the backend never lists, counts or re-adopts one. Claimed,
//! its directory is renamed to the lifecycle's and its cgroup keeps its name (recorded in the
//! init record: v2 cannot rename a cgroup).
//!
//! # Invariants
//!
//! - Single use: a member is moved out of its queue under the pool's lock; the claim pipe is
//!   written once, by the start that took it, and a member that fails to start is destroyed.
//! - The init waits on its claim pipe, whose only write end the agent holds: when the agent dies
//!   (or drops a member) the init reads end of file and exits, and recovery removes what is left
//!   of members it does not own.
//! - Refill runs in counted background work ([`Runtime::settle`](crate::Runtime::settle) waits
//!   for it), at most `parallelism` builds at once over all templates; a member built while the
//!   pool is off (draining, closed) is destroyed instead of queued.
//! - A member older than the maximum age is never handed out: a timer replaces it.

use std::collections::{HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::start::{LaunchError, LaunchedInit, Made, StartGuard, launch};
use super::{Inner, files};
use crate::cgroup::Cgroup;
use crate::{Template, WarmPoolStats};

/// The directory of the members under the runtime's state dir.
pub(super) const WARM_DIR: &str = "warm";
/// How long a member stays ready before it is replaced, unless configured.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// How long a template whose build failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One template's pool, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmTemplate {
    /// Its name (`host`, or the registered rootfs's): the metrics' label.
    pub name: String,
    /// The root its members build.
    pub template: Template,
    /// How many members are kept ready.
    pub size: usize,
}

/// Whether `name` is a member's (`warm-` and 1 to 32 lowercase hex digits): what recovery accepts
/// from an init record before it joins the name under the parent.
pub(super) fn is_member_name(name: &str) -> bool {
    name.strip_prefix("warm-").is_some_and(|hex| {
        (1..=32).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A ready member: its init waits for the claim.
#[derive(Debug)]
pub(super) struct Member {
    /// `warm-<hex>`: its directory's and its cgroup's name.
    pub(super) name: String,
    /// `<state>/warm/<name>`.
    pub(super) dir: PathBuf,
    /// Its cgroup, with the init in it and no limits yet.
    pub(super) cgroup: Cgroup,
    /// The init.
    pub(super) init: LaunchedInit,
    /// The write end of its claim pipe (the init's fd 6).
    pub(super) claim: OwnedFd,
    built_at: Instant,
}

impl Member {
    /// Whether its init has ended (killed from outside, say): then it is destroyed, never handed
    /// out. One `poll` of its pidfd, which is readable once the process has exited.
    fn has_exited(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(self.init.pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
    }

    /// Kills and reaps its init, removes its cgroup and directory (not `warm/` itself, where
    /// other members are being built).
    async fn destroy(self) {
        let made = Made {
            dir: None,
            cgroup: Some(self.cgroup),
            init: Some(self.init.pidfd),
            member_dir: Some(self.dir),
        };
        drop(self.claim);
        made.undo().await;
    }
}

/// Every template's pool of one runtime.
#[derive(Debug)]
pub(super) struct WarmPool {
    templates: Vec<TemplatePool>,
    /// Builds in progress over all templates: at most the start parallelism.
    builds: Arc<Semaphore>,
    max_age: Duration,
}

#[derive(Debug)]
struct TemplatePool {
    config: WarmTemplate,
    state: Mutex<PoolState>,
    claims: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Refill on (the node is READY).
    active: bool,
    /// The runtime closed: nothing is built any more.
    closed: bool,
    ready: VecDeque<Member>,
    building: usize,
    /// The names of members being built or ready: recovery leaves them alone.
    live: HashSet<String>,
}

impl WarmPool {
    pub(super) fn new(templates: &[WarmTemplate], parallelism: usize, max_age: Duration) -> Self {
        Self {
            templates: templates
                .iter()
                .filter(|t| t.size > 0)
                .map(|config| TemplatePool {
                    config: config.clone(),
                    state: Mutex::new(PoolState::default()),
                    claims: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                })
                .collect(),
            builds: Arc::new(Semaphore::new(parallelism.max(1))),
            max_age,
        }
    }

    /// Takes a ready member of `template`, if there is one. Never waits: `None` means start cold.
    /// The replacement of a member taken is built once its start is done ([`Self::refill_for`]): a
    /// build beside the start would take the CPU and the kernel's cgroup locks from it.
    pub(super) fn claim(&self, inner: &Arc<Inner>, template: &Template) -> Option<Member> {
        let index = self.templates.iter().position(|t| t.config.template == *template)?;
        let pool = &self.templates[index];
        let mut expired = Vec::new();
        let member = {
            let mut state = pool.lock();
            let member = loop {
                match state.ready.pop_front() {
                    Some(m) if m.built_at.elapsed() >= self.max_age || m.has_exited() => expired.push(m),
                    other => break other,
                }
            };
            for m in expired.iter().chain(member.as_ref()) {
                state.live.remove(&m.name);
            }
            member
        };
        // Relaxed: counters read for the metrics only; no other memory depends on them.
        if member.is_some() {
            pool.claims.fetch_add(1, Ordering::Relaxed);
        } else {
            pool.misses.fetch_add(1, Ordering::Relaxed);
        }
        for m in expired {
            inner.background.spawn(m.destroy());
        }
        if member.is_none() {
            refill(inner, index);
        }
        member
    }

    /// Brings `template`'s pool back to its target (after a start that took a member ended).
    pub(super) fn refill_for(&self, inner: &Arc<Inner>, template: &Template) {
        if let Some(index) = self.templates.iter().position(|t| t.config.template == *template) {
            refill(inner, index);
        }
    }

    /// Refill on, or off and every ready member destroyed (in counted background work).
    pub(super) fn set_active(&self, inner: &Arc<Inner>, active: bool) {
        for (index, pool) in self.templates.iter().enumerate() {
            let taken: Vec<Member> = {
                let mut state = pool.lock();
                state.active = active && !state.closed;
                if state.active {
                    Vec::new()
                } else {
                    let taken: Vec<Member> = state.ready.drain(..).collect();
                    for m in &taken {
                        state.live.remove(&m.name);
                    }
                    taken
                }
            };
            for m in taken {
                inner.background.spawn(m.destroy());
            }
            refill(inner, index);
        }
    }

    /// Off for good: every ready member destroyed before this returns; members still being built
    /// are destroyed by their builds (counted background work).
    pub(super) async fn close(&self) {
        let mut taken = Vec::new();
        for pool in &self.templates {
            let mut state = pool.lock();
            state.closed = true;
            state.active = false;
            let ready: Vec<Member> = state.ready.drain(..).collect();
            for m in ready {
                state.live.remove(&m.name);
                taken.push(m);
            }
        }
        for m in taken {
            m.destroy().await;
        }
    }

    pub(super) fn stats(&self) -> Vec<WarmPoolStats> {
        self.templates
            .iter()
            .map(|pool| WarmPoolStats {
                template: pool.config.name.clone(),
                target: pool.config.size as u64,
                ready: pool.lock().ready.len() as u64,
                // Relaxed: see `claim`.
                claims: pool.claims.load(Ordering::Relaxed),
                misses: pool.misses.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether `name` is a member of this runtime's, being built or ready.
    pub(super) fn is_live(&self, name: &str) -> bool {
        self.templates.iter().any(|pool| pool.lock().live.contains(name))
    }
}

impl TemplatePool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the builds that bring template `index` to its target (none while off).
fn refill(inner: &Arc<Inner>, index: usize) {
    let pool = &inner.pool.templates[index];
    let wanted = {
        let mut state = pool.lock();
        if !state.active {
            return;
        }
        let wanted = pool.config.size.saturating_sub(state.ready.len() + state.building);
        state.building += wanted;
        wanted
    };
    for _ in 0..wanted {
        inner.background.spawn(build_one(Arc::clone(inner), index));
    }
}

/// One build of template `index`, in its turn; the member is queued if the pool is still on.
async fn build_one(inner: Arc<Inner>, index: usize) {
    let pool = &inner.pool.templates[index];
    let built = match Arc::clone(&inner.pool.builds).acquire_owned().await {
        Ok(_turn) => build(&inner, pool).await,
        Err(_) => Err("the build turns are closed".to_owned()), // never closed: unreachable
    };
    let unwanted = {
        let mut state = pool.lock();
        state.building -= 1;
        match built {
            Ok(member) if state.active => {
                arm_expiry(&inner, index, member.name.clone());
                state.ready.push_back(member);
                None
            }
            Ok(member) => {
                state.live.remove(&member.name);
                Some(member)
            }
            Err(e) => {
                tracing::warn!(template = %pool.config.name, error = %e, "a warm pool member could not be built");
                retry_later(&inner, index);
                None
            }
        }
    };
    if let Some(member) = unwanted {
        member.destroy().await;
    }
}

/// Refills template `index` after [`RETRY_AFTER`]: a failing build is not retried in a hot loop.
fn retry_later(inner: &Arc<Inner>, index: usize) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        tokio::time::sleep(RETRY_AFTER).await;
        if let Some(inner) = weak.upgrade() {
            refill(&inner, index);
        }
    });
}

/// Replaces member `name` once it reaches the maximum age, if it is still ready then.
fn arm_expiry(inner: &Arc<Inner>, index: usize, name: String) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let max_age = inner.pool.max_age;
    tokio::spawn(async move {
        tokio::time::sleep(max_age).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let pool = &inner.pool.templates[index];
        let expired = {
            let mut state = pool.lock();
            let at = state.ready.iter().position(|m| m.name == name);
            let expired = at.and_then(|at| state.ready.remove(at));
            state.live.remove(&name);
            expired
        };
        if let Some(member) = expired {
            tracing::debug!(template = %pool.config.name, member = %name, "replacing a warm pool member past its age");
            inner.background.spawn(member.destroy());
            refill(&inner, index);
        }
    });
}

/// Builds one member of `pool`: its directory and cgroup, then its init, until it says ready.
async fn build(inner: &Inner, pool: &TemplatePool) -> Result<Member, String> {
    // Random: unique across agents that share nothing but the state dir.
    let name = format!("warm-{:016x}", rand::random::<u64>());
    pool.lock().live.insert(name.clone());
    let mut guard = StartGuard::new(inner.background.clone());
    let result = build_steps(inner, pool, &name, &mut guard).await;
    match result {
        Ok(member) => {
            guard.disarm();
            Ok(member)
        }
        Err(e) => {
            guard.undo().await;
            pool.lock().live.remove(&name);
            Err(e)
        }
    }
}

async fn build_steps(
    inner: &Inner,
    pool: &TemplatePool,
    name: &str,
    guard: &mut StartGuard,
) -> Result<Member, String> {
    let text = |step: &'static str| move |e: std::io::Error| format!("{step}: {e}");
    let parent = inner.config.state_dir.join(WARM_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(text("create warm dir"))?;
    let dir = parent.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(text("create member dir"))?;
    guard.made().member_dir = Some(dir.clone());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join(files::ROOT))
        .map_err(text("create member dir"))?;
    let cgroup = inner.cgroup_named(name);
    cgroup.create().map_err(|e| format!("{}: {}", e.step, e.source))?;
    guard.made().cgroup = Some(cgroup.clone());
    let (claim_r, claim_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| text("claim pipe")(e.into()))?;
    let launched =
        launch(inner, &dir, &cgroup, &pool.config.template, Some(claim_r), guard).map_err(|e| match e {
            LaunchError::Cgroup(e) => format!("{}: {}", e.step, e.source),
            LaunchError::Host(step, e) => format!("{step}: {e}"),
        })?;
    let LaunchedInit { pid, pidfd, start_time, status } = launched;
    let deadline = Instant::now() + inner.config.start_timeout;
    let status = match tokio::time::timeout_at(deadline, status.ready()).await {
        Ok(Ok(Ok(status))) => status,
        Ok(Ok(Err(Some(report)))) => return Err(format!("{report:?}")),
        Ok(Ok(Err(None))) => return Err("the init ended before it was ready".to_owned()),
        Ok(Err(e)) => return Err(text("read status pipe")(e)),
        Err(_) => return Err("timed out waiting for the init to be ready".to_owned()),
    };
    Ok(Member {
        name: name.to_owned(),
        dir,
        cgroup,
        init: LaunchedInit { pid, pidfd, start_time, status },
        claim: claim_w,
        built_at: Instant::now(),
    })
}

/// Removes what members of an earlier agent left: directories under `<state>/warm/` and the
/// cgroups named like members, unless this runtime's own pool (`is_live`) or a sandbox (`in_use`)
/// holds them. Their inits have exited already (their claim pipes closed with that agent) or are
/// killed here.
pub(super) async fn remove_leftovers(
    inner: &Inner,
    is_live: impl Fn(&str) -> bool,
    in_use: impl Fn(&str) -> bool,
) {
    let parent = inner.config.state_dir.join(WARM_DIR);
    let names: Vec<String> = std::fs::read_dir(&parent)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    for name in names.iter().filter(|n| is_member_name(n) && !is_live(n)) {
        remove_member_dir(&parent.join(name));
    }
    for name in inner.layout.children() {
        if !is_member_name(&name) || is_live(&name) || in_use(&name) {
            continue;
        }
        tracing::info!(member = %name, "destroying a warm pool member that an earlier agent left");
        let cgroup = inner.cgroup_named(&name);
        if let Err(e) = cgroup.kill_until_empty(super::control::KILL_TIMEOUT).await {
            tracing::warn!(step = e.step, error = %e.source, "a warm pool member's processes left behind");
        }
        if let Err(e) = cgroup.remove().await {
            tracing::warn!(step = e.step, error = %e.source, "a warm pool member's cgroup left behind");
        }
    }
}

/// Removes a member's directory and what is in it, leaving `warm/` (other builds use it).
pub(super) fn remove_member_dir(dir: &Path) {
    if let Err(e) = files::remove_state_files(dir).and_then(|()| super::logs::remove_segments(dir)) {
        tracing::warn!(dir = %dir.display(), error = %e, "a warm pool member's files left behind");
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "a warm pool member's directory left behind");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_recognised_strictly() {
        assert!(is_member_name("warm-0123456789abcdef"));
        assert!(is_member_name("warm-a"));
        for other in
            ["warm-", "warm-XYZ", "warm-../x", "box.1", "warm-0123456789abcdef0123456789abcdef0", "cold-1"]
        {
            assert!(!is_member_name(other), "{other}");
        }
    }
}
