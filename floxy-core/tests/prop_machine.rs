//! Property tests: random workflow graphs (nested forks, conditions, savepoints, human
//! steps) driven with random outcomes, interleavings, lease losses, cancels and aborts;
//! every SEMANTICS §13 invariant is checked at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::explicit_counter_loop,
    clippy::collapsible_if
)]

mod common;
use common::{H, payload};
use floxy_core::builder::Builder;
use floxy_core::machine::{Input, WorkOutcome};
use floxy_core::model::*;
use proptest::prelude::*;
use serde_json::json;

/// A random chain element.
#[derive(Debug, Clone)]
enum El {
    Task {
        comp: bool,
        retries: u32,
        no_idem: bool,
    },
    SavePoint,
    Cond {
        k: i64,
        else_chain: Option<Vec<El>>,
    },
    Fork {
        branches: Vec<Vec<El>>,
        any: bool,
    },
    Human,
}

fn chain(depth: u32, top: bool) -> BoxedStrategy<Vec<El>> {
    let task =
        (any::<bool>(), 0u32..3, prop::bool::weighted(0.1)).prop_map(|(comp, retries, no_idem)| {
            El::Task {
                comp,
                retries,
                no_idem,
            }
        });
    let leaf = prop_oneof![
        6 => task,
        1 => Just(El::Human),
    ];
    let el: BoxedStrategy<El> = if depth == 0 {
        leaf.boxed()
    } else {
        let sp = u32::from(top);
        prop_oneof![
            6 => leaf,
            sp => Just(El::SavePoint),
            1 => (0i64..10, prop::option::of(chain(depth - 1, false)))
                .prop_map(|(k, else_chain)| El::Cond { k, else_chain }),
            1 => (prop::collection::vec(chain(depth - 1, false), 2..4), any::<bool>())
                .prop_map(|(branches, any)| El::Fork { branches, any }),
        ]
        .boxed()
    };
    prop::collection::vec(el, 1..5).boxed()
}

fn build(els: &[El], dlq: bool) -> Option<WorkflowDefinition> {
    let mut n = 0;
    let b = add(Builder::new("rand", 1).dlq(dlq), els, &mut n);
    b.build().ok()
}

fn add(mut builder: Builder, els: &[El], n: &mut usize) -> Builder {
    for el in els {
        *n += 1;
        let name = format!("s{n}");
        builder = match el {
            El::Task {
                comp,
                retries,
                no_idem,
            } => {
                let mut step = builder
                    .step(&name, "h")
                    .max_retries(*retries)
                    .retry_delay_ms(5);
                if *comp {
                    step = step
                        .on_failure(&format!("u{n}"), "undo")
                        .compensation_max_retries(1);
                }
                if *no_idem {
                    step = step.no_idempotent();
                }
                step
            }
            El::SavePoint => builder.save_point(&name),
            El::Human => builder.wait_human(&name),
            El::Cond { k, else_chain } => {
                let cond = builder.condition(&name, &format!("{{{{ gt .v {k} }}}}"));
                match else_chain {
                    Some(chain) => {
                        let mut m = *n;
                        let cond = cond.otherwise(|other| add(other, chain, &mut m));
                        *n = m;
                        cond
                    }
                    None => cond,
                }
            }
            El::Fork { branches, any } => {
                let mut m = *n;
                let fork = builder.fork(&name, |mut f| {
                    for br in branches {
                        f = f.branch(|bb| add(bb, br, &mut m));
                    }
                    f
                });
                *n = m + 1;
                let strategy = if *any {
                    JoinStrategy::Any
                } else {
                    JoinStrategy::All
                };
                fork.join(&format!("j{n}"), strategy)
            }
        };
    }
    builder
}

/// One scheduling decision of the random driver.
#[derive(Debug, Clone, Copy)]
struct Dice {
    action: u8,
    outcome: u8,
    pick: u16,
}

fn dice() -> impl Strategy<Value = Dice> {
    (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(action, outcome, pick)| Dice {
        action,
        outcome,
        pick,
    })
}

struct InFlight {
    key: QueueKey,
    token: FencingToken,
    attempt: u32,
}

