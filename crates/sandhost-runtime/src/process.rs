//! The `process` backend: isolated sandboxes built from Linux namespaces, cgroups and seccomp, with
//! sandhost itself as each sandbox's init. (Being built; see issue 3.)
