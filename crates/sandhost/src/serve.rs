//! `sandhost serve`: config -> tracing -> state dir lock -> runtime -> node -> servers -> signals ->
//! drain -> bounded shutdown (being written).
