//! The pipelined writer under real concurrency: dozens of tasks create, update (with and
//! without eager claims), claim, heartbeat, request cancels, park in and resume from the
//! DLQ, finish and clean up instances at the same time, so that a batch is prepared while
//! the one before it commits. What was acknowledged is recorded, then checked:
//!
//! * every acknowledged create exists (unless a later cleanup may have removed it; one
//!   that certainly did must have), nothing refused with the commit error does;
//! * every instance's version is 1 + its acknowledged updates, its events are exactly the
//!   ones the acknowledged writes made (sequence numbers unique store-wide);
//! * no fencing token was handed out twice, and every lease on disk is the last
//!   acknowledged claim of its item;
//! * the in-memory state the writer publishes or claims from (stats, `next_due`, the claim
//!   index) agrees with what is on disk: a claim returns exactly the items the stored queue
//!   says are claimable, in claim order;
//! * the store's view before close equals the view after close and reopen, and a claim
//!   after reopen returns exactly the claimable items that view implies.
//!
//! Variants: the default snapshot cache, a cache of 8 instances (evictions all the time),
//! no cache at all, relaxed durability, and (feature `failpoints`) random commit failures.
//! Each cleanup is followed at once by transitions of the instances it removes, and creates
//! close in time share idempotency keys, so both land in the batch prepared while the one
//! before commits.
//!
//! `refusals_prepared_on_a_failed_commit_get_the_commit_error` (feature `failpoints`) is a
//! deterministic reproduction of a bug found while writing this file: a request prepared on
//! top of a batch whose commit fails is refused (`StaleLease`, `Rejected`) from the state
//! that batch would have made, instead of getting the commit error.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use floxy_core::conformance::fixtures::{
    T0, dlq_record, event, execute, key, next, start, step_run, write,
};
use floxy_core::eager::EagerClaim;
use floxy_core::machine::TransitionError;
use floxy_core::model::{
    EventKind, FencingToken, InstanceId, InstanceSnapshot, InstanceStatus, LeaseCheck, QueueItem,
    QueueKey, QueueOp, StepStatus, Timestamp, Transition, WorkKind,
};
use floxy_core::store::{
    ClaimRequest, ClaimedItem, CreateOutcome, DlqQuery, InstanceQuery, LeaseRef, LeaseState, Store,
    StoreError,
};
use floxy_store_redb::{Durability, RedbOptions, RedbStore};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Failpoints are process-wide: tests of this binary run one at a time (`cargo test` runs
/// them as threads of one process; nextest in processes of their own).
static SERIAL: Mutex<()> = Mutex::new(());

const TASKS: usize = 40;
const OPS_PER_TASK: usize = 55;
const HANDLERS: [&str; 2] = ["h1", "h2"];
const STEPS: [&str; 3] = ["a", "b", "c"];
/// Lease TTLs of the items (short ones expire while the test runs and are reclaimed).
const TTLS: [u64; 3] = [150, 600, 30_000];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        // The remainder is below `n`, itself a usize.
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What was acknowledged about one instance.
#[derive(Debug, Default)]
struct Acked {
    /// The create was acknowledged (a claim's acknowledgement may be recorded first).
    created: bool,
    updates: u64,
    events: u64,
    /// `updated_at` of the acknowledged terminal transition.
    terminal: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct Model {
    insts: HashMap<InstanceId, Acked>,
    ids: Vec<InstanceId>,
    /// Creates answered with the injected commit error: must not exist.
    failed_creates: Vec<InstanceId>,
    /// Every token handed out by an acknowledged claim or eager claim, with its item.
    tokens: HashMap<FencingToken, (QueueKey, Arc<str>)>,
    duplicate_tokens: Vec<FencingToken>,
    /// The highest acknowledged lease token of each item: tokens grow in commit order, so
    /// that is its last lease. (Not the last one recorded: a task may record its
    /// acknowledgement after another task's later claim of the same item, once the first
    /// lease expired, when the machine is loaded.)
    last_lease: HashMap<QueueKey, FencingToken>,
    /// Terminal transitions in acknowledgement order: (instance, `updated_at`).
    terminal_log: Vec<(InstanceId, Timestamp)>,
    /// Instances a cleanup acknowledged after their terminal transition certainly removed.
    must_be_gone: HashSet<InstanceId>,
    /// Instances transitions were sent to while a cleanup may have removed them: they may
    /// survive that cleanup.
    touched: HashSet<InstanceId>,
    /// Instances returned as `CreateOutcome::Existing`, with the key asked for.
    existing: Vec<(InstanceId, String)>,
    /// Every idempotency key a create asked for.
    keys: HashSet<String>,
    /// Unexpected results (checked at the end, with the operation that got them).
    unexpected: Vec<String>,
    acked: u64,
    injected: u64,
    /// Activity, to make sure the workload did what it is meant to.
    eager: u64,
    reclaimed: u64,
    cleaned: u64,
}

impl Model {
    /// Records a claimed item; `count_event`: its `step_started` event is not counted
    /// elsewhere (a claim's; an eager claim's is in the applied transition's events).
    fn token(&mut self, c: &ClaimedItem, owner: &Arc<str>, count_event: bool) {
        let Some(l) = &c.item.lease else {
            self.unexpected
                .push(format!("claimed item without a lease: {:?}", c.item.key));
            return;
        };
        if l.owner != *owner {
            self.unexpected
                .push(format!("claimed for {owner}, leased to {}", l.owner));
        }
        if self
            .tokens
            .insert(l.token, (c.item.key.clone(), owner.clone()))
            .is_some()
        {
            self.duplicate_tokens.push(l.token);
        }
        let last = self.last_lease.entry(c.item.key.clone()).or_insert(l.token);
        *last = (*last).max(l.token);
        self.reclaimed += u64::from(c.previous_lease_expired);
        if count_event
            && c.item.key.kind == WorkKind::Execute
            && c.run.status == StepStatus::Running
        {
            self.insts.entry(c.item.key.instance_id).or_default().events += 1;
        }
    }
}

fn is_injected(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.contains("floxy-redb::commit"))
}

/// A lease a task holds.
#[derive(Debug, Clone)]
struct Held {
    key: QueueKey,
    token: FencingToken,
    ttl: u64,
    attempt: u32,
    handler: Arc<str>,
}

fn held(c: &ClaimedItem) -> Held {
    Held {
        key: c.item.key.clone(),
        token: c.item.lease.as_ref().map_or(FencingToken(0), |l| l.token),
        ttl: c.item.lease_ttl_ms,
        attempt: c.item.attempt,
        handler: c.item.handler.clone(),
    }
}

fn refuse(s: &InstanceSnapshot) -> TransitionError {
    TransitionError::InstanceTerminal {
        status: s.instance.status,
    }
}

fn item(id: InstanceId, step: &str, handler: &str, run_at: Timestamp, ttl: u64) -> QueueItem {
    let mut i = execute(id, step, handler, run_at);
    i.lease_ttl_ms = ttl;
    i
}

/// Completes the leased step; with `add`, starts a new step (leased at once by an eager
/// claim when asked).
fn complete(
    h: &Held,
    now: Timestamp,
    add: Option<(String, &'static str, u64)>,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    let h = h.clone();
    move |s| {
        if s.instance.status.is_terminal() {
            return Err(refuse(s));
        }
        let Some(mut run) = s.steps.iter().find(|r| r.step == h.key.step).cloned() else {
            return Err(refuse(s));
        };
        let id = s.instance.id;
        let mut t = next(s, now);
        t.lease_check = Some(LeaseCheck {
            key: h.key.clone(),
            token: h.token,
        });
        run.status = StepStatus::Completed;
        run.finished_at = Some(now);
        t.steps.push(write(run, Some(StepStatus::Running)));
        t.queue.push(QueueOp::Delete(h.key.clone()));
        t.events
            .push(event(EventKind::StepCompleted, Some(&h.key.step)));
        if let Some((name, handler, ttl)) = add
            && !s.steps.iter().any(|r| *r.step == *name)
        {
            t.steps
                .push(write(step_run(id, &name, StepStatus::Pending, now), None));
            t.queue
                .push(QueueOp::Upsert(item(id, &name, handler, now, ttl)));
        }
        Ok(t)
    }
}

/// The leased attempt failed: retrying, re-queued `delay` ms later.
fn retry(
    h: &Held,
    now: Timestamp,
    delay: u64,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    let h = h.clone();
    move |s| {
        if s.instance.status.is_terminal() {
            return Err(refuse(s));
        }
        let Some(mut run) = s.steps.iter().find(|r| r.step == h.key.step).cloned() else {
            return Err(refuse(s));
        };
        let id = s.instance.id;
        let mut t = next(s, now);
        t.lease_check = Some(LeaseCheck {
            key: h.key.clone(),
            token: h.token,
        });
        run.status = StepStatus::Retrying;
        run.error = Some("boom".to_owned());
        t.steps.push(write(run, Some(StepStatus::Running)));
        let mut i = item(id, &h.key.step, &h.handler, now.add_ms(delay), h.ttl);
        i.attempt = h.attempt;
        t.queue.push(QueueOp::Upsert(i));
        t.events
            .push(event(EventKind::StepRetry, Some(&h.key.step)));
        Ok(t)
    }
}

/// Asks the holder of a step's item to stop (no lease needed).
fn cancel(
    step: &'static str,
    now: Timestamp,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    move |s| {
        if s.instance.status.is_terminal() {
            return Err(refuse(s));
        }
        let mut t = next(s, now);
        t.queue.push(QueueOp::RequestCancel(key(
            s.instance.id,
            step,
            WorkKind::Execute,
        )));
        Ok(t)
    }
}

/// A running instance completes (terminal): its items go.
fn finish(
    now: Timestamp,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    move |s| {
        if s.instance.status != InstanceStatus::Running {
            return Err(refuse(s));
        }
        let mut t = next(s, now);
        t.instance.status = InstanceStatus::Completed;
        for r in &s.steps {
            t.queue.push(QueueOp::Delete(key(
                s.instance.id,
                &r.step,
                WorkKind::Execute,
            )));
        }
        t.events.push(event(EventKind::WorkflowCompleted, None));
        Ok(t)
    }
}

/// A terminal instance is written again (its record and an event; its `updated_at` moves).
fn touch(
    now: Timestamp,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    move |s| {
        if !s.instance.status.is_terminal() {
            return Err(refuse(s));
        }
        let mut t = next(s, now);
        t.events.push(event(EventKind::WorkflowCompleted, None));
        Ok(t)
    }
}

/// A running instance is parked in the DLQ: a DLQ record, its items go.
fn park(
    now: Timestamp,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    move |s| {
        if s.instance.status != InstanceStatus::Running {
            return Err(refuse(s));
        }
        let id = s.instance.id;
        let mut t = next(s, now);
        t.instance.status = InstanceStatus::Dlq;
        for r in &s.steps {
            t.queue
                .push(QueueOp::Delete(key(id, &r.step, WorkKind::Execute)));
        }
        let step = s.steps.first().map_or("a", |r| &*r.step);
        t.dlq_insert
            .push(dlq_record(id, &s.instance.workflow_id, step));
        t.events.push(event(EventKind::WorkflowFailed, None));
        Ok(t)
    }
}

/// A parked instance runs again: its DLQ records go, its unfinished steps are queued.
fn resume(
    now: Timestamp,
    ttl: u64,
) -> impl FnOnce(&InstanceSnapshot) -> Result<Transition, TransitionError> + Send + 'static {
    move |s| {
        if s.instance.status != InstanceStatus::Dlq {
            return Err(refuse(s));
        }
        let id = s.instance.id;
        let mut t = next(s, now);
        t.instance.status = InstanceStatus::Running;
        t.dlq_delete.extend(s.dlq.iter().map(|r| r.id));
        for (n, r) in s.steps.iter().enumerate() {
            if matches!(
                r.status,
                StepStatus::Pending | StepStatus::Retrying | StepStatus::Running
            ) {
                let mut i = item(id, &r.step, HANDLERS[n % 2], now, ttl);
                i.attempt = r.attempts;
                t.queue.push(QueueOp::Upsert(i));
            }
        }
        t.events.push(event(EventKind::WorkflowStarted, None));
        Ok(t)
    }
}

struct Shared {
    store: RedbStore,
    model: Mutex<Model>,
    /// The test's clock, in ms after `T0`: every operation takes the next tick.
    clock: AtomicI64,
}

impl Shared {
    fn now(&self) -> Timestamp {
        Timestamp(T0.0 + self.clock.fetch_add(1, Ordering::Relaxed))
    }

    fn pick(&self, rng: &mut Rng) -> Option<InstanceId> {
        let m = self.model.lock().unwrap();
        if m.ids.is_empty() {
            None
        } else {
            // Mostly the few most recent instances: they have work, and transitions of one
            // instance in consecutive batches are what the pipeline must keep apart.
            let n = m.ids.len();
            let i = if rng.chance(85) {
                n - 1 - rng.below(n.min(8))
            } else {
                rng.below(n)
            };
            Some(m.ids[i])
        }
    }

    /// Records an update's result; `ok` lists the refusals this operation may get. An
    /// acknowledged update is visible to readers at once.
    async fn updated(
        &self,
        what: &str,
        id: InstanceId,
        r: Result<(Transition, Vec<ClaimedItem>), StoreError>,
        owner: &Arc<str>,
        ok: fn(&StoreError) -> bool,
    ) -> Option<Vec<ClaimedItem>> {
        if let Ok((t, _)) = &r
            && let Some(rec) = self.store.get_instance(id).await.unwrap()
            && rec.version < t.instance.version
        {
            self.model.lock().unwrap().unexpected.push(format!(
                "{what} of {id} acknowledged (version {}) but readers see version {}",
                t.instance.version, rec.version
            ));
        }
        let mut m = self.model.lock().unwrap();
        match r {
            Ok((t, claimed)) => {
                m.acked += 1;
                if let Some(a) = m.insts.get_mut(&id) {
                    a.updates += 1;
                    a.events += t.events.len() as u64;
                    if t.instance.status.is_terminal() {
                        a.terminal = Some(t.instance.updated_at);
                    }
                } else {
                    m.unexpected
                        .push(format!("{what} of unknown instance {id}"));
                }
                if t.instance.status.is_terminal() {
                    m.terminal_log.push((id, t.instance.updated_at));
                }
                m.eager += claimed.len() as u64;
                for c in &claimed {
                    m.token(c, owner, false);
                }
                Some(claimed)
            }
            Err(e) if is_injected(&e) => {
                m.injected += 1;
                None
            }
            Err(e) if ok(&e) => None,
            Err(e) => {
                m.unexpected.push(format!("{what} of {id}: {e:?}"));
                None
            }
        }
    }
}

/// A lease holder's write: its lease may be lost, its instance finished (refused by the
/// transition) or cleaned up since.
fn stale_or_rejected(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::StaleLease { .. } | StoreError::Rejected(_) | StoreError::NotFound(_)
    )
}

