//! floxy-core
pub mod builder;
pub mod checks;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod eager;
pub mod expr;
pub mod failpoints;
pub mod graph;
pub mod machine;
pub mod model;
pub mod store;
pub mod validate;
