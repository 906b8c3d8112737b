//! Placeholder for the recording fake runtime (written on another branch); it exists here only so
//! that the `test-util` feature compiles on the `runtime` branch. On merge, take the other side.
