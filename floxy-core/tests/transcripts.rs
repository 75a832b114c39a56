//! Transcript tests: given a definition and a sequence of inputs, the writes (statuses,
//! queue, events) are exactly these. One module per SEMANTICS section.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use StepStatus as S;
use common::{H, payload};
use floxy_core::builder::Builder;
use floxy_core::machine::{Input, TransitionError, WorkOutcome};
use floxy_core::model::*;
use serde_json::json;

fn saga() -> WorkflowDefinition {
    Builder::new("order", 1)
        .step("reserve", "stock")
        .on_failure("release", "stock.undo")
        .then("charge", "pay")
        .on_failure("refund", "pay.undo")
        .then("ship", "ship")
        .max_retries(1)
        .retry_delay_ms(10)
        .build()
        .unwrap()
}

mod s1_definitions {
    use super::*;
    use floxy_core::validate::DefinitionError as E;

    fn errs(b: Builder) -> Vec<E> {
        b.build().unwrap_err().0
    }

    #[test]
    fn id_is_name_and_version() {
        assert_eq!(saga().id().as_str(), "order-v1");
    }

    #[test]
    fn validation_names_the_step() {
        let e = errs(Builder::new("w", 1).step("a", "h").then("a", "h"));
        assert!(e.contains(&E::DuplicateStep { step: "a".into() }), "{e:?}");
        let e = errs(Builder::new("w", 1).step("__x", "h"));
        assert!(e.contains(&E::ReservedName { step: "__x".into() }), "{e:?}");
        let e = errs(Builder::new("w", 1).step("a", ""));
        assert!(
            e.contains(&E::EmptyHandler {
                step: "a".into(),
                what: "task"
            }),
            "{e:?}"
        );
        let e = errs(
            Builder::new("w", 1)
                .fork("f", |f| f.branch(|b| b.step("a", "h")))
                .join("j", JoinStrategy::All),
        );
        assert!(
            e.contains(&E::ForkTooFewBranches {
                step: "f".into(),
                branches: 1
            }),
            "{e:?}"
        );
        let e = errs(
            Builder::new("w", 1)
                .fork("f", |f| {
                    f.branch(|b| b.step("a", "h").save_point("sp"))
                        .branch(|b| b.step("b", "h"))
                })
                .join("j", JoinStrategy::All),
        );
        assert!(
            e.contains(&E::SavePointInBranch { step: "sp".into() }),
            "{e:?}"
        );
        let e = errs(
            Builder::new("w", 1)
                .step("a", "h")
                .condition("c", "{{ gtt .x 1 }}"),
        );
        assert!(
            matches!(&e[0], E::InvalidExpression { step, .. } if step == "c"),
            "{e:?}"
        );
        let e = errs(
            Builder::new("w", 1)
                .fork("f", |f| {
                    f.branch(|b| b.step("a", "h")).branch(|b| b.step("b", "h"))
                })
                .join_step("j", &["zzz"], JoinStrategy::All),
        );
        assert!(
            matches!(&e[0], E::UnknownReference { target, .. } if target == "zzz"),
            "{e:?}"
        );
        let e = errs(
            Builder::new("w", 1)
                .fork("f", |f| {
                    f.branch(|b| b.step("a", "h")).branch(|b| b.step("b", "h"))
                })
                .then("x", "h"),
        );
        assert!(!e.is_empty());
        assert!(errs(Builder::new("", 0)).contains(&E::InvalidVersion));
        assert!(errs(Builder::new("w", 1)).contains(&E::NoSteps));
    }

    #[test]
    fn cycles_and_shared_steps_are_rejected() {
        let mut def = Builder::new("w", 1)
            .step("a", "h")
            .then("b", "h")
            .build()
            .unwrap();
        def.steps[1].next = Some("a".into());
        let e = floxy_core::graph::CompiledWorkflow::compile(def)
            .unwrap_err()
            .0;
        assert!(e.contains(&E::ReachedTwice { step: "a".into() }), "{e:?}");
    }

    #[test]
    fn bounds_are_enforced() {
        let mut b = Builder::new("w", 1).step("s0", "h");
        for i in 1..=floxy_core::validate::MAX_STEPS {
            b = b.then(&format!("s{i}"), "h");
        }
        assert!(matches!(errs(b)[0], E::TooManySteps { .. }));
        assert!(matches!(
            errs(Builder::new("w", 1).step("a", "h").priority(101))[0],
            E::InvalidPriority { .. }
        ));
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let d = saga();
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<WorkflowDefinition>(&s).unwrap(), d);
    }

    #[test]
    fn oversized_input_is_refused_at_start() {
        let def = Builder::new("w", 1)
            .max_payload_bytes(10)
            .step("a", "h")
            .build()
            .unwrap();
        let wf = floxy_core::graph::CompiledWorkflow::compile(def).unwrap();
        let e = floxy_core::machine::start(
            &wf,
            InstanceId::from_u128(1),
            payload(json!({"x": "0123456789"})),
            None,
            Timestamp(0),
        );
        assert!(matches!(e, Err(TransitionError::PayloadTooLarge(_))));
    }
}

mod s2_lifecycle {
    use super::*;

    #[test]
    fn happy_path_completes_with_last_output() {
        let mut h = H::start(saga(), json!({"order": 1}));
        assert_eq!(h.inst(), InstanceStatus::Running);
        assert_eq!(h.ready(), vec![("reserve".to_string(), WorkKind::Execute)]);
        h.ok("reserve");
        h.ok("charge");
        assert_eq!(h.inst(), InstanceStatus::Running);
        h.ok("ship");
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert_eq!(
            h.snap.instance.output.as_ref().unwrap().value(),
            &json!({"by": "ship"})
        );
        assert!(h.queue.is_empty());
        h.check_invariants();
    }