fn drive(h: &mut H, dice: &[Dice], fail_pct: u8) {
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut i = 0usize;
    let mut stop_faults = false;
    for _ in 0..5_000 {
        let d = if i < dice.len() {
            dice[i]
        } else {
            stop_faults = true;
            Dice {
                action: 0,
                outcome: 255,
                pick: 0,
            }
        };
        i += 1;
        // Settle any decision steps with a confirm (or, rarely, a reject).
        let waiting: Vec<String> = h
            .snap
            .steps
            .iter()
            .filter(|r| r.status == StepStatus::WaitingDecision)
            .map(|r| r.step.to_string())
            .collect();
        if let Some(w) = waiting.first() {
            if d.action % 7 == 0 || stop_faults {
                let decision = if !stop_faults && d.outcome < 20 {
                    Decision::Reject
                } else {
                    Decision::Confirm
                };
                let _ = h.try_feed(&Input::Decide {
                    step: w.as_str().into(),
                    decided_by: "p".into(),
                    decision,
                    comment: None,
                });
                continue;
            }
        }
        let ready = h.ready();
        let act = d.action % 16;
        if !stop_faults && act == 15 && d.outcome < 8 {
            let _ = h.try_feed(&Input::Cancel {
                reason: None,
                by: None,
            });
            continue;
        }
        if !stop_faults && act == 15 && d.outcome < 12 {
            let _ = h.try_feed(&Input::Abort {
                reason: None,
                by: None,
            });
            continue;
        }
        if !stop_faults && act == 14 && !h.snap.dlq.is_empty() {
            let id = h.snap.dlq[usize::from(d.pick) % h.snap.dlq.len()].id;
            let _ = h.try_feed(&Input::Requeue {
                dlq_id: id,
                new_input: Some(payload(json!({"v": 5}))),
                by: None,
            });
            continue;
        }
        if (act < 8 || inflight.is_empty()) && !ready.is_empty() {
            let (step, kind) = ready[usize::from(d.pick) % ready.len()].clone();
            let (token, attempt, expired) = h.claim(&step, kind);
            let key = QueueKey {
                instance_id: h.snap.instance.id,
                step: step.as_str().into(),
                kind,
            };
            if expired {
                inflight.retain(|f| f.key != key);
                let _ = h.try_feed(&Input::LeaseExpired {
                    key,
                    token,
                    attempt,
                });
            } else if kind == WorkKind::Timer {
                let _ = h.try_feed(&Input::TimerFired { key, token });
            } else {
                h.calls.push((step.clone(), kind, attempt));
                inflight.push(InFlight {
                    key,
                    token,
                    attempt,
                });
            }
            continue;
        }
        if !inflight.is_empty() {
            let f = inflight.remove(usize::from(d.pick) % inflight.len());
            if !stop_faults && act == 13 {
                // The worker crashed: its lease will expire.
                h.now = h.now.add_ms(DEFAULT_LEASE_TTL_MS);
                continue;
            }
            let fail = !stop_faults && d.outcome < fail_pct;
            let outcome = if fail {
                WorkOutcome::Failed {
                    error: "boom".into(),
                    retryable: d.outcome % 2 == 0,
                }
            } else {
                WorkOutcome::Succeeded(payload(json!({"v": i64::from(d.pick % 10)})))
            };
            let _ = h.try_feed(&Input::WorkDone {
                key: f.key,
                token: f.token,
                attempt: f.attempt,
                outcome,
            });
            continue;
        }
        if !h.advance_to_next() && inflight.is_empty() {
            let waiting = h
                .snap
                .steps
                .iter()
                .any(|r| r.status == StepStatus::WaitingDecision);
            if !waiting {
                return;
            }
        }
    }
    panic!("driver did not settle: {:?} {:?}", h.inst(), h.statuses());
}

