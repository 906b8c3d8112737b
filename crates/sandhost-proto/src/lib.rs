//! The `sandhost.v1` gRPC API (being built; see issue 4).