    #[test]
    fn failed_only_after_last_compensation() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.ok("charge");
        h.fail("ship", false);
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        h.compensate_ok("charge");
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        h.compensate_ok("reserve");
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }

    #[test]
    fn terminal_instances_never_change() {
        let mut h = H::start(saga(), json!({}));
        h.run_ok();
        let e = h
            .feed(&Input::Cancel {
                reason: None,
                by: None,
            })
            .unwrap_err();
        assert_eq!(
            e,
            TransitionError::InstanceTerminal {
                status: InstanceStatus::Completed
            }
        );
        let e = h
            .feed(&Input::Abort {
                reason: None,
                by: None,
            })
            .unwrap_err();
        assert!(matches!(e, TransitionError::InstanceTerminal { .. }));
    }
}

mod s3_steps {
    use super::*;

    #[test]
    fn data_flows_from_step_to_step() {
        let mut h = H::start(saga(), json!({"in": 1}));
        assert_eq!(h.snap.steps[0].input.value(), &json!({"in": 1}));
        h.ok("reserve");
        let charge = h.snap.steps.iter().find(|r| &*r.step == "charge").unwrap();
        assert_eq!(charge.input.value(), &json!({"by": "reserve"}));
    }

    #[test]
    fn a_late_or_duplicate_result_is_rejected() {
        let mut h = H::start(saga(), json!({}));
        let (token, attempt, _) = h.claim("reserve", WorkKind::Execute);
        let key = QueueKey {
            instance_id: h.snap.instance.id,
            step: "reserve".into(),
            kind: WorkKind::Execute,
        };
        let done = Input::WorkDone {
            key,
            token,
            attempt,
            outcome: WorkOutcome::Succeeded(Payload::null()),
        };
        h.feed(&done).unwrap();
        let e = h.feed(&done).unwrap_err();
        assert!(
            matches!(
                e,
                TransitionError::StaleResult {
                    status: S::Completed,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_definition_of_structural_steps_completes_at_start() {
        let def = Builder::new("w", 1)
            .save_point("sp")
            .condition("c", "{{ eq .go true }}")
            .fork("f", |f| {
                f.branch(|b| b.condition("a", "{{ true }}"))
                    .branch(|b| b.condition("b", "{{ true }}"))
            })
            .join("j", JoinStrategy::All)
            .build()
            .unwrap();
        let h = H::start(def, json!({"go": true}));
        assert_eq!(h.inst(), InstanceStatus::Completed);
        let out = h.snap.instance.output.as_ref().unwrap().value().clone();
        assert_eq!(out["completed"], json!(["a", "b"]));
        assert_eq!(out["outputs"]["a"], json!({"go": true}));
        assert!(h.queue.is_empty());
    }
}

mod s4_attempts {
    use super::*;

    #[test]
    fn retries_then_success_with_backoff() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.ok("charge");
        h.fail("ship", true);
        assert_eq!(h.status("ship"), Some(S::Retrying));
        let item = h.queue.values().next().unwrap().clone();
        assert!(item.run_at > h.now, "retry waits for its backoff");
        assert_eq!(item.attempt, 1);
        assert!(item.priority >= DEFAULT_RETRY_PRIORITY);
        assert!(h.event_names().contains(&"step_retry:ship".to_string()));
        h.advance_to_next();
        h.ok("ship");
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert_eq!(h.calls.iter().filter(|c| c.0 == "ship").count(), 2);
    }

    #[test]
    fn max_retries_bounds_calls() {
        let mut h = H::start(saga(), json!({}));
        h.run(|s, k, _| {
            if s == "ship" && k == WorkKind::Execute {
                WorkOutcome::Failed {
                    error: "down".into(),
                    retryable: true,
                }
            } else {
                WorkOutcome::Succeeded(Payload::null())
            }
        });
        assert_eq!(
            h.calls.iter().filter(|c| c.0 == "ship").count(),
            2,
            "max_retries 1 = 2 calls"
        );
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }

    #[test]
    fn no_idempotent_runs_at_most_once_and_lease_loss_is_final() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .no_idempotent()
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.claim("a", WorkKind::Execute);
        h.now = h.now.add_ms(DEFAULT_LEASE_TTL_MS + 1);
        let (token, attempt, expired) = h.claim("a", WorkKind::Execute);
        assert!(expired);
        let key = QueueKey {
            instance_id: h.snap.instance.id,
            step: "a".into(),
            kind: WorkKind::Execute,
        };
        h.feed(&Input::LeaseExpired {
            key,
            token,
            attempt,
        })
        .unwrap();
        assert_eq!(h.status("a"), Some(S::Failed));
        assert_eq!(h.inst(), InstanceStatus::Failed);
    }

    #[test]
    fn lease_expiry_counts_as_an_attempt_and_ends_in_failure() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .max_retries(2)
            .retry_delay_ms(1)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        let mut expiries = 0;
        loop {
            if !h.advance_to_next() {
                break;
            }
            let (token, attempt, expired) = h.claim("a", WorkKind::Execute);
            if expired {
                expiries += 1;
                let key = QueueKey {
                    instance_id: h.snap.instance.id,
                    step: "a".into(),
                    kind: WorkKind::Execute,
                };
                h.feed(&Input::LeaseExpired {
                    key,
                    token,
                    attempt,
                })
                .unwrap();
                continue;
            }
            // The handler kills its worker: never report; the lease expires.
            let _ = token;
            assert!(expiries <= 10, "loops forever");
        }
        assert_eq!(expiries, 3, "three lost attempts = max_retries 2 + 1");
        assert_eq!(h.status("a"), Some(S::Failed));
        assert_eq!(h.inst(), InstanceStatus::Failed);
    }

    #[test]
    fn oversized_output_fails_without_retry() {
        let def = Builder::new("w", 1)
            .max_payload_bytes(20)
            .step("a", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.work(
            "a",
            WorkKind::Execute,
            WorkOutcome::Succeeded(payload(json!({"big": "x".repeat(100)}))),
        )
        .unwrap();
        assert_eq!(h.status("a"), Some(S::Failed));
        assert_eq!(h.calls.len(), 1);
    }
}

mod s5_rollback {
    use super::*;

    #[test]
    fn compensations_run_in_reverse_completion_order_one_at_a_time() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.ok("charge");
        h.fail("ship", false);
        // Only one compensation is queued at a time.
        assert_eq!(
            h.ready(),
            vec![("charge".to_string(), WorkKind::Compensate)]
        );
        h.compensate_ok("charge");
        assert_eq!(
            h.ready(),
            vec![("reserve".to_string(), WorkKind::Compensate)]
        );
        h.compensate_ok("reserve");
        assert_eq!(h.compensations(), vec!["charge", "reserve"]);
        assert_eq!(h.statuses().get("ship"), Some(&S::Failed));
        assert_eq!(h.snap.instance.rollback_depth, 2);
        h.check_invariants();
    }

    #[test]
    fn failed_step_own_on_failure_runs_first() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.fail("charge", false);
        assert_eq!(
            h.ready(),
            vec![("charge".to_string(), WorkKind::Compensate)]
        );
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge", "reserve"]);
        assert_eq!(h.inst(), InstanceStatus::Failed);
    }

