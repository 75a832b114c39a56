//! Hash maps keyed by what the writer hashes on every request: instance ids, queue keys,
//! step rows.
//!
//! The writer looks up the claim index, the snapshot cache and a batch's step rows several
//! times per request; with std's `SipHash` those lookups were about a tenth of the preparing
//! thread's time. foldhash (the hasher `hashbrown` uses) is several times cheaper and still
//! seeded per process. The keys are instance ids the engine generates and step names from
//! registered definitions, not attacker-chosen strings, and the seed is random anyway.

/// A `HashMap` with foldhash's fast, per-process seeded hasher.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash's fast, per-process seeded hasher.
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
