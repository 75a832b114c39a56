//! Workloads: Floxy's four stress-test workflows and random workflow graphs, with handlers
//! that write their side effects to the [`Ledger`] and compensations that reverse them.
//!
//! | workload | shape |
//! |---|---|
//! | [`Builtin::Simple`] `order-simple` | validate → payment (refund) → inventory (release) → shipping (cancel) → notify |
//! | [`Builtin::Complex`] `order-complex` | validate → payment (refund) → **savepoint** → inventory (release) → **savepoint** → shipping (cancel) → notify |
//! | [`Builtin::Parallel`] `order-parallel` | validate → fork(payment (refund) ‖ inventory (release)) → join(all) → shipping (cancel) → notify |
//! | [`Builtin::Nested`] `order-nested` | validate → payment (refund) → **savepoint** → fork(inventory (release) → fork(pack (unpack) ‖ label (void)) → join ‖ fraud check → loyalty (revoke)) → join → shipping (cancel) → notify |
//! | [`Builtin::Random`] `random-<seed>-<k>` | seeded random chains of tasks, savepoints, conditions and (nested) forks with `all` and `any` joins |
//!
//! Every instance input is `{"order": {"n", "amount", "v", "fail": [steps]}, "v": ..}`: the
//! driver draws, from the seed, which steps fail with a *business* failure (a non-retryable
//! error before any effect) at the configured rate. Handlers pass `order` on, so every step
//! (also after a join) knows it.
//!
//! A step with an *effect* applies `amount` under its step run in the ledger before it
//! returns; its compensation reverses it. Steps without a compensation have no effect, so the
//! ledger of a finished instance must balance: completed steps applied exactly once, rolled
//! back ones netted to zero.

use crate::ledger::Ledger;
use crate::rng::{ChaosRng, between, chance, rng_for};
use floxy::{Builder, HandlerError, JoinStrategy, Payload, StepContext, WorkflowDefinition};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Handler of steps with a ledger effect.
pub const EFFECT_HANDLER: &str = "chaos.effect";
/// Compensation reversing [`EFFECT_HANDLER`]'s effect.
pub const UNDO_HANDLER: &str = "chaos.undo";
/// Handler of steps without effect.
pub const PURE_HANDLER: &str = "chaos.pure";

/// Every handler name the built-in workloads use.
pub const HANDLERS: [&str; 3] = [EFFECT_HANDLER, UNDO_HANDLER, PURE_HANDLER];

/// The built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Linear order saga with compensations.
    Simple,
    /// The same with two savepoints.
    Complex,
    /// Fork/join of payment and inventory.
    Parallel,
    /// A nested fork after a savepoint.
    Nested,
    /// Seeded random graphs.
    Random,
}

impl Builtin {
    /// Every built-in workload.
    pub const ALL: [Builtin; 5] = [
        Self::Simple,
        Self::Complex,
        Self::Parallel,
        Self::Nested,
        Self::Random,
    ];

    /// The workload's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Complex => "complex",
            Self::Parallel => "parallel",
            Self::Nested => "nested",
            Self::Random => "random",
        }
    }

    /// Parses [`Builtin::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// Options shared by the built-in definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadOptions {
    /// Version of the built-in definitions (bump it to reuse a durable store whose
    /// definitions were registered with other options).
    pub version: u32,
    /// Lease TTL of claimed work.
    pub lease_ttl_ms: u64,
    /// Timeout of one handler call (forward and compensation).
    pub step_timeout_ms: u64,
    /// Retries of forward steps.
    pub max_retries: u32,
    /// Retries of compensations.
    pub compensation_max_retries: u32,
    /// Base retry delay.
    pub retry_delay_ms: u64,
    /// Number of random graphs (for [`Builtin::Random`]).
    pub random_graphs: usize,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            version: 1,
            lease_ttl_ms: 3_000,
            step_timeout_ms: 1_000,
            max_retries: 3,
            compensation_max_retries: 6,
            retry_delay_ms: 20,
            random_graphs: 4,
        }
    }
}

/// One workflow of a workload, with the steps that have a ledger effect and those that can
/// be made to fail.
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    /// The definition.
    pub definition: WorkflowDefinition,
    /// Which workload it belongs to.
    pub workload: Builtin,
    /// Task steps (candidates for business failures).
    pub tasks: Vec<String>,
    /// Steps whose handler applies a ledger effect.
    pub effect_steps: BTreeSet<String>,
}

struct Chain {
    b: Builder,
    tasks: Vec<String>,
    effects: BTreeSet<String>,
    opts: WorkloadOptions,
}