fn rejected_or_gone(e: &StoreError) -> bool {
    matches!(e, StoreError::Rejected(_) | StoreError::NotFound(_))
}

async fn worker(sh: Arc<Shared>, task: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let owner: Arc<str> = Arc::from(format!("w{task}"));
    let mut leases: Vec<Held> = Vec::new();
    let mut fresh = 0_u32;
    for _ in 0..OPS_PER_TASK {
        let roll = rng.below(100);
        let now = sh.now();
        let store = &sh.store;
        match roll {
            // Create an instance (some with an idempotency key shared with other tasks).
            0..=11 => {
                let id = InstanceId(uuid::Uuid::now_v7());
                let n_steps = 1 + rng.below(3);
                let steps: Vec<(&str, &str)> = (0..n_steps)
                    .map(|i| (STEPS[i], HANDLERS[rng.below(2)]))
                    .collect();
                let mut tr = start(id, now, &steps);
                let ttl = TTLS[rng.below(TTLS.len())];
                for op in &mut tr.queue {
                    if let QueueOp::Upsert(i) = op {
                        i.lease_ttl_ms = ttl;
                    }
                }
                // Creates close in time share keys: they land in consecutive batches.
                let idem = rng.chance(40).then(|| format!("k{}", (now.0 - T0.0) / 40));
                tr.instance.idempotency_key.clone_from(&idem);
                let events = tr.events.len() as u64;
                let r = store.create_instance(tr).await;
                // Acknowledged: visible to readers at once (nobody else knows the id yet).
                let visible = store.get_instance(id).await.unwrap().is_some();
                let mut m = sh.model.lock().unwrap();
                m.keys.extend(idem.clone());
                if matches!(r, Ok(CreateOutcome::Created(_))) && !visible {
                    m.unexpected
                        .push(format!("create of {id} acknowledged but not visible"));
                }
                match r {
                    Ok(CreateOutcome::Created(got)) if got == id => {
                        m.acked += 1;
                        let inst = m.insts.entry(id).or_default();
                        inst.created = true;
                        inst.events += events;
                        m.ids.push(id);
                    }
                    Ok(CreateOutcome::Existing(other)) if other != id && idem.is_some() => {
                        m.acked += 1;
                        m.existing.push((other, idem.clone().unwrap_or_default()));
                    }
                    Err(e) if is_injected(&e) => {
                        m.injected += 1;
                        m.failed_creates.push(id);
                    }
                    r => m.unexpected.push(format!("create {id}: {r:?}")),
                }
            }
            // Claim.
            12..=33 => {
                let handlers: Vec<Arc<str>> = match rng.below(3) {
                    0 => vec![Arc::from(HANDLERS[0])],
                    1 => vec![Arc::from(HANDLERS[1])],
                    _ => HANDLERS.iter().map(|h| Arc::from(*h)).collect(),
                };
                let req = ClaimRequest {
                    owner: owner.clone(),
                    handlers,
                    limit: 1 + rng.below(4),
                    now,
                };
                let r = store.claim(&req).await;
                let mut m = sh.model.lock().unwrap();
                match r {
                    Ok(items) => {
                        m.acked += 1;
                        for c in &items {
                            m.token(c, &owner, true);
                            leases.push(held(c));
                        }
                    }
                    Err(e) if is_injected(&e) => m.injected += 1,
                    Err(e) => m.unexpected.push(format!("claim: {e:?}")),
                }
            }
            // Complete a held lease, sometimes starting a new step leased eagerly.
            34..=51 => {
                if leases.is_empty() {
                    continue;
                }
                let h = leases.swap_remove(rng.below(leases.len()));
                let add = rng.chance(50).then(|| {
                    fresh += 1;
                    (
                        format!("n{task}-{fresh}"),
                        HANDLERS[rng.below(2)],
                        TTLS[rng.below(TTLS.len())],
                    )
                });
                let f = Box::new(complete(&h, now, add));
                let id = h.key.instance_id;
                let r = if rng.chance(60) {
                    let eager = EagerClaim {
                        owner: owner.clone(),
                        handlers: HANDLERS.iter().map(|h| Arc::from(*h)).collect(),
                        limit: 1 + rng.below(2),
                    };
                    store.update_instance_eager(id, f, &eager).await
                } else {
                    store.update_instance(id, f).await.map(|t| (t, Vec::new()))
                };
                if let Some(claimed) = sh
                    .updated("complete", id, r, &owner, stale_or_rejected)
                    .await
                {
                    leases.extend(claimed.iter().map(held));
                }
            }
            // Retry a held lease.
            52..=58 => {
                if leases.is_empty() {
                    continue;
                }
                let h = leases.swap_remove(rng.below(leases.len()));
                let delay = rng.below(40) as u64;
                let id = h.key.instance_id;
                let r = store
                    .update_instance(id, Box::new(retry(&h, now, delay)))
                    .await
                    .map(|t| (t, Vec::new()));
                sh.updated("retry", id, r, &owner, stale_or_rejected).await;
            }
            // Heartbeat every held lease.
            59..=67 => {
                if leases.is_empty() {
                    continue;
                }
                let refs: Vec<LeaseRef> = leases
                    .iter()
                    .map(|h| LeaseRef {
                        key: h.key.clone(),
                        token: h.token,
                    })
                    .collect();
                let r = store.heartbeat(&owner, &refs, now).await;
                let mut m = sh.model.lock().unwrap();
                match r {
                    Ok(states) => {
                        m.acked += 1;
                        if states.len() != leases.len() {
                            m.unexpected.push(format!("heartbeat: {states:?}"));
                        }
                        let mut kept = Vec::new();
                        for (h, s) in leases.drain(..).zip(states) {
                            match s {
                                LeaseState::Held { expires_at, .. } => {
                                    if expires_at != now.add_ms(h.ttl) {
                                        m.unexpected.push(format!(
                                            "heartbeat of {:?}: expires at {expires_at:?}",
                                            h.key
                                        ));
                                    }
                                    kept.push(h);
                                }
                                LeaseState::Lost => {}
                                _ => m.unexpected.push(format!("heartbeat: {s:?}")),
                            }
                        }
                        leases = kept;
                    }
                    Err(e) if is_injected(&e) => m.injected += 1,
                    Err(e) => m.unexpected.push(format!("heartbeat: {e:?}")),
                }
            }
            // Ask the holder of a step to stop.
            68..=83 => {
                let Some(id) = sh.pick(&mut rng) else {
                    continue;
                };
                let step = STEPS[rng.below(STEPS.len())];
                let r = store
                    .update_instance(id, Box::new(cancel(step, now)))
                    .await
                    .map(|t| (t, Vec::new()));
                sh.updated("cancel", id, r, &owner, rejected_or_gone).await;
            }
            // Finish an instance (terminal).
            84..=87 => {
                let Some(id) = sh.pick(&mut rng) else {
                    continue;
                };
                let r = store
                    .update_instance(id, Box::new(finish(now)))
                    .await
                    .map(|t| (t, Vec::new()));
                sh.updated("finish", id, r, &owner, rejected_or_gone).await;
            }
            // Park in the DLQ, or resume from it.
            88..=96 => {
                let Some(id) = sh.pick(&mut rng) else {
                    continue;
                };
                let f: floxy_core::store::TransitionFn = if rng.chance(50) {
                    Box::new(park(now))
                } else {
                    Box::new(resume(now, TTLS[rng.below(TTLS.len())]))
                };
                let r = store.update_instance(id, f).await.map(|t| (t, Vec::new()));
                sh.updated("park/resume", id, r, &owner, rejected_or_gone)
                    .await;
            }
            // Retention, and right behind it transitions of instances it removes (prepared
            // while it commits: they must see them gone).
            _ => {
                let cutoff = Timestamp(now.0 - 30);
                let (before, victims) = {
                    let mut m = sh.model.lock().unwrap();
                    let victims: Vec<InstanceId> = m
                        .terminal_log
                        .iter()
                        .rev()
                        .filter(|(id, at)| *at < cutoff && !m.must_be_gone.contains(id))
                        .map(|(id, _)| *id)
                        .take(3)
                        .collect();
                    m.touched.extend(victims.iter().copied());
                    (m.terminal_log.len(), victims)
                };
                let touching = futures::future::join_all(victims.iter().map(|&id| async move {
                    tokio::task::yield_now().await;
                    let r = store.update_instance(id, Box::new(touch(now))).await;
                    (id, r)
                }));
                let (r, touched) = tokio::join!(store.cleanup(cutoff), touching);
                for (id, t) in touched {
                    let t = t.map(|t| (t, Vec::new()));
                    sh.updated("touch", id, t, &owner, rejected_or_gone).await;
                }
                let mut m = sh.model.lock().unwrap();
                match r {
                    Ok(removed) => {
                        m.acked += 1;
                        m.cleaned += removed;
                        let gone: Vec<InstanceId> = m.terminal_log[..before]
                            .iter()
                            .filter(|(_, at)| *at < cutoff)
                            .map(|(id, _)| *id)
                            .collect();
                        m.must_be_gone.extend(gone);
                    }
                    Err(e) if is_injected(&e) => m.injected += 1,
                    Err(e) => m.unexpected.push(format!("cleanup: {e:?}")),
                }
            }
        }
        if rng.chance(10) {
            tokio::task::yield_now().await;
        }
    }
}

