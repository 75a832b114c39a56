//! Crash safety, tested the way redb tests its own: the store runs on a redb storage backend
//! that keeps two images of the file, what the process sees and what has been synced. At a
//! random write (or sync) the backend "loses power": that operation and every later one
//! fail, and the file is what had been synced before, every unsynced write dropped. The
//! store is then reopened from that image and must hold every commit it acknowledged
//! (creates, a ledger's versions, step completions), be consistent (each instance's steps,
//! queue items and events agree; the published counters match what is stored) and keep
//! its counters going forward (no fencing token handed out twice). Several crashes in a
//! row, on the same image, each after a random number of writes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use floxy_core::conformance::fixtures::{iid, next, request, start, stored_step, write};
use floxy_core::model::{
    EventKind, InstanceId, InstanceStatus, LeaseCheck, NewEvent, QueueOp, StepStatus, Timestamp,
};
use floxy_core::store::{InstanceQuery, Store};
use floxy_store_redb::{RedbOptions, RedbStore};
use redb::StorageBackend;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Error, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const ROUNDS: u64 = 6;
const T0: Timestamp = Timestamp(1_700_000_000_000);

#[derive(Debug, Default)]
struct Images {
    /// What the process sees: every write applied.
    live: Vec<u8>,
    /// What survives a crash: the live image as of the last completed sync.
    synced: Vec<u8>,
    /// Backend writes, length changes and syncs left before the crash (`None`: never).
    ops_left: Option<u64>,
    crashed: bool,
    syncs: u64,
}

/// A storage backend that crashes after a given number of operations (see the module docs).
#[derive(Debug, Clone, Default)]
struct CrashingBackend(Arc<Mutex<Images>>);

impl CrashingBackend {
    /// A backend whose file (synced and seen) is `image`, crashing after `ops` operations.
    fn new(image: Vec<u8>, ops: u64) -> Self {
        Self(Arc::new(Mutex::new(Images {
            live: image.clone(),
            synced: image,
            ops_left: Some(ops),
            crashed: false,
            syncs: 0,
        })))
    }

    /// Counts one mutating operation; fails it if the power is (now) gone.
    fn step(images: &mut Images) -> Result<(), Error> {
        if let Some(n) = &mut images.ops_left {
            if *n == 0 {
                images.crashed = true;
            } else {
                *n -= 1;
            }
        }
        if images.crashed {
            return Err(Error::other("power lost (simulated crash)"));
        }
        Ok(())
    }

    fn crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }

    fn syncs(&self) -> u64 {
        self.0.lock().unwrap().syncs
    }

    /// The file after the crash: the synced image.
    fn synced_image(&self) -> Vec<u8> {
        self.0.lock().unwrap().synced.clone()
    }
}

