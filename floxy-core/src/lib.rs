//! The pure core of floxy, a durable saga workflow engine.
//!
//! This crate decides everything a workflow engine decides — which step runs next, when a
//! failed attempt is retried, what is compensated and in which order, when a join fires,
//! what cancel, abort, DLQ and requeue do — and does nothing else. It performs no IO, reads
//! no clock and draws no random numbers: the time is an argument of every function that
//! needs it, instance ids are chosen by the caller, and retry jitter is derived from the
//! instance id, the step and the attempt. It has no async runtime and no database
//! dependency (`scripts/check-core-deps.sh` checks both).
//!
//! The result is a decision as data: a [`Transition`](model::Transition), every write of
//! one atomic commit for one instance. A [`Store`](store::Store) only checks and applies
//! transitions, so every backend (the bundled ones, or yours) makes the same
//! decisions for the same inputs, and the behaviour can be tested without any of them.
//!
//! Most users want the `floxy` crate, the async runtime built on this one. This crate is for
//! writing a store, a runtime of your own, or tests and simulations that drive the engine
//! step by step.
//!
//! # The state machine
//!
//! [`machine`] has two entry points, both `(…, now) → Result<Transition, TransitionError>`:
//!
//! * [`machine::start`]`(wf, id, input, idempotency_key, now)` computes the transition that
//!   creates an instance (applied with [`Store::create_instance`](store::Store::create_instance)).
//!   Structural steps at the start are evaluated at once.
//! * [`machine::apply`]`(wf, snapshot, input, now)` computes what an
//!   [`Input`](machine::Input) does to the instance in an
//!   [`InstanceSnapshot`](model::InstanceSnapshot): a handler's result
//!   ([`Input::WorkDone`](machine::Input::WorkDone)), a lost attempt
//!   ([`Input::LeaseExpired`](machine::Input::LeaseExpired)), a due timer, a cancel, an abort,
//!   a human decision or a requeue from the DLQ. It runs everything the input sets in motion
//!   to a fixed point: structural steps (save points, conditions, forks, joins) reached on the
//!   way are evaluated inside the same transition.
//!
//! Both take a [`CompiledWorkflow`](graph::CompiledWorkflow), a validated definition (see
//! [`builder::Builder`]).
//!
//! # The drive contract
//!
//! A runtime (the `floxy` crate is one) turns the machine into a running engine. To keep the
//! guarantees (at-least-once steps, compensation in reverse completion order, no lost or
//! duplicated transitions), it must:
//!
//! 1. **Claim** work with [`Store::claim`](store::Store::claim). Each claimed item carries a
//!    lease with an expiry and a [fencing token](model::FencingToken) greater than every
//!    token issued before; its attempt number already counts the claim.
//! 2. **Count expired leases as attempts.** A claimed item whose previous lease expired
//!    ([`ClaimedItem::previous_lease_expired`](store::ClaimedItem::previous_lease_expired):
//!    a worker crashed or hung) is reported with
//!    [`Input::LeaseExpired`](machine::Input::LeaseExpired); the handler is not run for it.
//!    This is how a handler that kills its worker every time ends in a final failure instead
//!    of a loop.
//! 3. **Run handlers outside the store transaction**, with no lock held, and
//!    **heartbeat** the leases while they run ([`Store::heartbeat`](store::Store::heartbeat),
//!    well within the lease TTL). A lease reported lost means another worker owns the item:
//!    stop and drop the result. A cancel request reported by a heartbeat asks the handler to
//!    stop.
//! 4. **Feed results back as inputs**: [`Input::WorkDone`](machine::Input::WorkDone) with the
//!    item's key, the claim's token and attempt, and the
//!    [`WorkOutcome`](machine::WorkOutcome); timer items as
//!    [`Input::TimerFired`](machine::Input::TimerFired); operator commands as their inputs.
//! 5. **Commit atomically** through
//!    [`Store::update_instance`](store::Store::update_instance)`(id, f)` with
//!    `f = |snapshot| machine::apply(wf, snapshot, &input, now)`: the store calls `f` on a
//!    snapshot read under the instance's exclusive lock, checks the result (version, fencing
//!    token, step-status compare-and-set: [`checks`]) and applies all of it or nothing. A
//!    [`StoreError::StaleLease`](store::StoreError::StaleLease) means the result came too
//!    late: drop it. A runtime may commit with
//!    [`Store::update_instance_eager`](store::Store::update_instance_eager) instead, to be
//!    leased the next step of the chain in the same commit ([`eager`]).
//! 6. **Pass time in.** `now` comes from the runtime's clock, never from the core; use
//!    [`Store::next_due`](store::Store::next_due) to know when to claim again.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | ids and [`Timestamp`](model::Timestamp), statuses, definitions, records (instances, step runs, queue items, events, DLQ records), [`Transition`](model::Transition) |
//! | [`builder`] | the builder DSL that produces a [`WorkflowDefinition`](model::WorkflowDefinition) |
//! | [`validate`] | definition errors and bounds |
//! | [`graph`] | [`CompiledWorkflow`](graph::CompiledWorkflow): a validated definition with successors, branches, savepoint scopes and joins computed once |
//! | [`expr`] | the condition language, Floxy's Go-template subset (`{{ gt .amount 100 }}`) |
//! | [`machine`] | the state machine: [`machine::start`], [`machine::apply`], [`Input`](machine::Input), retry delays |
//! | [`store`] | the [`Store`](store::Store) trait and its contract |
//! | [`checks`] | the checks and claim side effects every store applies the same way |
//! | [`eager`] | eager claims: leasing the next step in the commit that queues it |
//! | [`failpoints`] | names of the crash points fault-injection tests arm |
//! | `conformance` | (feature `conformance`) the store conformance suite every backend runs |
//!
//! # Driving the machine by hand
//!
//! A two-step saga whose second step fails for good, driven without a runtime. The "store"
//! is a few lines: it keeps one snapshot and its queue, checks each transition with
//! [`checks`] and applies it. The first claim of `reserve` is lost (the worker "crashes"),
//! so its lease expires and counts as an attempt; the retry succeeds, `charge` fails
//! without retry, and `reserve` is compensated.
//!
//! ```
//! use floxy_core::builder::Builder;
//! use floxy_core::checks;
//! use floxy_core::graph::CompiledWorkflow;
//! use floxy_core::machine::{self, Input, WorkOutcome};
//! use floxy_core::model::{
//!     FencingToken, InstanceId, InstanceSnapshot, InstanceStatus, Lease, Payload, QueueItem,
//!     QueueOp, Timestamp, Transition,
//! };
//! use floxy_core::store::StoreError;
//!
//! /// One instance, its queue and a token counter: everything a store keeps, minus events
//! /// and DLQ records.
//! #[derive(Default)]
//! struct HandStore {
//!     snap: Option<InstanceSnapshot>,
//!     queue: Vec<QueueItem>,
//!     tokens: u64,
//! }
//!
//! impl HandStore {
//!     /// Checks a transition as every store does, then applies all of it.
//!     fn commit(&mut self, t: Transition) -> Result<(), StoreError> {
//!         checks::version(self.snap.as_ref(), &t)?;
//!         checks::fencing(&t, |key| {
//!             let item = self.queue.iter().find(|i| i.key == *key)?;
//!             item.lease.as_ref().map(|l| l.token)
//!         })?;
//!         checks::steps_and_ownership(self.snap.as_ref(), &t)?;
//!         let snap = self.snap.get_or_insert_with(|| InstanceSnapshot {
//!             instance: t.instance.clone(),
//!             steps: Vec::new(),
//!             dlq: Vec::new(),
//!         });
//!         snap.instance = t.instance;
//!         for w in t.steps {
//!             snap.steps.retain(|r| r.step != w.run.step);
//!             snap.steps.push(w.run);
//!         }
//!         for op in t.queue {
//!             self.queue.retain(|i| i.key != *op.key());
//!             if let QueueOp::Upsert(mut item) = op {
//!                 item.lease = None; // leases come only from claims
//!                 self.queue.push(item);
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     /// Leases the first claimable item; `true` if its previous lease had expired.
//!     fn claim(&mut self, now: Timestamp) -> Option<(QueueItem, Payload, bool)> {
//!         let item = self.queue.iter_mut().find(|i| {
//!             i.run_at <= now && i.lease.as_ref().is_none_or(|l| l.expires_at <= now)
//!         })?;
//!         let expired = item.lease.is_some();
//!         self.tokens += 1;
//!         item.attempt += 1;
//!         item.lease = Some(Lease {
//!             owner: "me".into(),
//!             token: FencingToken(self.tokens),
//!             expires_at: now.add_ms(item.lease_ttl_ms),
//!         });
//!         let run = self.snap.as_mut()?.steps.iter_mut().find(|r| r.step == item.key.step)?;
//!         if checks::claim_starts_run(item.key.kind, run.status) {
//!             checks::start_run(run, item.attempt, now);
//!         }
//!         Some((item.clone(), run.input.clone(), expired))
//!     }
//!
//!     /// When the next item becomes claimable.
//!     fn next_due(&self) -> Option<Timestamp> {
//!         let due = |i: &QueueItem| i.lease.as_ref().map_or(i.run_at, |l| l.expires_at);
//!         self.queue.iter().map(due).min()
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let def = Builder::new("order", 1)
//!     .step("reserve", "stock.reserve").on_failure("release", "stock.release")
//!     .then("charge", "payment.charge").max_retries(0)
//!     .build()?;
//! let wf = CompiledWorkflow::compile(def)?;
//!
//! let mut store = HandStore::default();
//! let mut now = Timestamp(1_700_000_000_000);
//! let input = Payload::from(serde_json::json!({ "amount": 42 }));
//! store.commit(machine::start(&wf, InstanceId::from_u128(1), input, None, now)?)?;
//!
//! let mut crashed = false;
//! let mut log = Vec::new();
//! loop {
//!     let Some((item, step_input, expired)) = store.claim(now) else {
//!         match store.next_due() {
//!             Some(due) => { now = due; continue; } // a runtime sleeps until then
//!             None => break,                         // nothing left to do
//!         }
//!     };
//!     let Some(lease) = item.lease.clone() else { break };
//!     log.push(format!("{} {}{}", item.key.kind.as_str(), item.key.step,
//!                      if expired { " (lease expired)" } else { "" }));
//!     let input = if expired {
//!         // The previous holder was lost: that attempt counts, the handler does not run.
//!         Input::LeaseExpired { key: item.key, token: lease.token, attempt: item.attempt }
//!     } else {
//!         if &*item.handler == "stock.reserve" && !crashed {
//!             crashed = true; // the worker dies: nothing is committed
//!             continue;
//!         }
//!         // The handler runs here, outside any store transaction.
//!         let outcome = match &*item.handler {
//!             "payment.charge" => {
//!                 WorkOutcome::Failed { error: "card declined".into(), retryable: false }
//!             }
//!             _ => WorkOutcome::Succeeded(step_input),
//!         };
//!         Input::WorkDone { key: item.key, token: lease.token, attempt: item.attempt, outcome }
//!     };
//!     now = now.add_ms(5);
//!     // What `Store::update_instance` does: run `apply` on the locked snapshot, check and
//!     // apply its transition.
//!     let snapshot = store.snap.as_ref().ok_or("no instance")?;
//!     let t = machine::apply(&wf, snapshot, &input, now)?;
//!     store.commit(t)?;
//! }
//!
//! assert_eq!(log, [
//!     "execute reserve",
//!     "execute reserve (lease expired)",
//!     "execute reserve",
//!     "execute charge",
//!     "compensate reserve",
//! ]);
//! let snap = store.snap.as_ref().ok_or("no instance")?;
//! assert_eq!(snap.instance.status, InstanceStatus::Failed);
//! assert_eq!(snap.instance.failed_step.as_deref(), Some("charge"));
//! # Ok(())
//! # }
//! ```

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