/// What the store shows of one instance.
#[derive(Debug, PartialEq)]
struct Obs {
    /// `load_instance`, steps sorted by name.
    snapshot: Option<InstanceSnapshot>,
    /// `list_queue`, sorted by key.
    queue: Vec<QueueItem>,
    /// `list_events`.
    events: Vec<floxy_core::model::Event>,
}

/// Everything the store shows, store-wide and per instance.
#[derive(Debug, PartialEq)]
struct View {
    instances: BTreeMap<InstanceId, Obs>,
    listed: Vec<floxy_core::model::InstanceRecord>,
    dlq: Vec<floxy_core::model::DlqRecord>,
    stats: floxy_core::store::StoreStats,
    next_due: Vec<Option<Timestamp>>,
}

impl View {
    fn items(&self) -> impl Iterator<Item = &QueueItem> {
        self.instances.values().flat_map(|o| o.queue.iter())
    }
}

async fn view(store: &RedbStore, ids: &[InstanceId]) -> View {
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_instances(&InstanceQuery {
                after,
                ..InstanceQuery::default()
            })
            .await
            .unwrap();
        listed.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut dlq = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_dlq(&DlqQuery {
                after,
                ..DlqQuery::default()
            })
            .await
            .unwrap();
        dlq.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut instances = BTreeMap::new();
    let mut all: Vec<InstanceId> = ids.to_vec();
    all.extend(listed.iter().map(|r| r.id));
    all.sort();
    all.dedup();
    for id in all {
        let mut snapshot = store.load_instance(id).await.unwrap();
        if let Some(s) = &mut snapshot {
            s.steps.sort_by(|a, b| a.step.cmp(&b.step));
        }
        let mut queue = store.list_queue(id).await.unwrap();
        queue.sort_by(|a, b| a.key.cmp(&b.key));
        let events = store.list_events(id, None, 0).await.unwrap();
        instances.insert(
            id,
            Obs {
                snapshot,
                queue,
                events,
            },
        );
    }
    let mut next_due = Vec::new();
    for hs in [vec!["h1"], vec!["h2"], vec!["h1", "h2"]] {
        let hs: Vec<Arc<str>> = hs.into_iter().map(Arc::from).collect();
        next_due.push(store.next_due(&hs).await.unwrap());
    }
    View {
        instances,
        listed,
        dlq,
        stats: store.stats().await.unwrap(),
        next_due,
    }
}