    #[test]
    fn rollback_stops_at_the_savepoint() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .save_point("sp")
            .then("b", "h")
            .on_failure("ub", "u")
            .then("c", "h")
            .max_retries(0)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.run(|s, _, _| {
            if s == "c" {
                WorkOutcome::Failed {
                    error: "x".into(),
                    retryable: true,
                }
            } else {
                WorkOutcome::Succeeded(Payload::null())
            }
        });
        assert_eq!(h.compensations(), vec!["b"]);
        assert_eq!(h.status("a"), Some(S::Completed));
        assert_eq!(h.status("sp"), Some(S::Completed));
        assert_eq!(h.status("b"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }

    #[test]
    fn steps_without_compensation_roll_back_without_a_call() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .then("b", "h")
            .max_retries(0)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.ok("a");
        h.fail("b", true);
        assert_eq!(h.status("a"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert!(h.compensations().is_empty());
    }

    #[test]
    fn compensation_failure_writes_dlq_and_rollback_continues() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .then("b", "h")
            .on_failure("ub", "u")
            .compensation_max_retries(1)
            .compensation_retry_delay_ms(1)
            .then("c", "h")
            .max_retries(0)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.run(|s, k, _| match (s, k) {
            ("c", _) => WorkOutcome::Failed {
                error: "x".into(),
                retryable: true,
            },
            ("b", WorkKind::Compensate) => WorkOutcome::Failed {
                error: "undo broke".into(),
                retryable: true,
            },
            _ => WorkOutcome::Succeeded(Payload::null()),
        });
        assert_eq!(h.status("b"), Some(S::CompensationFailed));
        assert_eq!(h.status("a"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert_eq!(h.snap.dlq.len(), 1);
        assert_eq!(h.snap.dlq[0].record.kind, WorkKind::Compensate);
        assert_eq!(
            h.calls
                .iter()
                .filter(|c| c.0 == "b" && c.1 == WorkKind::Compensate)
                .count(),
            2
        );
        // Requeueing the record re-runs the compensation, never the forward handler.
        let id = h.snap.dlq[0].id;
        h.feed(&Input::Requeue {
            dlq_id: id,
            new_input: None,
            by: None,
        })
        .unwrap();
        assert_eq!(h.ready(), vec![("b".to_string(), WorkKind::Compensate)]);
        h.compensate_ok("b");
        assert_eq!(h.status("b"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert!(h.snap.dlq.is_empty());
    }

    #[test]
    fn running_siblings_are_cancelled_and_late_success_compensated() {
        let def = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| b.step("a", "h").on_failure("ua", "u"))
                    .branch(|b| b.step("b", "h").max_retries(0))
            })
            .join("j", JoinStrategy::All)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        let (ta, aa, _) = h.claim("a", WorkKind::Execute);
        h.fail("b", true);
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        let a = h.queue.values().find(|i| &*i.key.step == "a").unwrap();
        assert!(a.cancel_requested, "running sibling asked to stop");
        let key = QueueKey {
            instance_id: h.snap.instance.id,
            step: "a".into(),
            kind: WorkKind::Execute,
        };
        h.feed(&Input::WorkDone {
            key,
            token: ta,
            attempt: aa,
            outcome: WorkOutcome::Succeeded(Payload::null()),
        })
        .unwrap();
        assert_eq!(h.ready(), vec![("a".to_string(), WorkKind::Compensate)]);
        h.run_ok();
        assert_eq!(h.status("a"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }
}

mod s6_fork_join {
    use super::*;

    fn fork(strategy: JoinStrategy) -> WorkflowDefinition {
        Builder::new("w", 1)
            .step("pre", "h")
            .on_failure("upre", "u")
            .fork("f", |f| {
                f.branch(|b| {
                    b.step("a1", "h")
                        .on_failure("ua1", "u")
                        .then("a2", "h")
                        .max_retries(0)
                })
                .branch(|b| b.step("b1", "h").on_failure("ub1", "u"))
            })
            .join("j", strategy)
            .then("post", "h")
            .build()
            .unwrap()
    }

    #[test]
    fn all_join_waits_for_every_branch_and_outputs_them() {
        let mut h = H::start(fork(JoinStrategy::All), json!({}));
        h.ok("pre");
        h.ok("a1");
        h.ok("b1");
        assert_eq!(h.status("j"), None);
        h.ok("a2");
        assert_eq!(h.status("j"), Some(S::Completed));
        let post = h.snap.steps.iter().find(|r| &*r.step == "post").unwrap();
        assert_eq!(post.input.value()["outputs"]["a2"], json!({"by": "a2"}));
        assert_eq!(post.input.value()["outputs"]["b1"], json!({"by": "b1"}));
        h.ok("post");
        assert_eq!(h.inst(), InstanceStatus::Completed);
    }

    #[test]
    fn all_join_branch_failure_rolls_back_whole_scope() {
        let mut h = H::start(fork(JoinStrategy::All), json!({}));
        h.ok("pre");
        h.ok("b1");
        h.ok("a1");
        h.fail("a2", true);
        assert_eq!(h.status("j"), None, "the join never fires");
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert_eq!(
            h.compensations(),
            vec!["a1", "b1", "pre"],
            "reverse completion order"
        );
        let mut comps = h.compensations();
        assert_eq!(comps.pop().as_deref(), Some("pre"), "pre compensated last");
        comps.sort();
        assert_eq!(comps, vec!["a1", "b1"]);
        h.check_invariants();
    }

    #[test]
    fn any_join_fires_on_first_branch_and_tolerates_failure() {
        let mut h = H::start(fork(JoinStrategy::Any), json!({}));
        h.ok("pre");
        h.ok("b1");
        assert_eq!(
            h.status("j"),
            Some(S::Completed),
            "fires on the first branch"
        );
        h.ok("a1");
        h.fail("a2", true);
        // Local rollback of branch a: only a1 compensated, the instance goes on.
        assert_eq!(h.inst(), InstanceStatus::Running);
        h.run_ok();
        assert_eq!(h.compensations(), vec!["a1"]);
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert_eq!(h.status("pre"), Some(S::Completed));
        h.check_invariants();
    }

    #[test]
    fn any_join_fails_when_every_branch_failed() {
        let mut h = H::start(fork(JoinStrategy::Any), json!({}));
        h.run(|s, k, _| match (s, k) {
            ("a2" | "b1", WorkKind::Execute) => WorkOutcome::Failed {
                error: "x".into(),
                retryable: false,
            },
            _ => WorkOutcome::Succeeded(Payload::null()),
        });
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert_eq!(h.status("j"), Some(S::Failed));
        let comps = h.compensations();
        assert!(
            comps.contains(&"a1".to_string())
                && comps.contains(&"b1".to_string())
                && comps.contains(&"pre".to_string()),
            "{comps:?}"
        );
        assert_eq!(comps.last().map(String::as_str), Some("pre"));
        h.check_invariants();
    }

    #[test]
    fn conditions_and_nested_forks_inside_branches() {
        let def = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| {
                    b.step("a", "h")
                        .condition("c", "{{ gt .n 5 }}")
                        .otherwise(|e| e.step("small", "h"))
                        .then("big", "h")
                })
                .branch(|b| {
                    b.fork("g", |g| {
                        g.branch(|x| x.step("x", "h")).branch(|y| y.step("y", "h"))
                    })
                    .join("gj", JoinStrategy::All)
                    .then("after_g", "h")
                })
            })
            .join("j", JoinStrategy::All)
            .build()
            .unwrap();
        for (n, end) in [(1, "small"), (9, "big")] {
            let mut h = H::start(def.clone(), json!({}));
            h.run(|s, _, _| {
                WorkOutcome::Succeeded(payload(if s == "a" {
                    json!({"n": n})
                } else {
                    json!({"by": s})
                }))
            });
            assert_eq!(h.inst(), InstanceStatus::Completed, "n={n}");
            let out = h.snap.instance.output.as_ref().unwrap().value().clone();
            let mut completed: Vec<String> =
                serde_json::from_value(out["completed"].clone()).unwrap();
            completed.sort();
            let mut want = vec![end.to_string(), "after_g".to_string()];
            want.sort();
            assert_eq!(completed, want);
            h.check_invariants();
        }
    }

    #[test]
    fn join_step_waits_for_named_steps() {
        let def = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| b.step("a", "h").then("a_tail", "h"))
                    .branch(|b| b.step("b", "h"))
            })
            .join_step("j", &["a", "b"], JoinStrategy::All)
            .then("post", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.ok("a");
        assert_eq!(h.status("j"), None);
        h.ok("b");
        assert_eq!(
            h.status("j"),
            Some(S::Completed),
            "fires without waiting for a_tail"
        );
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert_eq!(h.status("a_tail"), Some(S::Completed));
    }
}

