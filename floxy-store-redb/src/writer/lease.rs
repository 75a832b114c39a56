//! Claims and heartbeats: leases with fencing tokens from the claim index.

use super::{
    Batch, Cached, ClaimRequest, ClaimedItem, Fail, InstanceSnapshot, LeaseRef, LeaseState,
    MAX_CLAIM_BATCH, QueueKey, StoreError, Timestamp, Writer, checks, classify,
};

impl Writer {
    // ----- claims and leases ---------------------------------------------------------------

    pub(super) fn claim(
        &mut self,
        b: &mut Batch,
        req: &ClaimRequest,
    ) -> Result<Vec<ClaimedItem>, Fail> {
        let limit = req.limit.min(MAX_CLAIM_BATCH);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = req.now;
        let mut cands = std::mem::take(&mut self.claim_buf);
        self.index.candidates(&req.handlers, limit, now, &mut cands);
        let claimed = self.claim_candidates(b, req, &cands);
        cands.clear();
        self.claim_buf = cands;
        claimed
    }

    /// Leases the candidates `cands` of `req` (see [`Writer::claim`]).
    fn claim_candidates(
        &mut self,
        b: &mut Batch,
        req: &ClaimRequest,
        cands: &[QueueKey],
    ) -> Result<Vec<ClaimedItem>, Fail> {
        let now = req.now;
        // Every candidate must have its step run before anything changes.
        // A cached snapshot is only looked at here (taking it out and putting it back costs
        // two map updates per candidate); an uncached one is read once and cached for the
        // loop below.
        for key in cands {
            let has_run = |s: &InstanceSnapshot| s.steps.iter().any(|r| r.step == key.step);
            let exists = match self.cache.get(key.instance_id) {
                Cached::Live(s) => has_run(s),
                Cached::Gone => false,
                Cached::Miss => {
                    let snap = self.read_snapshot(key.instance_id).map_err(classify)?;
                    let exists = snap.as_ref().is_some_and(has_run);
                    if let Some(s) = snap {
                        self.cache.put(s, 0);
                    }
                    exists
                }
            };
            if !exists {
                return Err(Fail::Caller(StoreError::Corrupt(format!(
                    "queue item {}/{} ({}) has no step run",
                    key.instance_id,
                    key.step,
                    key.kind.as_str()
                ))));
            }
        }
        // From here on every error is fatal: the batch holds this claim's writes.
        let mut out = Vec::with_capacity(cands.len());
        for key in cands {
            let Some((mut snap, pin)) = self.take_snapshot(key.instance_id).map_err(Fail::Fatal)?
            else {
                continue;
            };
            self.counters.last_token += 1;
            self.counters_dirty = true;
            let token = floxy_core::model::FencingToken(self.counters.last_token);
            let Some((item, previous_lease_expired)) =
                self.index.lease(key, &req.owner, token, now)
            else {
                self.cache.put(snap, pin);
                continue;
            };
            let item = item.clone();
            Self::mark_row(b, key.instance_id, &key.step);
            let Some(run) = snap.steps.iter_mut().find(|r| r.step == key.step) else {
                self.cache.put(snap, pin);
                continue;
            };
            if checks::claim_starts_run(key.kind, run.status) {
                checks::start_run(run, item.attempt, now);
                self.counters.last_seq += 1;
                let e = crate::row::StepMark {
                    seq: self.counters.last_seq,
                    at: now,
                    kind: floxy_core::model::EventKind::StepStarted,
                    attempt: Some(item.attempt),
                    detail: None,
                };
                // Kept in the step row the claim writes anyway (one row less per claim); see
                // `crate::row`.
                self.cache.push_mark(key.instance_id, &key.step, e);
                let run = run.clone();
                self.keep_written(b, snap);
                out.push(ClaimedItem {
                    item,
                    previous_lease_expired,
                    run,
                });
            } else {
                let run = run.clone();
                self.cache.put(snap, pin);
                out.push(ClaimedItem {
                    item,
                    previous_lease_expired,
                    run,
                });
            }
        }
        Ok(out)
    }

    pub(super) fn heartbeat(
        &mut self,
        b: &mut Batch,
        owner: &str,
        leases: &[LeaseRef],
        now: Timestamp,
    ) -> Vec<LeaseState> {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            match self.index.heartbeat(owner, &l.key, l.token, now) {
                Some((item, expires_at)) => {
                    let cancel_requested = item.cancel_requested;
                    Self::mark_row(b, l.key.instance_id, &l.key.step);
                    out.push(LeaseState::Held {
                        expires_at,
                        cancel_requested,
                    });
                }
                None => out.push(LeaseState::Lost),
            }
        }
        out
    }
}