fn due(i: &QueueItem) -> Timestamp {
    match &i.lease {
        Some(l) => i.run_at.max(l.expires_at),
        None => i.run_at,
    }
}

/// The in-memory numbers agree with what is stored.
fn check_published(v: &View, what: &str) {
    let items: Vec<&QueueItem> = v.items().collect();
    let leased = items.iter().filter(|i| i.lease.is_some()).count() as u64;
    assert_eq!(
        (v.stats.queue_ready, v.stats.queue_leased),
        (items.len() as u64 - leased, leased),
        "{what}: stats count the queue the step rows hold"
    );
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for r in &v.listed {
        *by_status.entry(r.status.as_str().to_owned()).or_default() += 1;
    }
    let mut stats_by_status: BTreeMap<String, u64> = BTreeMap::new();
    for (s, n) in &v.stats.instances_by_status {
        if *n > 0 {
            stats_by_status.insert(s.clone(), *n);
        }
    }
    assert_eq!(
        stats_by_status, by_status,
        "{what}: instances per status as stored"
    );
    assert_eq!(v.stats.dlq, v.dlq.len() as u64, "{what}: DLQ count");
    for (n, hs) in [vec!["h1"], vec!["h2"], vec!["h1", "h2"]]
        .iter()
        .enumerate()
    {
        let expected = items
            .iter()
            .filter(|i| hs.contains(&&*i.handler))
            .map(|i| due(i))
            .min();
        assert_eq!(v.next_due[n], expected, "{what}: next_due of {hs:?}");
    }
}

