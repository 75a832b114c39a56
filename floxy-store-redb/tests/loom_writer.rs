//! Loom models of the redb writer's hand-over (`floxy_store_redb::loom_model`, the code the
//! preparing and the committing thread run around each batch): the preparing thread seals
//! batches and hands them over, polls or waits for their outcomes and fails the batches
//! prepared on top of a failed one; the committing thread commits, reports each outcome,
//! then answers the batch's callers. Loom runs every interleaving of the two threads over
//! the real protocol code and loom's channels; only the batches are stand-ins (lists of
//! callers; a commit fails for the batches the model says). The preparing thread's script
//! follows `Writer::run`: one request per batch, the outcome polled before and after each
//! request is prepared.
//!
//! ```text
//! RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p floxy-store-redb --test loom_writer --release
//! ```
#![cfg(floxy_loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy_core::store::StoreError;
use floxy_store_redb::loom_model::{Commit, HandOver, Prepare, channel};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::task::Poll;
use std::time::Duration;

/// Runs `f` over every interleaving with at most 3 preemptions per run (bounds the state
/// space: the races below need at most two).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// A caller of the store.
type Caller = u32;
/// A sealed batch: its sequence number and its callers.
type Sealed = (u64, Vec<Caller>);
/// The answers every caller got: `true` for success.
type Answers = Arc<Mutex<Vec<(Caller, bool)>>>;

fn answer(answers: &Answers, callers: Vec<Caller>, ok: bool) {
    answers
        .lock()
        .unwrap()
        .extend(callers.into_iter().map(|c| (c, ok)));
}

/// The preparing thread's stand-in: batches are lists of callers.
struct Preparer {
    answers: Answers,
    last_seq: u64,
    /// The outcomes it settled: (batch, committed).
    settled: Vec<(u64, bool)>,
}

impl Prepare for Preparer {
    type Batch = Vec<Caller>;
    type Sealed = Sealed;
    type Tag = u64;

    fn settle(&mut self, tag: u64, err: Option<&StoreError>) {
        self.settled.push((tag, err.is_none()));
    }

    fn seal(&mut self, batch: Vec<Caller>) -> Result<(Sealed, u64), (Vec<Caller>, StoreError)> {
        self.last_seq += 1;
        Ok(((self.last_seq, batch), self.last_seq))
    }

    fn fail(&mut self, batch: Vec<Caller>, _: StoreError) {
        answer(&self.answers, batch, false);
    }

    fn fail_sealed(&mut self, (_, batch): Sealed, _: StoreError) {
        answer(&self.answers, batch, false);
    }
}

/// The committing thread's stand-in: the commit of a batch holding a caller of `failing`
/// fails.
struct Committer {
    answers: Answers,
    failing: Vec<Caller>,
    /// The batches it committed: (batch, committed).
    committed: Vec<(u64, bool)>,
}

impl Commit for Committer {
    type Sealed = Sealed;
    type Replies = Vec<Caller>;

    fn idle_wait(&self) -> Option<Duration> {
        None
    }

    fn idle(&mut self) {
        unreachable!("no idle wait in the model");
    }

    fn commit(&mut self, (seq, callers): Sealed) -> (Vec<Caller>, Option<StoreError>) {
        let fails = callers.iter().any(|c| self.failing.contains(c));
        self.committed.push((seq, !fails));
        let err = fails.then(|| StoreError::Unavailable("commit failed (model)".to_owned()));
        (callers, err)
    }

    fn answer(&mut self, replies: Vec<Caller>, err: Option<StoreError>) {
        answer(&self.answers, replies, err.is_none());
    }

    fn committed(&mut self) {}
}

/// What a run of the model ended with.
struct Run {
    /// Every answer, by caller.
    answers: Vec<(Caller, bool)>,
    /// Outcomes the preparing thread settled, and the commits the committing thread did.
    settled: Vec<(u64, bool)>,
    committed: Vec<(u64, bool)>,
}

/// Starts the committing thread over a new hand-over, runs `script` as the preparing thread,
/// closes the hand-over and waits for the committing thread (a deadlock at close fails the
/// model).
fn run(failing: &[Caller], script: impl FnOnce(&mut HandOver<Sealed, u64>, &mut Preparer)) -> Run {
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let (mut pipe, commit_end) = channel::<Sealed, u64>();
    let mut committer = Committer {
        answers: Arc::clone(&answers),
        failing: failing.to_vec(),
        committed: Vec::new(),
    };
    let committing_thread = thread::spawn(move || {
        commit_end.run(&mut committer);
        committer.committed
    });
    let mut preparer = Preparer {
        answers: Arc::clone(&answers),
        last_seq: 0,
        settled: Vec::new(),
    };
    script(&mut pipe, &mut preparer);
    pipe.close(&mut preparer);
    let commits = committing_thread.join().unwrap();
    let mut answers = answers.lock().unwrap().clone();
    answers.sort_unstable();
    Run {
        answers,
        settled: preparer.settled,
        committed: commits,
    }
}