mod s7_conditions {
    use super::*;

    fn cond() -> WorkflowDefinition {
        Builder::new("w", 1)
            .condition("c", "{{ and (gt .count 0) (lt .count 100) }}")
            .otherwise(|e| e.step("no", "h"))
            .then("yes", "h")
            .build()
            .unwrap()
    }

    #[test]
    fn true_continues_false_takes_else() {
        let h = H::start(cond(), json!({"count": 5}));
        assert_eq!(h.ready(), vec![("yes".to_string(), WorkKind::Execute)]);
        let h = H::start(cond(), json!({"count": "500"}));
        assert_eq!(h.ready(), vec![("no".to_string(), WorkKind::Execute)]);
        let h = H::start(cond(), json!({}));
        assert_eq!(
            h.ready(),
            vec![("no".to_string(), WorkKind::Execute)],
            "missing is 0"
        );
        assert!(h.event_names().contains(&"condition_check:c".to_string()));
    }

    #[test]
    fn false_without_else_ends_the_path() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .condition("c", "{{ eq .status \"active\" }}")
            .then("b", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.work(
            "a",
            WorkKind::Execute,
            WorkOutcome::Succeeded(payload(json!({"status": "idle"}))),
        )
        .unwrap();
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert_eq!(
            h.snap.instance.output.as_ref().unwrap().value(),
            &json!({"status": "idle"})
        );
    }

