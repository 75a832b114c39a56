//! The `Transition`: every write of one atomic commit, as data.

use super::ids::{DlqId, FencingToken, Timestamp};
use super::record::{InstanceRecord, NewDlqRecord, NewEvent, QueueItem, QueueKey, StepRun};
use super::status::StepStatus;
use serde::{Deserialize, Serialize};

/// A step-run write: the complete new record, guarded by a compare-and-set on the status
/// the state machine saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepWrite {
    /// The new record.
    pub run: StepRun,
    /// Status the stored record must have (`None`: the record must not exist yet).
    pub expect: Option<StepStatus>,
}

/// A queue write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueueOp {
    /// Insert or replace the item with this key. The item is stored unleased: replacing
    /// drops any lease on it, and a `lease` set on the item itself is ignored (leases come
    /// only from claims, or from an eager claim in the same commit,
    /// [`crate::store::Store::update_instance_eager`]).
    Upsert(QueueItem),
    /// Remove the item (no-op if absent).
    Delete(QueueKey),
    /// Ask the lease holder to stop (flag returned by heartbeats; no-op if absent).
    RequestCancel(QueueKey),
}

impl QueueOp {
    /// The key of the item the operation concerns.
    #[must_use]
    pub fn key(&self) -> &QueueKey {
        match self {
            Self::Upsert(item) => &item.key,
            Self::Delete(key) | Self::RequestCancel(key) => key,
        }
    }
}

/// The fencing check of a transition that follows a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheck {
    /// The claimed item.
    pub key: QueueKey,
    /// The token of the claim.
    pub token: FencingToken,
}

/// All writes of one atomic commit for one instance.
///
/// A store applies a transition all-or-nothing (see the [`crate::store::Store`] contract):
/// 1. `create`: the instance must not exist; otherwise the stored `version` must be
///    `instance.version - 1`.
/// 2. `lease_check`: the item must exist and hold a lease with exactly that token.
/// 3. every [`StepWrite::expect`] must match the stored status.
/// 4. then the instance record, step runs, queue ops, events and DLQ writes are applied.
///
/// Any failed check rejects the whole transition and changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Time of the transition (events are stamped with it).
    pub now: Timestamp,
    /// Whether this transition creates the instance.
    pub create: bool,
    /// The complete new instance record.
    pub instance: InstanceRecord,
    /// Step-run writes.
    pub steps: Vec<StepWrite>,
    /// Queue writes, in order.
    pub queue: Vec<QueueOp>,
    /// Events to append, in order.
    pub events: Vec<NewEvent>,
    /// DLQ records to write.
    pub dlq_insert: Vec<NewDlqRecord>,
    /// DLQ records to remove.
    pub dlq_delete: Vec<DlqId>,
    /// Fencing check.
    pub lease_check: Option<LeaseCheck>,
}
