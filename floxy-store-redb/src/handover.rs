//! The hand-over between the writer's two threads: the preparing thread ([`crate::writer`])
//! hands each prepared batch to the committing thread ([`crate::commit`]), which commits it
//! and reports its outcome. The protocol, in one place:
//!
//! * at most one batch is committing and one being prepared: a batch is handed over only
//!   once the outcome of the one before it is in ([`HandOver::finish`] waits for it);
//! * a batch prepared on top of a batch whose commit failed fails with it: its callers get
//!   that error and nothing of it is written ([`HandOver::finish`]);
//! * the committing thread reports a batch's outcome to the preparing thread before it
//!   answers the batch's callers ([`Committing::run`]), so a request sent after its caller
//!   saw a batch fail is never prepared on top of that batch;
//! * closing waits for the committing batch, then stops the committing thread
//!   ([`HandOver::close`]).
//!
//! Both ends are generic over what they hand over ([`Prepare`], [`Commit`]) and the
//! channels come from [`crate::sync`], so the loom model (`tests/loom_writer.rs`,
//! `--cfg floxy_loom`) drives this code with stand-in batches over every interleaving. Its
//! items are `pub` for that model only: the module is public (hidden) under
//! `--cfg floxy_loom`, crate-private otherwise.

use crate::sync::mpsc::{self, Receiver, Sender};
use floxy_core::store::StoreError;
use std::sync::mpsc::{RecvTimeoutError, SendError, TryRecvError};
use std::task::Poll;
use std::time::Duration;

/// A message to the committing thread.
pub enum ToCommit<S> {
    /// Commit this batch, then report its outcome.
    Batch(S),
    /// Stop (the committing thread then finishes, see [`Committing::run`]).
    Close,
}

/// What the preparing thread does around the hand-over (the writer; a stand-in in the loom
/// model).
pub trait Prepare {
    /// A batch being prepared.
    type Batch;
    /// A batch as the committing thread takes it.
    type Sealed;
    /// What the preparing thread keeps of a batch while it commits.
    type Tag;

    /// The batch that was committing (`tag`) has its outcome: `err` is its commit error.
    fn settle(&mut self, tag: Self::Tag, err: Option<&StoreError>);
    /// Seals `batch` for the committing thread (called only once the batch before it is
    /// known committed), or returns it with the error that fails it (its preparation
    /// failed).
    ///
    /// # Errors
    ///
    /// The batch cannot be committed: [`Prepare::fail`] answers its callers.
    // Three associated types in one signature; an alias would only hide them.
    #[allow(clippy::type_complexity)]
    fn seal(
        &mut self,
        batch: Self::Batch,
    ) -> Result<(Self::Sealed, Self::Tag), (Self::Batch, StoreError)>;
    /// Answers every caller of `batch` with `e`: it is not handed over.
    fn fail(&mut self, batch: Self::Batch, e: StoreError);
    /// Answers every caller of a sealed batch with `e`: the committing thread stopped
    /// before it took the batch.
    fn fail_sealed(&mut self, batch: Self::Sealed, e: StoreError);
}

/// What the committing thread does with the batches handed over (the committer; a stand-in
/// in the loom model).
pub trait Commit {
    /// A batch as handed over.
    type Sealed;
    /// The replies of a committed (or failed) batch.
    type Replies;

    /// How long to wait for the next batch before [`Commit::idle`] (`None`: as long as it
    /// takes).
    fn idle_wait(&self) -> Option<Duration>;
    /// No batch came within [`Commit::idle_wait`].
    fn idle(&mut self);
    /// Commits `batch`: its replies and its commit error.
    fn commit(&mut self, batch: Self::Sealed) -> (Self::Replies, Option<StoreError>);
    /// Answers a batch's callers (`err`: its commit error).
    fn answer(&mut self, replies: Self::Replies, err: Option<StoreError>);
    /// A batch was reported and answered: the preparing thread may hand over the next one.
    fn committed(&mut self);
}

/// The error of a batch the committing thread can no longer take or report.
fn stopped() -> StoreError {
    StoreError::Backend("the redb committing thread stopped".to_owned())
}

/// The preparing thread's end of the hand-over (`S`: sealed batches, `T`: what it keeps of
/// the committing one).
pub struct HandOver<S, T> {
    to_commit: Sender<ToCommit<S>>,
    outcomes: Receiver<Option<StoreError>>,
    /// The batch being committed.
    in_flight: Option<T>,
}