impl Chain {
    fn task(mut self, name: &str, effect: bool) -> Self {
        let o = &self.opts;
        let handler = if effect { EFFECT_HANDLER } else { PURE_HANDLER };
        let mut b = self
            .b
            .step(name, handler)
            .max_retries(o.max_retries)
            .retry_delay_ms(o.retry_delay_ms)
            .retry_max_delay_ms(o.retry_delay_ms.saturating_mul(20))
            .timeout_ms(o.step_timeout_ms);
        if effect {
            b = b
                .on_failure(&format!("undo-{name}"), UNDO_HANDLER)
                .compensation_max_retries(o.compensation_max_retries)
                .compensation_retry_delay_ms(o.retry_delay_ms)
                .compensation_timeout_ms(o.step_timeout_ms);
            self.effects.insert(name.to_owned());
        }
        self.tasks.push(name.to_owned());
        self.b = b;
        self
    }

    fn map(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        self.b = f(self.b);
        self
    }
}

fn chain(b: Builder, opts: &WorkloadOptions) -> Chain {
    Chain {
        b,
        tasks: Vec::new(),
        effects: BTreeSet::new(),
        opts: opts.clone(),
    }
}

fn top(name: &str, opts: &WorkloadOptions) -> Builder {
    Builder::new(name, opts.version)
        .lease_ttl_ms(opts.lease_ttl_ms)
        .default_max_retries(opts.max_retries)
}

/// Builds a branch chain inside a fork, carrying task/effect bookkeeping out through `acc`.
fn branch(
    b: Builder,
    opts: &WorkloadOptions,
    acc: &mut (Vec<String>, BTreeSet<String>),
    f: impl FnOnce(Chain) -> Chain,
) -> Builder {
    let c = f(chain(b, opts));
    acc.0.extend(c.tasks);
    acc.1.extend(c.effects);
    c.b
}

fn finish(c: Chain, workload: Builtin) -> Result<WorkflowSpec, String> {
    let definition = c.b.build().map_err(|e| e.to_string())?;
    Ok(WorkflowSpec {
        definition,
        workload,
        tasks: c.tasks,
        effect_steps: c.effects,
    })
}

/// The definitions of a built-in workload. `seed` only matters for [`Builtin::Random`].
///
/// # Errors
/// A definition failed to build (a bug in this crate; the message says why).
pub fn definitions(
    w: Builtin,
    opts: &WorkloadOptions,
    seed: u64,
) -> Result<Vec<WorkflowSpec>, String> {
    let spec = match w {
        Builtin::Simple => finish(
            chain(top("order-simple", opts), opts)
                .task("validate-order", false)
                .task("process-payment", true)
                .task("reserve-inventory", true)
                .task("ship-order", true)
                .task("send-notification", false),
            w,
        )?,
        Builtin::Complex => finish(
            chain(top("order-complex", opts), opts)
                .task("validate-order", false)
                .task("process-payment", true)
                .map(|b| b.save_point("payment-saved"))
                .task("reserve-inventory", true)
                .map(|b| b.save_point("inventory-saved"))
                .task("ship-order", true)
                .task("send-notification", false),
            w,
        )?,
        Builtin::Parallel => {
            let c = chain(top("order-parallel", opts), opts).task("validate-order", false);
            let mut acc = (Vec::new(), BTreeSet::new());
            let Chain {
                b,
                mut tasks,
                mut effects,
                opts: o,
            } = c;
            let b = b
                .fork("parallel-start", |f| {
                    f.branch(|x| branch(x, opts, &mut acc, |c| c.task("process-payment", true)))
                        .branch(|x| {
                            branch(x, opts, &mut acc, |c| c.task("reserve-inventory", true))
                        })
                })
                .join("parallel-join", JoinStrategy::All);
            tasks.extend(acc.0);
            effects.extend(acc.1);
            let c = Chain {
                b,
                tasks,
                effects,
                opts: o,
            }
            .task("ship-order", true)
            .task("send-notification", false);
            finish(c, w)?
        }
        Builtin::Nested => {
            let c = chain(top("order-nested", opts), opts)
                .task("validate-order", false)
                .task("process-payment", true)
                .map(|b| b.save_point("payment-saved"));
            let mut acc = (Vec::new(), BTreeSet::new());
            let Chain {
                b,
                mut tasks,
                mut effects,
                opts: o,
            } = c;
            let b = b
                .fork("fulfil", |f| {
                    f.branch(|x| {
                        branch(x, opts, &mut acc, |c| {
                            let c = c.task("reserve-inventory", true);
                            let mut inner = (Vec::new(), BTreeSet::new());
                            let Chain {
                                b,
                                mut tasks,
                                mut effects,
                                opts: o,
                            } = c;
                            let b = b
                                .fork("prepare", |f| {
                                    f.branch(|x| {
                                        branch(x, opts, &mut inner, |c| c.task("pack-items", true))
                                    })
                                    .branch(|x| {
                                        branch(x, opts, &mut inner, |c| c.task("print-label", true))
                                    })
                                })
                                .join("prepared", JoinStrategy::All);
                            tasks.extend(inner.0);
                            effects.extend(inner.1);
                            Chain {
                                b,
                                tasks,
                                effects,
                                opts: o,
                            }
                        })
                    })
                    .branch(|x| {
                        branch(x, opts, &mut acc, |c| {
                            c.task("fraud-check", false).task("loyalty-points", true)
                        })
                    })
                })
                .join("fulfilled", JoinStrategy::All);
            tasks.extend(acc.0);
            effects.extend(acc.1);
            let c = Chain {
                b,
                tasks,
                effects,
                opts: o,
            }
            .task("ship-order", true)
            .task("send-notification", false);
            finish(c, w)?
        }
        Builtin::Random => {
            let mut v = Vec::with_capacity(opts.random_graphs);
            for k in 0..opts.random_graphs {
                let mut rng = rng_for(seed, "random-graph", &[&k.to_le_bytes()]);
                let name = format!("random-{seed:016x}-{k}");
                v.push(random_graph(&name, &mut rng, opts)?);
            }
            return Ok(v);
        }
    };
    Ok(vec![spec])
}