/// Claims everything claimable at `now` and checks it against the stored queue of `v`.
/// `issued`: the largest token handed out before; returns the number of items claimed and
/// the largest token handed out now.
async fn claim_all(
    store: &RedbStore,
    v: &View,
    now: Timestamp,
    issued: FencingToken,
    owner: &str,
    what: &str,
) -> (usize, FencingToken) {
    let max_token = v
        .items()
        .filter_map(|i| i.lease.as_ref().map(|l| l.token))
        .max()
        .unwrap_or(FencingToken(0))
        .max(issued);
    let mut expected: Vec<&QueueItem> = v.items().filter(|i| due(i) <= now).collect();
    expected.sort_by(|a, b| (a.order_key, &a.key).cmp(&(b.order_key, &b.key)));
    expected.truncate(floxy_core::store::MAX_CLAIM_BATCH);
    let got = store
        .claim(&ClaimRequest {
            owner: Arc::from(owner),
            handlers: HANDLERS.iter().map(|h| Arc::from(*h)).collect(),
            limit: floxy_core::store::MAX_CLAIM_BATCH,
            now,
        })
        .await
        .unwrap();
    let got_keys: Vec<&QueueKey> = got.iter().map(|c| &c.item.key).collect();
    let expected_keys: Vec<&QueueKey> = expected.iter().map(|i| &i.key).collect();
    assert_eq!(
        got_keys, expected_keys,
        "{what}: a claim at {now:?} takes exactly the claimable items of the stored queue, in claim order"
    );
    let mut seen = HashSet::new();
    for (c, before) in got.iter().zip(&expected) {
        let l = c.item.lease.as_ref().expect("claimed items are leased");
        assert!(l.token > max_token, "{what}: token {:?} not fresh", l.token);
        assert!(seen.insert(l.token), "{what}: token {:?} twice", l.token);
        assert_eq!(c.item.attempt, before.attempt + 1, "{what}: attempt");
        assert_eq!(
            c.previous_lease_expired,
            before.lease.is_some(),
            "{what}: previous_lease_expired of {:?}",
            c.item.key
        );
    }
    let top = got
        .iter()
        .filter_map(|c| c.item.lease.as_ref().map(|l| l.token))
        .max()
        .unwrap_or(max_token);
    (got.len(), top)
}