fn check_end(h: &H) {
    let st = h.inst();
    assert!(
        st.is_terminal() || st == InstanceStatus::Dlq,
        "instance ended {st}: steps {:?}, queue {:?}",
        h.statuses(),
        h.queue.keys().collect::<Vec<_>>()
    );
    h.check_invariants();
    if st == InstanceStatus::Dlq {
        assert!(!h.snap.dlq.is_empty(), "dlq instance without a record");
        assert!(h.queue.is_empty(), "a parked instance has no queued work");
    }
    // Invariant 4 (attempted means compensated): a compensation is called only for a step
    // run that made an attempt, and once a rollback or cancel has ended, every step run
    // with an `on_failure` that made an attempt is compensated (`rolled_back`, or
    // `compensation_failed` with a DLQ record), apart from completed steps before the
    // savepoint of a rollback (outside its scope). A step that never made an attempt is
    // never compensated.
    let attempted = |s: &str| {
        h.calls
            .iter()
            .any(|(c, k, _)| c == s && *k == WorkKind::Execute)
    };
    for (s, k, _) in &h.calls {
        if *k == WorkKind::Compensate {
            assert!(attempted(s), "{s} compensated without an attempt");
        }
    }
    if matches!(
        st,
        InstanceStatus::Completed | InstanceStatus::Failed | InstanceStatus::Cancelled
    ) {
        let sp = h
            .snap
            .instance
            .rollback_to
            .as_ref()
            .and_then(|s| h.wf.find(s));
        for r in &h.snap.steps {
            let n = h.wf.find(&r.step).unwrap();
            let has_comp = matches!(
                &h.wf.step_def(n).kind,
                StepKind::Task {
                    on_failure: Some(_),
                    ..
                }
            );
            if !has_comp || !attempted(&r.step) {
                assert!(
                    !matches!(
                        r.status,
                        StepStatus::Compensating | StepStatus::CompensationFailed
                    ),
                    "{} {} without an attempt or a compensation handler",
                    r.step,
                    r.status
                );
                continue;
            }
            // Completed runs stay completed only where no rollback covers them: on a
            // completed instance, or before the savepoint of a failed one.
            let kept = r.status.is_success()
                && (st == InstanceStatus::Completed
                    || (st == InstanceStatus::Failed
                        && sp.is_some_and(|sp| !h.wf.node(n).after_savepoint(sp))));
            if kept {
                continue;
            }
            let comp_calls = h
                .calls
                .iter()
                .filter(|(c, k, _)| c == &*r.step && *k == WorkKind::Compensate)
                .count();
            assert!(
                matches!(
                    r.status,
                    StepStatus::RolledBack | StepStatus::CompensationFailed
                ) && comp_calls > 0,
                "{st} instance: {} made an attempt and ended {} after {comp_calls} compensation call(s)\n{:?}",
                r.step,
                r.status,
                h.event_names()
            );
            if r.status == StepStatus::CompensationFailed {
                assert!(
                    h.snap
                        .dlq
                        .iter()
                        .any(|d| d.record.kind == WorkKind::Compensate && d.record.step == r.step),
                    "{} compensation_failed without a DLQ record",
                    r.step
                );
            }
        }
    }
    // ... in the order of §5: within one rollback, compensations start in the reverse of
    // the order in which the steps' last attempts ended (late results included).
    let seq_of = |s: &str| {
        h.snap
            .steps
            .iter()
            .find(|r| &*r.step == s)
            .and_then(|r| r.completed_seq)
            .unwrap_or(0)
    };
    let mut last: Option<(u64, &str)> = None;
    for e in &h.events {
        match e.kind {
            EventKind::RollbackStarted
            | EventKind::CancellationStarted
            | EventKind::BranchFailed
            | EventKind::DlqRequeued => last = None,
            EventKind::CompensationStarted => {
                let s = e.step.as_deref().unwrap();
                let seq = seq_of(s);
                if let Some((prev, p)) = last {
                    assert!(
                        seq < prev,
                        "{s} (#{seq}) compensated after {p} (#{prev})\n{:?}",
                        h.event_names()
                    );
                }
                last = Some((seq, s));
            }
            _ => {}
        }
    }
    // Invariant 1 for terminal: no queue items (a requeued repair aside).
    if st.is_terminal() {
        assert!(
            h.queue.is_empty(),
            "terminal with queue {:?}",
            h.queue.keys().collect::<Vec<_>>()
        );
    }
}

/// Turns `any` joins into `all` and human steps into tasks, at every depth.
fn sequential(els: Vec<El>) -> Vec<El> {
    els.into_iter()
        .map(|e| match e {
            El::Fork { branches, .. } => El::Fork {
                branches: branches.into_iter().map(sequential).collect(),
                any: false,
            },
            El::Human => El::Task {
                comp: true,
                retries: 0,
                no_idem: false,
            },
            El::Cond { k, else_chain } => El::Cond {
                k,
                else_chain: else_chain.map(sequential),
            },
            e => e,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_reach_a_sound_end(els in chain(2, true), dice in prop::collection::vec(dice(), 0..200), fail_pct in 0u8..80, dlq in prop::bool::weighted(0.2), v in 0i64..10) {
        let Some(def) = build(&els, dlq) else { return Ok(()); };
        let mut h = H::start(def, json!({ "v": v }));
        drive(&mut h, &dice, fail_pct);
        check_end(&h);
    }

    #[test]
    fn without_concurrency_compensations_follow_reverse_completion_order(els in chain(1, true), fail_at in 0usize..20, v in 0i64..10) {
        // No any-joins, no cancel: a single rollback, strictly reverse order.
        let els = sequential(els);
        let Some(def) = build(&els, false) else { return Ok(()); };
        let mut h = H::start(def, json!({ "v": v }));
        let mut n = 0;
        h.run(|_, k, _| {
            n += 1;
            if k == WorkKind::Execute && n == fail_at { WorkOutcome::Failed { error: "x".into(), retryable: false } } else { WorkOutcome::Succeeded(payload(json!({"v": v}))) }
        });
        check_end(&h);
        let seq = |s: &str| h.snap.steps.iter().find(|r| &*r.step == s).and_then(|r| r.completed_seq).unwrap();
        let comps = h.compensations();
        for w in comps.windows(2) {
            prop_assert!(seq(&w[0]) > seq(&w[1]), "compensations {comps:?} not in reverse completion order");
        }
    }
}

#[test]
fn the_generator_builds_valid_definitions() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = chain(2, true);
    let mut ok = 0;
    let mut last_err = None;
    for _ in 0..200 {
        let els = strategy.new_tree(&mut runner).unwrap().current();
        let mut n = 0;
        match add(Builder::new("rand", 1), &els, &mut n).build() {
            Ok(_) => ok += 1,
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    assert!(
        ok >= 190,
        "only {ok}/200 random graphs are valid; last error: {last_err:?}"
    );
}