/// A random chain element.
#[derive(Debug, Clone)]
enum El {
    Task { effect: bool },
    SavePoint,
    Cond { k: i64, else_chain: Option<Vec<El>> },
    Fork { branches: Vec<Vec<El>>, any: bool },
}

fn gen_chain(rng: &mut ChaosRng, depth: u32, top: bool, budget: &mut u32) -> Vec<El> {
    let len = between(rng, 1, 4);
    let mut v = Vec::new();
    for _ in 0..len {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let roll = rng.random_range(0..10u32);
        let el = if depth > 0 && roll == 0 {
            let n = between(rng, 2, 3);
            let branches = (0..n)
                .map(|_| gen_chain(rng, depth - 1, false, budget))
                .collect();
            El::Fork {
                branches,
                any: chance(rng, 0.3),
            }
        } else if depth > 0 && roll == 1 {
            let else_chain = chance(rng, 0.5).then(|| gen_chain(rng, depth - 1, false, budget));
            El::Cond {
                k: rng.random_range(0..100),
                else_chain,
            }
        } else if top && roll == 2 {
            El::SavePoint
        } else {
            El::Task {
                effect: chance(rng, 0.7),
            }
        };
        v.push(el);
    }
    if v.is_empty() {
        v.push(El::Task { effect: true });
    }
    v
}

fn add_els(mut c: Chain, els: &[El], n: &mut usize) -> Chain {
    for e in els {
        *n += 1;
        let name = format!("s{n}");
        c = match e {
            El::Task { effect } => c.task(&name, *effect),
            El::SavePoint => c.map(|b| b.save_point(&name)),
            El::Cond { k, else_chain } => {
                let c = c.map(|b| b.condition(&name, &format!("{{{{ gt .v {k} }}}}")));
                match else_chain {
                    Some(els) => {
                        let Chain {
                            b,
                            mut tasks,
                            mut effects,
                            opts,
                        } = c;
                        let mut inner = (Vec::new(), BTreeSet::new());
                        let mut m = *n;
                        let b = b.otherwise(|x| {
                            let c = add_els(chain(x, &opts), els, &mut m);
                            inner.0.extend(c.tasks);
                            inner.1.extend(c.effects);
                            c.b
                        });
                        *n = m;
                        tasks.extend(inner.0);
                        effects.extend(inner.1);
                        Chain {
                            b,
                            tasks,
                            effects,
                            opts,
                        }
                    }
                    None => c,
                }
            }
            El::Fork { branches, any } => {
                let Chain {
                    b,
                    mut tasks,
                    mut effects,
                    opts,
                } = c;
                let mut inner = (Vec::new(), BTreeSet::new());
                let mut m = *n;
                let b = b.fork(&name, |mut f| {
                    for br in branches {
                        f = f.branch(|x| {
                            let c = add_els(chain(x, &opts), br, &mut m);
                            inner.0.extend(c.tasks);
                            inner.1.extend(c.effects);
                            c.b
                        });
                    }
                    f
                });
                *n = m + 1;
                let strategy = if *any {
                    JoinStrategy::Any
                } else {
                    JoinStrategy::All
                };
                let b = b.join(&format!("j{n}"), strategy);
                tasks.extend(inner.0);
                effects.extend(inner.1);
                Chain {
                    b,
                    tasks,
                    effects,
                    opts,
                }
            }
        };
    }
    c
}

fn random_graph(
    name: &str,
    rng: &mut ChaosRng,
    opts: &WorkloadOptions,
) -> Result<WorkflowSpec, String> {
    let mut budget = 24;
    let els = gen_chain(rng, 2, true, &mut budget);
    let mut n = 0;
    let c = add_els(chain(top(name, opts), opts), &els, &mut n);
    finish(c, Builtin::Random)
}

