//! The API adapters: gRPC (tonic) and HTTP (axum). The only place that knows either.
