//! The `sandhost.v1` gRPC API: messages and the tonic clients and servers of `SandboxService` and
//! `NodeService`, generated at build time from `proto/sandhost/v1/` (see the `.proto` files for the
//! documentation of every message and field).
//!
//! Maps are [`std::collections::BTreeMap`]s, so labels come out ordered. [`FILE_DESCRIPTOR_SET`] holds
//! the encoded descriptors (with their imports) for server reflection.

/// The `sandhost.v1` package.
pub mod v1 {
    #![allow(
        missing_docs,
        missing_debug_implementations,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::nursery
    )]
    include!(concat!(env!("OUT_DIR"), "/sandhost.v1.rs"));
}

/// The encoded `google.protobuf.FileDescriptorSet` of the API and its imports, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sandhost_v1_descriptor.bin"));