/// Draws the input of instance number `ordinal` of `spec`: the amount, the condition value
/// `v`, and which task steps fail with a business failure (each with probability
/// `business_failure_rate`).
#[must_use]
pub fn input_for(
    spec: &WorkflowSpec,
    seed: u64,
    ordinal: u64,
    business_failure_rate: f64,
) -> Value {
    let mut rng = rng_for(seed, "input", &[&ordinal.to_le_bytes()]);
    let amount = between(&mut rng, 1, 1_000);
    let v = between(&mut rng, 0, 100);
    let fail: Vec<&str> = spec
        .tasks
        .iter()
        .filter(|_| chance(&mut rng, business_failure_rate))
        .map(String::as_str)
        .collect();
    json!({
        "order": { "n": ordinal, "amount": amount, "v": v, "fail": fail },
        "v": v,
    })
}

/// The `order` object of a step input (also found inside a join's `outputs`).
#[must_use]
pub fn order_of(input: &Value) -> Option<&Value> {
    if let Some(o) = input.get("order") {
        return Some(o);
    }
    input
        .get("outputs")?
        .as_object()?
        .values()
        .find_map(order_of)
}

fn output(order: &Value, step: &str) -> Payload {
    let v = order.get("v").cloned().unwrap_or(Value::Null);
    Payload::new(json!({ "order": order, "v": v, "by": step }))
}

fn fails(order: &Value, step: &str) -> bool {
    order
        .get("fail")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(step)))
}

/// The built-in handlers, writing to `ledger`. Register them under [`HANDLERS`] (the
/// runner does, wrapping each with the fault injector and the call recorder).
#[derive(Debug, Clone)]
pub struct LedgerHandlers {
    ledger: Arc<Ledger>,
}

impl LedgerHandlers {
    /// Handlers writing to `ledger`.
    #[must_use]
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }

    /// The handler registered under `name` (one of [`HANDLERS`]).
    #[must_use]
    pub fn handler(&self, name: &str) -> Option<Arc<dyn floxy::Handler>> {
        let kind = match name {
            EFFECT_HANDLER => Kind::Effect,
            UNDO_HANDLER => Kind::Undo,
            PURE_HANDLER => Kind::Pure,
            _ => return None,
        };
        Some(Arc::new(BuiltinHandler {
            ledger: Arc::clone(&self.ledger),
            kind,
        }))
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Effect,
    Undo,
    Pure,
}

struct BuiltinHandler {
    ledger: Arc<Ledger>,
    kind: Kind,
}

#[floxy::async_trait]
impl floxy::Handler for BuiltinHandler {
    async fn execute(&self, ctx: StepContext, input: Payload) -> Result<Payload, HandlerError> {
        let Some(order) = order_of(input.value()).cloned() else {
            return Err(HandlerError::fatal("chaos: step input carries no order"));
        };
        match self.kind {
            Kind::Undo => {
                self.ledger.reverse(ctx.instance_id(), ctx.step());
                Ok(input)
            }
            Kind::Effect | Kind::Pure => {
                if fails(&order, ctx.step()) {
                    return Err(HandlerError::fatal(format!(
                        "business failure of {} (planned)",
                        ctx.step()
                    )));
                }
                if matches!(self.kind, Kind::Effect) {
                    let amount = order.get("amount").and_then(Value::as_i64).unwrap_or(1);
                    self.ledger.apply(ctx.instance_id(), ctx.step(), amount);
                }
                Ok(output(&order, ctx.step()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_build() {
        let o = WorkloadOptions::default();
        for w in Builtin::ALL {
            let specs = definitions(w, &o, 42).unwrap_or_default();
            assert!(!specs.is_empty(), "{w:?}");
            for s in &specs {
                assert!(!s.tasks.is_empty());
                for e in &s.effect_steps {
                    assert!(s.tasks.contains(e));
                }
            }
        }
        let nested = definitions(Builtin::Nested, &o, 0).unwrap_or_default();
        assert_eq!(nested[0].effect_steps.len(), 6);
    }

    #[test]
    fn random_graphs_are_seeded() {
        let o = WorkloadOptions::default();
        for seed in 0..200 {
            let a = definitions(Builtin::Random, &o, seed).unwrap_or_default();
            let b = definitions(Builtin::Random, &o, seed).unwrap_or_default();
            assert_eq!(a.len(), o.random_graphs, "seed {seed}");
            assert_eq!(
                a.iter().map(|s| s.definition.clone()).collect::<Vec<_>>(),
                b.iter().map(|s| s.definition.clone()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn order_found_after_join() {
        let v = json!({"outputs": {"a": {"order": {"n": 1}}, "b": {"order": {"n": 1}}}});
        assert_eq!(order_of(&v), Some(&json!({"n": 1})));
    }
}