/// The committing thread's end of the hand-over.
pub struct Committing<S> {
    rx: Receiver<ToCommit<S>>,
    outcomes: Sender<Option<StoreError>>,
}

/// A new hand-over: the preparing end and the committing end.
#[must_use]
pub fn channel<S, T>() -> (HandOver<S, T>, Committing<S>) {
    let (to_commit, rx) = mpsc::channel();
    let (outcome_tx, outcomes) = mpsc::channel();
    (
        HandOver {
            to_commit,
            outcomes,
            in_flight: None,
        },
        Committing {
            rx,
            outcomes: outcome_tx,
        },
    )
}

impl<S, T> HandOver<S, T> {
    /// Whether a batch is committing (its outcome not settled yet).
    pub fn committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the committing batch, if any, and settles it. Returns its commit error.
    pub fn settle_in_flight<P>(&mut self, side: &mut P) -> Option<StoreError>
    where
        P: Prepare<Sealed = S, Tag = T>,
    {
        let tag = self.in_flight.take()?;
        let err = self.outcomes.recv().unwrap_or_else(|_| Some(stopped()));
        side.settle(tag, err.as_ref());
        err
    }

    /// Settles the committing batch if its outcome is in: `Ready(commit error)`, or
    /// `Pending` while it is still committing (or nothing is).
    pub fn poll_in_flight<P>(&mut self, side: &mut P) -> Poll<Option<StoreError>>
    where
        P: Prepare<Sealed = S, Tag = T>,
    {
        if self.in_flight.is_none() {
            return Poll::Pending;
        }
        let err = match self.outcomes.try_recv() {
            Ok(err) => err,
            Err(TryRecvError::Empty) => return Poll::Pending,
            Err(TryRecvError::Disconnected) => Some(stopped()),
        };
        match self.in_flight.take() {
            Some(tag) => side.settle(tag, err.as_ref()),
            None => return Poll::Pending,
        }
        Poll::Ready(err)
    }

    /// Hands `batch` to the committing thread once the batch before it is committed, or
    /// fails it: if that one failed (`failed_under`: it was found failed earlier, while
    /// `batch` was being prepared on top of it), if its own preparation failed, or if the
    /// committing thread stopped.
    pub fn finish<P>(&mut self, side: &mut P, batch: P::Batch, failed_under: Option<StoreError>)
    where
        P: Prepare<Sealed = S, Tag = T>,
    {
        // The batch was prepared on top of the committing one: it can go only if that one
        // is durable.
        if let Some(e) = self.settle_in_flight(side).or(failed_under) {
            side.fail(batch, e);
            return;
        }
        let (sealed, tag) = match side.seal(batch) {
            Ok(s) => s,
            Err((batch, e)) => {
                side.fail(batch, e);
                return;
            }
        };
        match self.to_commit.send(ToCommit::Batch(sealed)) {
            Ok(()) => self.in_flight = Some(tag),
            Err(SendError(msg)) => {
                if let ToCommit::Batch(sealed) = msg {
                    side.fail_sealed(sealed, stopped());
                }
            }
        }
    }

    /// Waits for the committing batch, settles it and stops the committing thread.
    pub fn close<P>(&mut self, side: &mut P)
    where
        P: Prepare<Sealed = S, Tag = T>,
    {
        self.settle_in_flight(side);
        // The committing thread may be gone already; nothing is left to stop then.
        let _ = self.to_commit.send(ToCommit::Close);
    }
}

impl<S> Committing<S> {
    /// The committing thread's loop, until [`ToCommit::Close`] or the preparing thread is
    /// gone: each batch committed, its outcome reported to the preparing thread, then its
    /// callers answered.
    pub fn run<C: Commit<Sealed = S>>(&self, side: &mut C) {
        loop {
            let msg = match side.idle_wait() {
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
                Some(wait) => match self.rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        side.idle();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            match msg {
                ToCommit::Batch(batch) => {
                    let (replies, err) = side.commit(batch);
                    // The preparing thread learns the outcome before any caller does: a
                    // request sent after its caller saw this batch fail is then never
                    // prepared on top of it (see `Writer::run`).
                    let gone = self.outcomes.send(err.clone()).is_err();
                    side.answer(replies, err);
                    if gone {
                        break;
                    }
                    side.committed();
                }
                ToCommit::Close => break,
            }
        }
    }
}
