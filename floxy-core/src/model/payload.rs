//! JSON payloads (inputs, outputs, decisions).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default bound on the serialized size of one payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

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
    /// Checks the payload against a size bound.
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the encoded size exceeds `max_bytes`.
    pub fn check_size(&self, max_bytes: usize) -> Result<(), PayloadTooLarge> {
        let size_bytes = self.encoded_len();
        if size_bytes > max_bytes {
            Err(PayloadTooLarge {
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

/// A payload exceeded the configured size bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
pub struct PayloadTooLarge {
    /// Encoded size of the payload.
    pub size_bytes: usize,
    /// The bound it exceeded.
    pub max_bytes: usize,
}
