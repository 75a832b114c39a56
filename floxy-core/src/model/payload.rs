//! JSON payloads (inputs, outputs, decisions).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default bound on the serialized size of one payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Bound on how deeply arrays and objects nest in one payload (`{"a": [1]}` nests 2 deep; a
/// scalar 0). Fixed, not configurable: every store must read back what it wrote, and JSON
/// decoders stop at a depth of their own (`serde_json` at 128, the redb row decoder at 256),
/// so a payload accepted here leaves room for the records that wrap it. Checked before the
/// size, so that measuring the size of a hostile value cannot exhaust the stack.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// An immutable JSON value shared between records without copying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(pub Arc<serde_json::Value>);

impl Payload {
    /// The JSON `null` payload.
    #[must_use]
    pub fn null() -> Self {
        Self(Arc::new(serde_json::Value::Null))
    }
    /// Wraps a JSON value.
    #[must_use]
    pub fn new(v: serde_json::Value) -> Self {
        Self(Arc::new(v))
    }
    /// The JSON value.
    #[must_use]
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
    /// Size of the compact JSON serialization in bytes.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Counter(0);
        // Serializing a `Value` into a counting writer cannot fail.
        let _ = serde_json::to_writer(&mut c, self.value());
        c.0
    }
    /// Whether arrays and objects nest deeper than `max` levels; walks the value without
    /// recursion and stops at the first container past the bound.
    #[must_use]
    pub fn nests_deeper_than(&self, max: usize) -> bool {
        let mut stack: Vec<(&serde_json::Value, usize)> = vec![(self.value(), 0)];
        while let Some((v, depth)) = stack.pop() {
            let children: &mut dyn Iterator<Item = &serde_json::Value> = match v {
                serde_json::Value::Array(a) => &mut a.iter(),
                serde_json::Value::Object(o) => &mut o.values(),
                _ => continue,
            };
            if depth + 1 > max {
                return true;
            }
            stack.extend(children.map(|c| (c, depth + 1)));
        }
        false
    }
    /// Checks the payload against the nesting bound ([`MAX_PAYLOAD_DEPTH`]) and a size bound.
    ///
    /// # Errors
    /// [`PayloadTooLarge::Depth`] when arrays and objects nest deeper than
    /// [`MAX_PAYLOAD_DEPTH`]; [`PayloadTooLarge::Bytes`] when the encoded size exceeds
    /// `max_bytes`.
    pub fn check_size(&self, max_bytes: usize) -> Result<(), PayloadTooLarge> {
        if self.nests_deeper_than(MAX_PAYLOAD_DEPTH) {
            return Err(PayloadTooLarge::Depth {
                max_depth: MAX_PAYLOAD_DEPTH,
            });
        }
        let size_bytes = self.encoded_len();
        if size_bytes > max_bytes {
            Err(PayloadTooLarge::Bytes {
                size_bytes,
                max_bytes,
            })
        } else {
            Ok(())
        }
    }
}

impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Self {
        Self::new(v)
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

/// A payload exceeded a bound: the workflow's size bound or the fixed nesting bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadTooLarge {
    /// The compact JSON encoding is larger than the workflow's `max_payload_bytes`.
    #[error("payload of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    Bytes {
        /// Encoded size of the payload.
        size_bytes: usize,
        /// The bound it exceeded.
        max_bytes: usize,
    },
    /// Arrays and objects nest deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("payload nests arrays and objects deeper than {max_depth} levels")]
    Depth {
        /// The bound it exceeded ([`MAX_PAYLOAD_DEPTH`]).
        max_depth: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Payload {
        // Built by hand: `json!` would serialize (recursively) every interpolated value.
        let mut v = json!(1);
        for i in 0..levels {
            v = if i % 2 == 0 {
                serde_json::Value::Array(vec![v])
            } else {
                serde_json::Value::Object(std::iter::once(("k".to_owned(), v)).collect())
            };
        }
        Payload::new(v)
    }

    #[test]
    fn nesting_is_counted_per_container_level() {
        assert!(!Payload::new(json!(1)).nests_deeper_than(0));
        assert!(Payload::new(json!([])).nests_deeper_than(0));
        assert!(!Payload::new(json!({"a": [1], "b": {"c": 2}})).nests_deeper_than(2));
        assert!(Payload::new(json!({"a": [1], "b": {"c": [2]}})).nests_deeper_than(2));
    }

    #[test]
    fn payloads_nested_past_the_bound_are_rejected_before_their_size_is_measured() {
        assert_eq!(
            nested(MAX_PAYLOAD_DEPTH).check_size(DEFAULT_MAX_PAYLOAD_BYTES),
            Ok(())
        );
        assert_eq!(
            nested(MAX_PAYLOAD_DEPTH + 1).check_size(DEFAULT_MAX_PAYLOAD_BYTES),
            Err(PayloadTooLarge::Depth {
                max_depth: MAX_PAYLOAD_DEPTH
            })
        );
        // Deep enough that serializing it recursively (to measure its size) would overflow
        // the test thread's stack; the depth check answers first.
        let hostile = nested(1_000_000);
        assert!(matches!(
            hostile.check_size(DEFAULT_MAX_PAYLOAD_BYTES),
            Err(PayloadTooLarge::Depth { .. })
        ));
        // Dropping a value this deep recurses too: leak it, the test process ends soon.
        std::mem::forget(hostile);
    }

    #[test]
    fn the_size_bound_still_applies() {
        assert!(matches!(
            Payload::new(json!("0123456789")).check_size(5),
            Err(PayloadTooLarge::Bytes {
                size_bytes: 12,
                max_bytes: 5
            })
        ));
    }
}
