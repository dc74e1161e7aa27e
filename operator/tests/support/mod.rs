//! Helpers shared by the cluster tests and the scale bench.

pub mod fleet;