struct Variant {
    name: &'static str,
    cache: Option<usize>,
    durability: Durability,
    /// fail-rs action of the commit failpoint while the workload runs.
    failpoint: Option<&'static str>,
    seed: u64,
}

async fn run(variant: Variant) {
    let db = common::TempDb::new();
    let mut options = RedbOptions::default().durability(variant.durability);
    if let Some(n) = variant.cache {
        options = options.snapshot_cache_instances(n);
    }
    let store = RedbStore::open(&db.path, options.clone()).expect("open");
    let sh = Arc::new(Shared {
        store: store.clone(),
        model: Mutex::new(Model::default()),
        clock: AtomicI64::new(0),
    });

    #[cfg(feature = "failpoints")]
    if let Some(action) = variant.failpoint {
        fail::cfg("floxy-redb::commit", action).unwrap();
    }
    #[cfg(not(feature = "failpoints"))]
    assert!(variant.failpoint.is_none(), "failpoints need the feature");

    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let sh = sh.clone();
            let seed = variant
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(n as u64 * 7919);
            tokio::spawn(worker(sh, n, seed))
        })
        .collect();
    for t in tasks {
        t.await.expect("worker task");
    }

    #[cfg(feature = "failpoints")]
    if variant.failpoint.is_some() {
        fail::remove("floxy-redb::commit");
    }

    let what = variant.name;
    let stats = store.writer_stats();
    let model = std::mem::take(&mut *sh.model.lock().unwrap());
    eprintln!(
        "{what}: {} acknowledged, {} injected failures, {} instances, {} tokens, {} eager, {} reclaimed, {} cleaned up; writer: {} batches, {} requests, largest {}",
        model.acked,
        model.injected,
        model.ids.len(),
        model.tokens.len(),
        model.eager,
        model.reclaimed,
        model.cleaned,
        stats.batches,
        stats.requests,
        stats.largest_batch
    );
    assert!(
        model.unexpected.is_empty(),
        "{what}: unexpected results: {:#?}",
        model.unexpected
    );
    assert!(
        model.duplicate_tokens.is_empty(),
        "{what}: fencing tokens handed out twice: {:?}",
        model.duplicate_tokens
    );
    // Group commit happened (requests shared commits).
    assert!(
        stats.requests > stats.batches,
        "{what}: the workload did not batch ({stats:?})"
    );
    assert!(model.ids.len() > 50, "{what}: too few creates");
    assert!(
        model.eager > 0 && model.reclaimed > 0 && model.cleaned > 0 && !model.existing.is_empty(),
        "{what}: the workload should lease eagerly, reclaim expired leases, clean up and find idempotency keys"
    );
    if variant.failpoint.is_some() {
        assert!(model.injected > 0, "{what}: no commit failed");
    }

    // ---- The view before close, against what was acknowledged. ----
    let mut ids = model.ids.clone();
    ids.extend(model.failed_creates.iter().copied());
    ids.extend(model.existing.iter().map(|(id, _)| *id));
    let before = view(&store, &ids).await;
    check_published(&before, &format!("{what}, before close"));
    let mut seqs = HashSet::new();
    for (id, obs) in &before.instances {
        let Some(a) = model.insts.get(id).filter(|a| a.created) else {
            assert!(
                obs.snapshot.is_none(),
                "{what}: instance {id} exists but was never acknowledged as created"
            );
            continue;
        };
        let Some(rec) = obs.snapshot.as_ref().map(|s| &s.instance) else {
            assert!(
                a.terminal.is_some(),
                "{what}: acknowledged instance {id} is missing (never terminal, never cleaned up)"
            );
            continue;
        };
        assert!(
            !model.must_be_gone.contains(id) || model.touched.contains(id),
            "{what}: instance {id} survived a cleanup acknowledged after its terminal transition"
        );
        assert_eq!(
            rec.version,
            1 + a.updates,
            "{what}: version of {id} = 1 + acknowledged updates"
        );
        assert_eq!(
            obs.events.len() as u64,
            a.events,
            "{what}: events of {id}: exactly those of the acknowledged writes"
        );
        for e in &obs.events {
            assert!(seqs.insert(e.seq), "{what}: event sequence {} twice", e.seq);
        }
        for i in &obs.queue {
            if let Some(l) = &i.lease {
                let (k, owner) = model.tokens.get(&l.token).unwrap_or_else(|| {
                    panic!(
                        "{what}: lease {:?} of {:?} never acknowledged",
                        l.token, i.key
                    )
                });
                assert_eq!(
                    (k, owner),
                    (&i.key, &l.owner),
                    "{what}: lease token issued for this item and owner"
                );
                if model.last_lease.get(&i.key) != Some(&l.token) {
                    // Every acknowledged lease of this item, for the diagnosis.
                    let mut all: Vec<(FencingToken, Arc<str>)> = model
                        .tokens
                        .iter()
                        .filter(|(_, (k, _))| *k == i.key)
                        .map(|(t, (_, o))| (*t, o.clone()))
                        .collect();
                    all.sort();
                    panic!(
                        "{what}: the stored lease of {:?} is {:?} (owner {}, expires {:?}), its highest acknowledged token {:?}; all acknowledged leases of it: {all:?}; item: {i:?}; run: {:?}",
                        i.key,
                        l.token,
                        l.owner,
                        l.expires_at,
                        model.last_lease.get(&i.key),
                        obs.snapshot
                            .as_ref()
                            .and_then(|s| s.steps.iter().find(|r| r.step == i.key.step)),
                    );
                }
            }
        }
    }
    for id in &model.failed_creates {
        assert!(
            before
                .instances
                .get(id)
                .is_some_and(|o| o.snapshot.is_none()),
            "{what}: instance {id} exists though its create failed"
        );
    }
    // Idempotency keys: one instance per key, and the key finds it.
    let mut by_key: BTreeMap<&str, Vec<InstanceId>> = BTreeMap::new();
    for (id, obs) in &before.instances {
        if let Some(k) = obs
            .snapshot
            .as_ref()
            .and_then(|s| s.instance.idempotency_key.as_deref())
        {
            by_key.entry(k).or_default().push(*id);
        }
    }
    for k in &model.keys {
        let holders = by_key.get(k.as_str()).cloned().unwrap_or_default();
        assert!(
            holders.len() <= 1,
            "{what}: idempotency key {k} held by {holders:?}"
        );
        let found = store
            .find_by_idempotency_key(&floxy_core::conformance::fixtures::wf(), k)
            .await
            .unwrap();
        assert_eq!(
            found,
            holders.first().copied(),
            "{what}: find_by_idempotency_key({k})"
        );
    }
    for (other, k) in &model.existing {
        if let Some(s) = before
            .instances
            .get(other)
            .and_then(|o| o.snapshot.as_ref())
        {
            assert_eq!(
                s.instance.idempotency_key.as_deref(),
                Some(k.as_str()),
                "{what}: create with key {k} answered Existing({other})"
            );
        }
    }
    let ids: Vec<InstanceId> = before.instances.keys().copied().collect();

    // ---- The claim index agrees with the stored queue (a claim on the live store). ----
    // Late enough for the shortest leases to have expired.
    let t1 = Timestamp(T0.0 + sh.clock.load(Ordering::Relaxed) + 200);
    let issued = model
        .tokens
        .keys()
        .copied()
        .max()
        .unwrap_or(FencingToken(0));
    let (n1, issued) = claim_all(
        &store,
        &before,
        t1,
        issued,
        "final-live",
        &format!("{what}, live"),
    )
    .await;
    let live = view(&store, &ids).await;
    check_published(&live, &format!("{what}, after the live claim"));

    // ---- Close, reopen: the same view; a claim takes what it implies. ----
    store.close().await.expect("close");
    drop(sh);
    let store = RedbStore::open(&db.path, options).expect("reopen");
    let reopened = view(&store, &ids).await;
    assert!(
        live == reopened,
        "{what}: the view after reopen differs from the view before close: {}",
        first_difference(&live, &reopened)
    );
    let t2 = t1.add_ms(60_000);
    let (n2, _) = claim_all(
        &store,
        &reopened,
        t2,
        issued,
        "final-reopened",
        &format!("{what}, reopened"),
    )
    .await;
    assert!(n2 > 0, "{what}: final claims took {n1}, then {n2} items");
    let after = view(&store, &ids).await;
    check_published(&after, &format!("{what}, after the reopened claim"));
    store.close().await.expect("close");
}

