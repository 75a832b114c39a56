//! Injectors: seeded, reproducible faults that never block the async runtime.
//!
//! * [`handler`]: wrap any [`floxy::Handler`] to panic, fail, sleep or hang.
//! * [`store`]: wrap any [`floxy::Store`] to add latency and transient errors.
//! * [`failpoints`]: arm the runtime's named crash points (feature `failpoints`).
//! * [`crate::proxy`]: a Toxiproxy-compatible TCP proxy for network faults.
//! * [`crate::process`]: SIGKILL and restart of worker processes, immediate PostgreSQL
//!   restarts.

pub mod failpoints;
pub mod handler;
pub mod store;