/// The writer's script for requests 1, 2, 3 arriving one after the other while batches
/// commit: batch 1 goes at once; request 2 is prepared (on top of batch 1 unless its
/// outcome was polled first) and its batch handed over once batch 1's outcome is in;
/// request 3 likewise on top of batch 2. Returns, for requests 2 and 3, whether each was
/// prepared on top of the batch before it.
fn three_batches(pipe: &mut HandOver<Sealed, u64>, p: &mut Preparer) -> [bool; 2] {
    pipe.finish(p, vec![1], None);
    let mut on_top = [false; 2];
    for (i, caller) in [2, 3].into_iter().enumerate() {
        // Before preparing a request, the writer settles the committing batch if it can.
        let _ = pipe.poll_in_flight(p);
        on_top[i] = pipe.committing();
        // After it, too: an outcome in now fails the batch if the commit failed.
        let failed_under = match pipe.poll_in_flight(p) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => None,
        };
        pipe.finish(p, vec![caller], failed_under);
    }
    on_top
}

/// Every caller answered exactly once; the preparing thread settled exactly the batches
/// the committing thread committed, with the same outcome, in order; a caller's success
/// means its batch committed.
fn check_common(run: &Run) {
    let callers: Vec<Caller> = run.answers.iter().map(|(c, _)| *c).collect();
    assert_eq!(callers, vec![1, 2, 3], "every caller answered exactly once");
    assert_eq!(
        run.settled, run.committed,
        "every handed-over batch settled once, with its outcome"
    );
}

fn answered_ok(run: &Run, caller: Caller) -> bool {
    run.answers.iter().any(|(c, ok)| *c == caller && *ok)
}

/// With every commit succeeding, every caller gets a success, each batch waiting for the
/// one before it.
#[test]
fn with_no_failure_every_caller_succeeds_once() {
    model(|| {
        let run = run(&[], |pipe, p| {
            three_batches(pipe, p);
        });
        check_common(&run);
        assert!(run.answers.iter().all(|(_, ok)| *ok), "{:?}", run.answers);
        assert_eq!(run.committed, vec![(1, true), (2, true), (3, true)]);
    });
}

/// A failed commit fails the batch prepared on top of it, whether its outcome was found
/// while that batch was prepared or waited for when it was handed over; never a success
/// for a batch whose predecessor failed.
#[test]
fn a_failed_commit_fails_the_batch_prepared_on_top_of_it() {
    for failing in [1, 2] {
        model(move || {
            let mut on_top = [false; 2];
            let run = run(&[failing], |pipe, p| on_top = three_batches(pipe, p));
            check_common(&run);
            assert!(
                !answered_ok(&run, failing),
                "a failed commit's caller succeeded"
            );
            for (i, caller) in [2, 3].into_iter().enumerate() {
                if on_top[i] && !answered_ok(&run, caller - 1) {
                    assert!(
                        !answered_ok(&run, caller),
                        "caller {caller} succeeded on top of a failed batch: {:?}",
                        run.answers
                    );
                }
            }
        });
    }
}

/// The committing thread reports a batch's outcome before it answers the batch's callers:
/// a request a caller sends after it saw its batch's answer (a retry) is never prepared on
/// top of that batch.
#[test]
fn a_request_sent_after_its_caller_saw_the_answer_is_not_prepared_on_top_of_that_batch() {
    model(|| {
        let run = run(&[1], |pipe, p| {
            pipe.finish(p, vec![1], None);
            // Whether caller 1 had its answer when request 2 (its retry) came.
            let seen = p.answers.lock().unwrap().iter().any(|(c, _)| *c == 1);
            // The writer settles the committing batch if it can before preparing a request.
            let _ = pipe.poll_in_flight(p);
            if seen {
                assert!(
                    !pipe.committing(),
                    "request 2 prepared on top of the batch its caller saw answered"
                );
            }
            pipe.finish(p, vec![2], None);
        });
        let callers: Vec<Caller> = run.answers.iter().map(|(c, _)| *c).collect();
        assert_eq!(callers, vec![1, 2], "every caller answered exactly once");
        assert_eq!(run.settled, run.committed);
        assert!(!answered_ok(&run, 1));
    });
}