    #[test]
    fn evaluation_errors_fail_the_condition_without_retry() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .condition("c", "{{ gt .obj 1 }}")
            .then("b", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.work(
            "a",
            WorkKind::Execute,
            WorkOutcome::Succeeded(payload(json!({"obj": {"x": 1}}))),
        )
        .unwrap();
        assert_eq!(h.status("c"), Some(S::Failed));
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Failed);
    }
}

mod s8_human {
    use super::*;

    fn human(policy: RejectPolicy) -> WorkflowDefinition {
        Builder::new("w", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .wait_human("approve")
            .on_reject(policy)
            .then("b", "h")
            .build()
            .unwrap()
    }

    fn decide(h: &mut H, d: Decision) -> Result<(), TransitionError> {
        h.feed(&Input::Decide {
            step: "approve".into(),
            decided_by: "ann".into(),
            decision: d,
            comment: Some("ok".into()),
        })
    }

    #[test]
    fn waits_without_polling_and_confirm_continues() {
        let mut h = H::start(human(RejectPolicy::Abort), json!({}));
        h.ok("a");
        assert_eq!(h.status("approve"), Some(S::WaitingDecision));
        assert!(h.queue.is_empty(), "nothing polls");
        assert!(
            h.event_names()
                .contains(&"human_decision_waiting:approve".to_string())
        );
        decide(&mut h, Decision::Confirm).unwrap();
        let b = h.snap.steps.iter().find(|r| &*r.step == "b").unwrap();
        assert_eq!(b.input.value()["decided_by"], json!("ann"));
        let e = decide(&mut h, Decision::Reject).unwrap_err();
        assert!(
            matches!(
                e,
                TransitionError::NotWaitingDecision {
                    status: S::Confirmed,
                    ..
                }
            ),
            "second decision: {e:?}"
        );
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Completed);
    }

    #[test]
    fn reject_aborts_by_default_or_rolls_back_by_policy() {
        let mut h = H::start(human(RejectPolicy::Abort), json!({}));
        h.ok("a");
        decide(&mut h, Decision::Reject).unwrap();
        assert_eq!(h.inst(), InstanceStatus::Aborted);
        assert_eq!(h.status("a"), Some(S::Completed));
        let mut h = H::start(human(RejectPolicy::RollBack), json!({}));
        h.ok("a");
        decide(&mut h, Decision::Reject).unwrap();
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert_eq!(h.compensations(), vec!["a"]);
    }

    #[test]
    fn decision_timeout_applies_policy() {
        let def = Builder::new("w", 1)
            .wait_human("approve")
            .decision_timeout_ms(5_000, TimeoutPolicy::Confirm)
            .then("b", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        assert_eq!(h.queue.len(), 1, "one timer");
        h.run_ok();
        assert_eq!(h.status("approve"), Some(S::Confirmed));
        assert_eq!(h.inst(), InstanceStatus::Completed);
    }
}

mod s9_cancel_abort {
    use super::*;

    #[test]
    fn cancel_compensates_everything_ignoring_savepoints() {
        let def = Builder::new("w", 1)
            .step("a", "h")
            .on_failure("ua", "u")
            .save_point("sp")
            .then("b", "h")
            .on_failure("ub", "u")
            .then("c", "h")
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.ok("a");
        h.ok("b");
        h.feed(&Input::Cancel {
            reason: Some("user".into()),
            by: Some("ops".into()),
        })
        .unwrap();
        assert_eq!(h.inst(), InstanceStatus::Cancelling);
        let started = h
            .events
            .iter()
            .find(|e| e.kind == floxy_core::model::EventKind::CancellationStarted)
            .and_then(|e| e.detail.clone())
            .unwrap();
        assert_eq!(started.value(), &json!({"reason": "user", "by": "ops"}));
        assert_eq!(h.status("c"), Some(S::Skipped));
        let e = h
            .feed(&Input::Cancel {
                reason: None,
                by: None,
            })
            .unwrap_err();
        assert_eq!(
            e,
            TransitionError::AlreadyInProgress {
                status: InstanceStatus::Cancelling
            }
        );
        h.run_ok();
        assert_eq!(h.compensations(), vec!["b", "a"]);
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
        assert!(
            h.events
                .iter()
                .any(|e| e.kind == EventKind::WorkflowCancelled)
        );
        h.check_invariants();
    }

    #[test]
    fn abort_stops_at_once_without_compensation() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.claim("charge", WorkKind::Execute);
        h.feed(&Input::Abort {
            reason: None,
            by: None,
        })
        .unwrap();
        assert_eq!(h.inst(), InstanceStatus::Aborted);
        assert_eq!(h.status("reserve"), Some(S::Completed));
        assert_eq!(h.status("charge"), Some(S::Failed));
        assert!(h.queue.is_empty());
        h.check_invariants();
    }

    /// The abort asks the holder of a running item (forward or compensation) to stop, in
    /// the same transition that removes the item: the committing engine fires the handler's
    /// token at once instead of leaving it to find the item gone at its next heartbeat.
    #[test]
    fn abort_asks_running_handlers_to_stop() {
        let abort = Input::Abort {
            reason: None,
            by: None,
        };
        let ops = |h: &H| {
            floxy_core::machine::apply(&h.wf, &h.snap, &abort, h.now)
                .unwrap()
                .queue
        };
        let key = |h: &H, step: &str, kind| QueueKey {
            instance_id: h.snap.instance.id,
            step: step.into(),
            kind,
        };
        // A running forward handler.
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.claim("charge", WorkKind::Execute);
        let q = ops(&h);
        let charge = key(&h, "charge", WorkKind::Execute);
        assert!(q.contains(&QueueOp::RequestCancel(charge.clone())), "{q:?}");
        assert!(q.contains(&QueueOp::Delete(charge)), "{q:?}");
        // A running compensation.
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.fail("charge", false);
        // Attempted means compensated: the failed `charge` is refunded first.
        h.claim("charge", WorkKind::Compensate);
        let q = ops(&h);
        let refund = key(&h, "charge", WorkKind::Compensate);
        assert!(q.contains(&QueueOp::RequestCancel(refund.clone())), "{q:?}");
        assert!(q.contains(&QueueOp::Delete(refund)), "{q:?}");
        // Queued work is removed without a request: no handler holds it.
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        let q = ops(&h);
        assert!(
            !q.iter().any(|op| matches!(op, QueueOp::RequestCancel(_))),
            "{q:?}"
        );
        h.feed(&abort).unwrap();
        assert!(h.queue.is_empty());
        h.check_invariants();
    }
}

