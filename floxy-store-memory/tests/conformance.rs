//! The store conformance suite of `floxy-core` against [`MemoryStore`]: one test per check,
//! plus `run_all` as a whole.

use floxy_core::conformance;
use floxy_store_memory::MemoryStore;

floxy_core::conformance_tests!(
    MemoryStore,
    |name, check: conformance::Check<MemoryStore>| {
        futures::executor::block_on(conformance::run_one(name, check(MemoryStore::new())));
    }
);

#[test]
fn run_all() {
    futures::executor::block_on(conformance::run_all(|| async { MemoryStore::new() }));
}