fn first_difference(a: &View, b: &View) -> String {
    if a.stats != b.stats {
        return format!("stats {:?} vs {:?}", a.stats, b.stats);
    }
    if a.next_due != b.next_due {
        return format!("next_due {:?} vs {:?}", a.next_due, b.next_due);
    }
    for (id, oa) in &a.instances {
        match b.instances.get(id) {
            Some(ob) if ob == oa => {}
            Some(ob) => return format!("instance {id}:\n{oa:#?}\nvs\n{ob:#?}"),
            None => return format!("instance {id} missing"),
        }
    }
    if a.listed != b.listed {
        return "instance listing".to_owned();
    }
    "DLQ listing".to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one variant, alone in this process (a failpoint is process-wide), inside a fail-rs
/// scenario when it injects failures.
fn check(variant: Variant) {
    let _g = serial();
    #[cfg(feature = "failpoints")]
    let scenario = variant.failpoint.map(|_| fail::FailScenario::setup());
    runtime().block_on(run(variant));
    #[cfg(feature = "failpoints")]
    if let Some(s) = scenario {
        s.teardown();
    }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn concurrent_writes_default_cache() {
    check(Variant {
        name: "default cache",
        cache: None,
        durability: Durability::Immediate,
        failpoint: None,
        seed: 1,
    });
}

#[test]
fn concurrent_writes_small_cache_evicts() {
    check(Variant {
        name: "cache of 8",
        cache: Some(8),
        durability: Durability::Immediate,
        failpoint: None,
        seed: 2,
    });
}

#[test]
fn concurrent_writes_without_cache() {
    check(Variant {
        name: "no cache",
        cache: Some(0),
        durability: Durability::Immediate,
        failpoint: None,
        seed: 3,
    });
}

#[test]
fn concurrent_writes_relaxed_small_cache() {
    check(Variant {
        name: "relaxed, cache of 8",
        cache: Some(8),
        durability: Durability::Relaxed {
            flush_interval_ms: 5,
        },
        failpoint: None,
        seed: 4,
    });
}

#[cfg(feature = "failpoints")]
#[test]
fn concurrent_writes_with_failing_commits() {
    check(Variant {
        name: "failing commits, cache of 8",
        cache: Some(8),
        durability: Durability::Immediate,
        failpoint: Some("4%return"),
        seed: 5,
    });
}

#[cfg(feature = "failpoints")]
#[test]
fn concurrent_writes_with_failing_commits_without_cache() {
    check(Variant {
        name: "failing commits, no cache",
        cache: Some(0),
        durability: Durability::Immediate,
        failpoint: Some("4%return"),
        seed: 6,
    });
}

/// A request prepared on top of a batch whose commit then fails must not be answered from
/// the state that batch would have made: every request of the batch prepared on top of a
/// failed one gets the (retryable) commit error. Before the fix a *refusal* computed from
/// that phantom state (the transition function saw the failed write, a fencing check saw a
/// lease or an item that never existed) was delivered as is: the caller was told "instance
/// is completed" or "your lease is stale" about an instance that was running and a lease
/// that was current.
#[cfg(feature = "failpoints")]
#[test]
fn refusals_prepared_on_a_failed_commit_get_the_commit_error() {
    let _g = serial();
    let scenario = fail::FailScenario::setup();
    runtime().block_on(async {
        let db = common::TempDb::new();
        let store = common::open(&db.path, Durability::Immediate);
        let a = InstanceId(uuid::Uuid::now_v7());
        let t0 = T0;
        floxy_core::conformance::fixtures::create(&store, start(a, t0, &[("a", "h1")])).await;
        let claimed = store
            .claim(&floxy_core::conformance::fixtures::request(
                "w",
                &["h1"],
                1,
                t0.add_ms(1),
            ))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let lease = held(&claimed[0]);

        // The next commit (finishing `a`) fails, 300 ms after it started.
        let started = common::arm_committing();
        fail::cfg("floxy-redb::commit", "1*return(300)").unwrap();
        let finishing = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .update_instance(a, Box::new(finish(t0.add_ms(2))))
                    .await
            }
        });
        common::committing(&started).await;
        // Prepared while that commit is in flight, on top of it.
        let again = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .update_instance(a, Box::new(finish(t0.add_ms(3))))
                    .await
            }
        });
        let complete = tokio::spawn({
            let store = store.clone();
            let lease = lease.clone();
            async move {
                // A write fenced by the current lease (the store's own check).
                store
                    .update_instance(
                        lease.key.instance_id,
                        Box::new(move |s| {
                            let mut t = next(s, t0.add_ms(3));
                            t.lease_check = Some(LeaseCheck {
                                key: lease.key.clone(),
                                token: lease.token,
                            });
                            t.events
                                .push(event(EventKind::StepCompleted, Some(&lease.key.step)));
                            Ok(t)
                        }),
                    )
                    .await
            }
        });
        let first = finishing.await.unwrap();
        let again = again.await.unwrap();
        let complete = complete.await.unwrap();
        assert!(
            matches!(&first, Err(e) if is_injected(e)),
            "the failed commit: {first:?}"
        );
        // Nothing of it happened: `a` runs, the lease is current.
        let rec = store.get_instance(a).await.unwrap().unwrap();
        assert_eq!(rec.status, InstanceStatus::Running);
        assert_eq!(
            store.list_queue(a).await.unwrap()[0]
                .lease
                .as_ref()
                .map(|l| l.token),
            Some(lease.token)
        );
        let ok_or_injected =
            |r: &Result<Transition, StoreError>| r.is_ok() || matches!(r, Err(e) if is_injected(e));
        assert!(
            ok_or_injected(&again) && ok_or_injected(&complete),
            "requests prepared on the failed commit were refused from its phantom state:\n  \
             finish again: {again:?}\n  write fenced by the current lease: {complete:?}\n  \
             (the instance is {:?} and the lease {:?} is current)",
            rec.status,
            lease.token
        );
        store.close().await.unwrap();
    });
    scenario.teardown();
}