mod s10_dlq {
    use super::*;

    fn dlq_def() -> WorkflowDefinition {
        Builder::new("w", 1)
            .dlq(true)
            .fork("f", |f| {
                f.branch(|b| b.step("a", "h").max_retries(0))
                    .branch(|b| b.step("b", "h").then("b2", "h"))
            })
            .join("j", JoinStrategy::All)
            .then("post", "h")
            .build()
            .unwrap()
    }

    #[test]
    fn final_failure_parks_and_requeue_resumes_with_new_input() {
        let mut h = H::start(dlq_def(), json!({}));
        let (tb, ab, _) = h.claim("b", WorkKind::Execute);
        h.fail("a", true);
        assert_eq!(h.inst(), InstanceStatus::Dlq);
        assert_eq!(h.status("a"), Some(S::Paused));
        assert_eq!(h.snap.dlq.len(), 1);
        assert_eq!(h.snap.dlq[0].record.error, "a broke");
        // The running sibling finishes and its result is kept; its successor is paused.
        let key = QueueKey {
            instance_id: h.snap.instance.id,
            step: "b".into(),
            kind: WorkKind::Execute,
        };
        h.feed(&Input::WorkDone {
            key,
            token: tb,
            attempt: ab,
            outcome: WorkOutcome::Succeeded(Payload::null()),
        })
        .unwrap();
        assert_eq!(h.status("b"), Some(S::Completed));
        assert_eq!(h.status("b2"), Some(S::Paused));
        assert!(h.queue.is_empty());
        assert!(h.compensations().is_empty(), "no rollback in DLQ mode");
        let id = h.snap.dlq[0].id;
        h.feed(&Input::Requeue {
            dlq_id: id,
            new_input: Some(payload(json!({"fixed": true}))),
            by: None,
        })
        .unwrap();
        assert_eq!(h.inst(), InstanceStatus::Running);
        assert!(h.snap.dlq.is_empty());
        assert!(h.event_names().contains(&"dlq_requeued:a".to_string()));
        let a = h.snap.steps.iter().find(|r| &*r.step == "a").unwrap();
        assert_eq!(a.input.value(), &json!({"fixed": true}));
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Completed);
        assert!(
            !h.calls.iter().any(|c| c.0 == "b"),
            "b not re-run after requeue"
        );
        assert_eq!(
            h.snap
                .steps
                .iter()
                .find(|r| &*r.step == "b")
                .unwrap()
                .attempts,
            1
        );
    }

    #[test]
    fn cancel_of_a_parked_instance_and_unknown_record() {
        let mut h = H::start(dlq_def(), json!({}));
        h.fail("a", true);
        assert_eq!(h.inst(), InstanceStatus::Dlq);
        let e = h
            .feed(&Input::Requeue {
                dlq_id: DlqId(999),
                new_input: None,
                by: None,
            })
            .unwrap_err();
        assert_eq!(e, TransitionError::UnknownDlqRecord { id: 999 });
        h.feed(&Input::Cancel {
            reason: None,
            by: None,
        })
        .unwrap();
        h.run_ok();
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
        assert!(
            h.snap.dlq.is_empty(),
            "forward DLQ records go with the cancel"
        );
        h.check_invariants();
    }
}

mod s11_scheduling {
    use super::*;

    #[test]
    fn priority_and_delay_shape_the_order_key() {
        let def = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| b.step("low", "h").priority(0))
                    .branch(|b| b.step("high", "h").priority(100))
                    .branch(|b| b.step("later", "h").delay_ms(1_000))
            })
            .join("j", JoinStrategy::All)
            .build()
            .unwrap();
        let h = H::start(def, json!({}));
        let key = |s: &str| {
            h.queue
                .values()
                .find(|i| &*i.key.step == s)
                .unwrap()
                .clone()
        };
        assert!(key("high").order_key < key("low").order_key);
        assert_eq!(
            key("low").order_key - key("high").order_key,
            100 * i64::try_from(DEFAULT_AGING_MS_PER_POINT).unwrap()
        );
        assert_eq!(key("later").run_at, h.now.add_ms(1_000));
        assert_eq!(
            h.ready(),
            vec![
                ("high".to_string(), WorkKind::Execute),
                ("low".to_string(), WorkKind::Execute)
            ]
        );
    }
}

mod s12_events {
    use super::*;

    #[test]
    fn timeline_of_a_rollback() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        h.fail("charge", false);
        h.run_ok();
        assert_eq!(
            h.event_names(),
            vec![
                "workflow_started",
                "step_completed:reserve",
                "step_failed:charge",
                "rollback_started:charge",
                "compensation_started:charge",
                "compensation_completed:charge",
                "compensation_started:reserve",
                "compensation_completed:reserve",
                "workflow_failed",
            ]
        );
    }
}

mod s5_strict_order {
    use super::*;

    #[test]
    fn rollback_waits_for_running_handlers_before_compensating() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        let (token, attempt, _) = h.claim("charge", WorkKind::Execute);
        h.feed(&Input::Cancel {
            reason: None,
            by: None,
        })
        .unwrap();
        assert!(
            h.ready().is_empty(),
            "no compensation while charge still runs"
        );
        let key = QueueKey {
            instance_id: h.snap.instance.id,
            step: "charge".into(),
            kind: WorkKind::Execute,
        };
        h.feed(&Input::WorkDone {
            key,
            token,
            attempt,
            outcome: WorkOutcome::Succeeded(Payload::null()),
        })
        .unwrap();
        h.run_ok();
        assert_eq!(
            h.compensations(),
            vec!["charge", "reserve"],
            "late success compensated first"
        );
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
    }
}