impl StorageBackend for CrashingBackend {
    fn len(&self) -> Result<u64, Error> {
        Ok(self.0.lock().unwrap().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let images = self.0.lock().unwrap();
        let start = usize::try_from(offset).unwrap();
        let end = start + out.len();
        if end > images.live.len() {
            return Err(Error::from(ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&images.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        let mut images = self.0.lock().unwrap();
        Self::step(&mut images)?;
        images.live.resize(usize::try_from(len).unwrap(), 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), Error> {
        let mut images = self.0.lock().unwrap();
        Self::step(&mut images)?;
        let Images { live, synced, .. } = &mut *images;
        synced.clone_from(live);
        images.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut images = self.0.lock().unwrap();
        Self::step(&mut images)?;
        let start = usize::try_from(offset).unwrap();
        let end = start + data.len();
        if end > images.live.len() {
            images.live.resize(end, 0);
        }
        images.live[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// A small deterministic generator (xorshift), seeded from the time and printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the store acknowledged, over every round.
#[derive(Debug, Default)]
struct Acks {
    created: BTreeSet<InstanceId>,
    /// Ledger instance → last acknowledged version.
    ledger: BTreeMap<InstanceId, u64>,
    /// Instances whose step `s1` completion was acknowledged.
    completed: BTreeSet<InstanceId>,
    /// The largest fencing token handed out in an acknowledged claim.
    max_token: u64,
}

fn ledger_id(round: u64) -> InstanceId {
    iid(u128::from(1_000_000 + round))
}

fn now(round: u64) -> Timestamp {
    T0.add_ms(1_000 * round)
}

/// The workload of one round, until the backend crashes: creates (8 at a time), bumps of the
/// round's ledger, claims of `s1` and their completions, all at once.
async fn run_round(store: &RedbStore, round: u64, acks: &Arc<Mutex<Acks>>) {
    let at = now(round);
    let ledger = ledger_id(round);
    if store.create_instance(start(ledger, at, &[])).await.is_err() {
        return;
    }
    acks.lock().unwrap().ledger.insert(ledger, 1);
    // Set once the creates fail: the workers then stop when they find no more work (claims
    // that find none write nothing, so they never see the crash).
    let stopped = Arc::new(AtomicBool::new(false));
    let creates = {
        let (store, acks, stopped) = (store.clone(), acks.clone(), stopped.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let ids: Vec<InstanceId> = (0..8)
                    .map(|i| iid(u128::from(round * 100_000 + n * 8 + i + 1)))
                    .collect();
                let results = futures::future::join_all(
                    ids.iter()
                        .map(|id| store.create_instance(start(*id, at, &[("s1", "h")]))),
                )
                .await;
                for (id, r) in ids.iter().zip(results) {
                    if r.is_err() {
                        stopped.store(true, Ordering::SeqCst);
                        return;
                    }
                    acks.lock().unwrap().created.insert(*id);
                }
            }
        })
    };
    let bumps = {
        let (store, acks) = (store.clone(), acks.clone());
        tokio::spawn(async move {
            loop {
                let r = store
                    .update_instance(
                        ledger,
                        Box::new(move |s| {
                            let mut t = next(s, at);
                            t.events.push(NewEvent {
                                kind: EventKind::SavePointReached,
                                step: None,
                                attempt: None,
                                detail: None,
                            });
                            Ok(t)
                        }),
                    )
                    .await;
                match r {
                    Ok(t) => drop(
                        acks.lock()
                            .unwrap()
                            .ledger
                            .insert(ledger, t.instance.version),
                    ),
                    Err(_) => return,
                }
            }
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let owner = format!("w{round}-{w}");
            tokio::spawn(work(
                store.clone(),
                owner,
                at,
                acks.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    creates.await.unwrap();
    bumps.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
}

/// A worker: claims `s1` items of the handler `h` and completes each, until a write fails
/// (or, with nothing to claim, until `stopped`).
async fn work(
    store: RedbStore,
    owner: String,
    at: Timestamp,
    acks: Arc<Mutex<Acks>>,
    stopped: Arc<AtomicBool>,
) {
    loop {
        let Ok(claimed) = store.claim(&request(&owner, &["h"], 8, at)).await else {
            return;
        };
        {
            let mut a = acks.lock().unwrap();
            for c in &claimed {
                let token = c.item.lease.as_ref().map_or(0, |l| l.token.0);
                a.max_token = a.max_token.max(token);
            }
        }
        if claimed.is_empty() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        let done = futures::future::join_all(claimed.iter().map(|c| {
            let key = c.item.key.clone();
            let token = c.item.lease.as_ref().map_or(0, |l| l.token.0);
            let id = key.instance_id;
            let store = store.clone();
            async move {
                let r = store
                    .update_instance(
                        id,
                        Box::new(move |s| {
                            let mut t = next(s, at);
                            t.lease_check = Some(LeaseCheck {
                                key: key.clone(),
                                token: floxy_core::model::FencingToken(token),
                            });
                            let mut run = stored_step(s, "s1");
                            run.status = StepStatus::Completed;
                            t.steps.push(write(run, Some(StepStatus::Running)));
                            t.queue.push(QueueOp::Delete(key));
                            t.events.push(NewEvent {
                                kind: EventKind::StepCompleted,
                                step: Some("s1".into()),
                                attempt: None,
                                detail: None,
                            });
                            Ok(t)
                        }),
                    )
                    .await;
                (id, r)
            }
        }))
        .await;
        for (id, r) in done {
            if r.is_err() {
                return;
            }
            acks.lock().unwrap().completed.insert(id);
        }
    }
}

/// After a crash: every acknowledged commit is there and everything is consistent.
async fn check(store: &RedbStore, acks: &Acks, round: u64) -> usize {
    for id in &acks.created {
        let s = store.load_instance(*id).await.expect("load");
        assert!(s.is_some(), "round {round}: acknowledged create {id} lost");
    }
    for (id, acked) in &acks.ledger {
        let r = store.get_instance(*id).await.expect("get");
        let r = r.unwrap_or_else(|| panic!("round {round}: ledger {id} lost"));
        assert!(
            r.version >= *acked,
            "round {round}: ledger {id} at version {}, but {acked} was acknowledged",
            r.version
        );
        let events = store.list_events(*id, None, 0).await.expect("events");
        assert_eq!(
            events.len() as u64,
            r.version,
            "round {round}: one event per ledger version"
        );
    }
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let (mut queued, mut leased) = (0, 0);
    let mut q = InstanceQuery::default();
    let mut n = 0;
    loop {
        let page = store.list_instances(&q).await.expect("list");
        for rec in &page.items {
            n += 1;
            *by_status.entry(rec.status.as_str().to_owned()).or_default() += 1;
            assert_eq!(rec.status, InstanceStatus::Running, "round {round}");
            let id = rec.id;
            let steps = store.list_steps(id).await.expect("steps");
            let queue = store.list_queue(id).await.expect("queue");
            let events = store.list_events(id, None, 0).await.expect("events");
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "round {round}: events of {id} in sequence: {seqs:?}"
            );
            queued += queue.len() as u64;
            leased += queue.iter().filter(|i| i.lease.is_some()).count() as u64;
            if steps.is_empty() {
                continue; // a ledger
            }
            let s1 = &steps[0];
            match s1.status {
                StepStatus::Completed => assert!(
                    queue.is_empty(),
                    "round {round}: {id}'s step is done but queued: {queue:?}"
                ),
                StepStatus::Pending | StepStatus::Running => {
                    assert!(
                        !acks.completed.contains(&id),
                        "round {round}: acknowledged completion of {id} lost"
                    );
                    assert_eq!(queue.len(), 1, "round {round}: {id} has its step queued");
                    assert_eq!(
                        queue[0].lease.is_some(),
                        s1.status == StepStatus::Running,
                        "round {round}: {id}: a leased item and a running step go together"
                    );
                }
                other => panic!("round {round}: {id}'s step is {other}"),
            }
            let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
            let expect: &[EventKind] = match s1.status {
                StepStatus::Pending => &[EventKind::WorkflowStarted],
                StepStatus::Running => &[EventKind::WorkflowStarted, EventKind::StepStarted],
                _ => &[
                    EventKind::WorkflowStarted,
                    EventKind::StepStarted,
                    EventKind::StepCompleted,
                ],
            };
            assert_eq!(kinds, expect, "round {round}: events of {id}");
        }
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    // The counters the store keeps (and publishes) agree with what it holds.
    let stats = store.stats().await.expect("stats");
    let by_status: Vec<(String, u64)> = by_status.into_iter().collect();
    let mut published = stats.instances_by_status.clone();
    published.sort();
    assert_eq!(published, by_status, "round {round}: instance counts");
    assert_eq!(
        (stats.queue_ready + stats.queue_leased, stats.queue_leased),
        (queued, leased),
        "round {round}: queue counts"
    );
    n
}

#[test]
fn a_crash_loses_no_acknowledged_commit() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_nanos() % u128::from(u64::MAX)).unwrap_or(1)
        })
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut image = Vec::new();
    for round in 0..ROUNDS {
        let ops = 200 + rng.below(3_000);
        let backend = CrashingBackend::new(image, ops);
        let store = RedbStore::open_with_backend(backend.clone(), RedbOptions::default())
            .expect("open before the crash");
        rt.block_on(run_round(&store, round, &acks));
        assert!(
            backend.crashed(),
            "round {round}: the workload ran until the crash"
        );
        // The process is gone: nothing it still does reaches the file.
        drop(store);
        image = backend.synced_image();
        let syncs = backend.syncs();
        let reopened = CrashingBackend::new(image.clone(), u64::MAX);
        let store = RedbStore::open_with_backend(reopened.clone(), RedbOptions::default())
            .expect("reopen after the crash");
        let acks_now = std::mem::take(&mut *acks.lock().unwrap());
        let n = rt.block_on(check(&store, &acks_now, round));
        // Tokens keep going up: a claim after the crash gets a new one.
        let more = 8_u128;
        rt.block_on(async {
            let id = iid(u128::from(round) * 100_000 + 99_999);
            store
                .create_instance(start(id, now(round), &[("s1", "h")]))
                .await
                .expect("a create after the crash");
            let claimed = store
                .claim(&request("after", &["h"], more as usize, now(round)))
                .await
                .expect("a claim after the crash");
            assert!(!claimed.is_empty(), "round {round}: work left to claim");
            for c in &claimed {
                let token = c.item.lease.as_ref().map_or(0, |l| l.token.0);
                assert!(
                    token > acks_now.max_token,
                    "round {round}: token {token} after the crash, {} acknowledged before",
                    acks_now.max_token
                );
            }
            store.close().await.expect("close after the check");
        });
        image = reopened.synced_image();
        println!(
            "round {round}: crashed after {ops} operations ({syncs} syncs); {n} instances, {} acknowledged creates, {} completions",
            acks_now.created.len(),
            acks_now.completed.len()
        );
        *acks.lock().unwrap() = acks_now;
    }
}