/// SEMANTICS §5, §6 `any`, §9 cancel, §13.4: attempted means compensated. An attempt that
/// failed may have applied part of its effect, so every step run of a rollback (or cancel)
/// that made an attempt is compensated, whatever became of it; only a run that never
/// started an attempt is left without a compensation call.
mod s5_attempted_means_compensated {
    use super::*;

    /// `charge` (compensated by `refund`) in one branch, `reserve` in the other.
    fn pair(strategy: JoinStrategy, after: bool) -> WorkflowDefinition {
        let b = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| {
                    b.step("charge", "pay")
                        .on_failure("refund", "pay.undo")
                        .max_retries(2)
                        .retry_delay_ms(10_000)
                })
                .branch(|b| {
                    b.step("reserve", "stock")
                        .on_failure("release", "stock.undo")
                        .max_retries(0)
                })
            })
            .join("j", strategy);
        let b = if after { b.save_point("sp") } else { b };
        b.then("ship", "ship").max_retries(0).build().unwrap()
    }

    fn key(h: &H, step: &str) -> QueueKey {
        QueueKey {
            instance_id: h.snap.instance.id,
            step: step.into(),
            kind: WorkKind::Execute,
        }
    }

    fn reason(h: &H, step: &str) -> Option<String> {
        h.events
            .iter()
            .find(|e| e.kind == EventKind::CompensationStarted && e.step.as_deref() == Some(step))
            .and_then(|e| e.detail.as_ref())
            .and_then(|d| d.value()["reason"].as_str().map(str::to_owned))
    }

    /// A step waiting for its retry after a failed attempt is `skipped` by the rollback and
    /// then compensated, in the place of its failed attempt in the order: the finally
    /// failed `reserve` ended later, so its own `on_failure` runs first.
    #[test]
    fn retrying_then_skipped_is_compensated() {
        let mut h = H::start(pair(JoinStrategy::All, false), json!({}));
        h.fail("charge", true);
        assert_eq!(h.status("charge"), Some(S::Retrying));
        h.fail("reserve", true);
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        assert_eq!(h.status("charge"), Some(S::Skipped));
        assert_eq!(
            h.ready(),
            vec![("reserve".to_string(), WorkKind::Compensate)],
            "one compensation at a time, the latest ended attempt first"
        );
        h.compensate_ok("reserve");
        assert_eq!(
            h.ready(),
            vec![("charge".to_string(), WorkKind::Compensate)]
        );
        let charge = h.snap.steps.iter().find(|r| &*r.step == "charge").unwrap();
        assert_eq!(
            charge.error.as_deref(),
            Some("charge broke"),
            "given to refund"
        );
        h.compensate_ok("charge");
        assert_eq!(h.inst(), InstanceStatus::Failed);
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.status("reserve"), Some(S::RolledBack));
        assert_eq!(
            h.event_names(),
            vec![
                "workflow_started",
                "fork_started:f",
                "step_retry:charge",
                "step_failed:reserve",
                "rollback_started:reserve",
                "step_skipped:charge",
                "compensation_started:reserve",
                "compensation_completed:reserve",
                "compensation_started:charge",
                "compensation_completed:charge",
                "step_rolled_back:f",
                "workflow_failed",
            ]
        );
        assert_eq!(reason(&h, "charge").as_deref(), Some("failure"));
        assert_eq!(
            h.calls
                .iter()
                .filter(|c| c.0 == "charge" && c.1 == WorkKind::Execute)
                .count(),
            1,
            "the skipped retry never ran"
        );
        h.check_invariants();
    }

    /// A step still running when the rollback starts is asked to stop; the rollback waits
    /// for it, and its late failure is compensated, first (its attempt ended last).
    #[test]
    fn running_when_a_rollback_starts_then_failing_late_is_compensated() {
        let mut h = H::start(pair(JoinStrategy::All, false), json!({}));
        let (token, attempt, _) = h.claim("charge", WorkKind::Execute);
        h.fail("reserve", true);
        assert_eq!(h.inst(), InstanceStatus::RollingBack);
        assert!(
            h.ready().is_empty(),
            "no compensation while charge still runs"
        );
        let k = key(&h, "charge");
        assert!(h.queue[&k].cancel_requested, "charge asked to stop");
        h.feed(&Input::WorkDone {
            key: k,
            token,
            attempt,
            outcome: WorkOutcome::Failed {
                error: "connection reset after charging".into(),
                retryable: true,
            },
        })
        .unwrap();
        assert_eq!(
            h.status("charge"),
            Some(S::Compensating),
            "failed, then compensated"
        );
        assert_eq!(
            h.ready(),
            vec![("charge".to_string(), WorkKind::Compensate)],
            "the late failure ended last: compensated first"
        );
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge", "reserve"]);
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        let late = h
            .events
            .iter()
            .find(|e| e.kind == EventKind::StepFailed && e.step.as_deref() == Some("charge"))
            .and_then(|e| e.detail.clone())
            .unwrap();
        assert_eq!(
            late.value(),
            &json!({"error": "connection reset after charging", "late": true})
        );
        assert!(
            !h.calls
                .iter()
                .any(|c| c.0 == "charge" && c.1 == WorkKind::Execute),
            "a late failure is not retried"
        );
        let charge = h.snap.steps.iter().find(|r| &*r.step == "charge").unwrap();
        assert_eq!(charge.attempts, 1);
        h.check_invariants();
    }

    /// A handler running when the instance is cancelled that fails late is compensated
    /// with the reason `cancel`, before the steps that completed earlier.
    #[test]
    fn running_when_cancelled_then_failing_late_is_compensated() {
        let mut h = H::start(saga(), json!({}));
        h.ok("reserve");
        let (token, attempt, _) = h.claim("charge", WorkKind::Execute);
        h.feed(&Input::Cancel {
            reason: None,
            by: None,
        })
        .unwrap();
        assert_eq!(h.inst(), InstanceStatus::Cancelling);
        assert!(h.ready().is_empty(), "the cancel waits for charge");
        let k = key(&h, "charge");
        h.feed(&Input::WorkDone {
            key: k,
            token,
            attempt,
            outcome: WorkOutcome::Failed {
                error: "declined after the hold".into(),
                retryable: false,
            },
        })
        .unwrap();
        assert_eq!(
            h.ready(),
            vec![("charge".to_string(), WorkKind::Compensate)]
        );
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge", "reserve"]);
        assert_eq!(reason(&h, "charge").as_deref(), Some("cancel"));
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.status("ship"), None, "never reached");
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
        h.check_invariants();
    }

    /// A cancel skips a retrying step and compensates it; a step that never started an
    /// attempt (`pending` → `skipped`) is not compensated.
    #[test]
    fn cancel_compensates_a_retrying_step_but_not_a_pending_one() {
        let def = Builder::new("w", 1)
            .fork("f", |f| {
                f.branch(|b| {
                    b.step("charge", "pay")
                        .on_failure("refund", "pay.undo")
                        .retry_delay_ms(10_000)
                })
                .branch(|b| {
                    b.step("reserve", "stock")
                        .on_failure("release", "stock.undo")
                })
            })
            .join("j", JoinStrategy::All)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.fail("charge", true);
        h.feed(&Input::Cancel {
            reason: None,
            by: None,
        })
        .unwrap();
        assert!(h.event_names().contains(&"step_skipped:charge".to_string()));
        assert_eq!(h.status("charge"), Some(S::Compensating));
        assert_eq!(h.status("reserve"), Some(S::Skipped));
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge"]);
        assert_eq!(reason(&h, "charge").as_deref(), Some("cancel"));
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.status("reserve"), Some(S::Skipped), "never attempted");
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
        h.check_invariants();
    }

    /// `any`: after the join fired on `reserve`, the losing branch's `charge` failed an
    /// attempt and waits for its retry; a rollback that covers it (here `ship` fails)
    /// compensates it like the others, in the order its attempt ended.
    #[test]
    fn any_branch_failed_attempt_is_compensated_by_the_rollback() {
        let mut h = H::start(pair(JoinStrategy::Any, false), json!({}));
        h.ok("reserve");
        assert_eq!(h.status("j"), Some(S::Completed), "fired on reserve");
        h.fail("charge", true);
        assert_eq!(h.status("charge"), Some(S::Retrying));
        h.fail("ship", true);
        assert!(h.event_names().contains(&"step_skipped:charge".to_string()));
        assert_eq!(
            h.status("charge"),
            Some(S::Compensating),
            "skipped, then compensated at once: `ship` has no on_failure"
        );
        h.run_ok();
        assert_eq!(
            h.compensations(),
            vec!["charge", "reserve"],
            "charge's attempt ended after reserve completed"
        );
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.status("reserve"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }

    /// `any` before a savepoint: the rollback stops at the savepoint, so the winning
    /// branch stays `completed`; the losing branch, stopped after a failed attempt, did not
    /// complete, and its attempt is compensated all the same (had it failed while the
    /// instance ran, its branch would have been rolled back locally, §6).
    #[test]
    fn any_branch_failed_attempt_before_the_savepoint_is_compensated() {
        let mut h = H::start(pair(JoinStrategy::Any, true), json!({}));
        h.ok("reserve");
        assert_eq!(h.status("sp"), Some(S::Completed));
        h.fail("charge", true);
        h.fail("ship", true);
        assert_eq!(h.snap.instance.rollback_to.as_deref(), Some("sp"));
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge"]);
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(
            h.status("reserve"),
            Some(S::Completed),
            "before the savepoint"
        );
        assert_eq!(h.inst(), InstanceStatus::Failed);
        h.check_invariants();
    }

    /// `any`, local rollback: a branch whose step fails finally is compensated back to the
    /// fork (the failed step's own `on_failure` first) while the instance goes on.
    #[test]
    fn any_branch_local_rollback_compensates_its_failed_step() {
        let mut h = H::start(pair(JoinStrategy::Any, false), json!({}));
        h.ok("reserve");
        h.fail("charge", true);
        for _ in 0..2 {
            let k = key(&h, "charge");
            h.now = h.now.max(h.queue[&k].run_at);
            h.fail("charge", true);
        }
        assert_eq!(h.status("charge"), Some(S::Compensating));
        assert_eq!(h.inst(), InstanceStatus::Running);
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge"]);
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Completed);
        h.check_invariants();
    }

    /// A cancel of a `dlq` instance compensates the parked step: it made its attempts.
    #[test]
    fn cancel_of_a_parked_instance_compensates_the_failed_step() {
        let def = Builder::new("w", 1)
            .dlq(true)
            .step("charge", "pay")
            .on_failure("refund", "pay.undo")
            .max_retries(0)
            .build()
            .unwrap();
        let mut h = H::start(def, json!({}));
        h.fail("charge", true);
        assert_eq!(h.inst(), InstanceStatus::Dlq);
        assert_eq!(h.status("charge"), Some(S::Paused));
        h.feed(&Input::Cancel {
            reason: None,
            by: None,
        })
        .unwrap();
        h.run_ok();
        assert_eq!(h.compensations(), vec!["charge"]);
        assert_eq!(h.status("charge"), Some(S::RolledBack));
        assert_eq!(h.inst(), InstanceStatus::Cancelled);
        assert!(h.snap.dlq.is_empty());
        h.check_invariants();
    }
}
