//! The write-ahead log: what makes a batch durable with
//! [`Durability::Immediate`](crate::Durability::Immediate).
//!
//! A redb commit with `fsync` writes every page the batch dirtied (each one by its own
//! `pwrite`), checksums them and syncs the file, and the committing thread can do nothing
//! else meanwhile: it was a third of that thread's time, the store's bottleneck. So each batch
//! is instead appended to this log (the batch's [`Ops`], a few hundred bytes per request, in
//! one write) and the log is synced on a helper thread while the committing thread applies the
//! batch to redb; the redb transaction commits *without* `fsync` (redb keeps its pages in
//! memory, visible to readers) only once the log record is durable, and only then are the
//! callers answered. Every [`DEFAULT_CHECKPOINT_BYTES`](crate::DEFAULT_CHECKPOINT_BYTES) of
//! log, one batch commits durably in redb instead (a **checkpoint**: it writes each page the
//! batches since the last one dirtied once, however often they dirtied it) and records the
//! number of its log record in `meta`; the log then starts over at its beginning.
//!
//! **Recovery.** After a crash redb opens at its last durable commit, the last checkpoint.
//! Open then reads the log, replays in one durable transaction every record after the
//! checkpoint's number, and empties the log. A clean close checkpoints and empties it too.
//!
//! **Records.** A 32-byte header (magic, payload length, log sequence number, the database's
//! log id, CRC-32C of the id, the number, the length and the payload, 4 reserved bytes) and
//! the payload
//! ([`Ops::encode_log`]). Records follow each other from offset 0 with numbers increasing by
//! one. Reading stops at the first record that is torn (short, bad magic or checksum) or out
//! of sequence: whatever follows is the leftover of an earlier round of the log (numbers at or
//! below the checkpoint) or of a batch that failed. A batch that fails after its record was
//! written has the record's header zeroed ([`Wal::discard`]), so it is never replayed, and
//! the next batch takes its place and number.
//!
//! The file is `<database path>-wal`. It is opened only after redb locked the database file,
//! so it has one writer. The log id is a random number kept in `meta` (`"wal_id"`), so a log
//! left by another database at that path (a database file deleted and created again) is
//! never replayed into this one.

use crate::layout::{META, META_WAL_ID, META_WAL_LSN, redb_err};
use crate::ops::Ops;
use floxy_core::store::StoreError;
use redb::{Database, ReadableDatabase};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Marks the start of a record ("FXWL").
const MAGIC: u32 = 0x4658_574c;
/// Bytes of a record header.
const HEADER: usize = 32;
/// CRC-32C (Castagnoli), as storage formats use; slice-by-16 tables (16 KiB), several times
/// faster than the crate's default byte-wise table on the megabytes a busy store logs per
/// second.
static CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The log's path for the database at `db`.
pub(crate) fn path_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// The log of an open store, written by the committing thread only.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    /// Where the next record goes.
    end: u64,
    /// Number of the next record.
    next_lsn: u64,
    /// Number of the last record whose batch redb holds durably.
    checkpointed: u64,
    /// Log bytes after which the next batch checkpoints.
    checkpoint_bytes: u64,
    /// The database's log id.
    id: u64,
}

/// A record written but not yet known applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// Its number.
    pub(crate) lsn: u64,
    /// Its place in the file.
    at: u64,
    /// Its length, header included (known once [`Wal::append`] encoded it).
    len: u64,
}

impl Wal {
    /// The next record: its number and its place.
    pub(crate) fn next_record(&self) -> Record {
        Record {
            lsn: self.next_lsn,
            at: self.end,
            len: 0,
        }
    }

    /// Encodes `ops` as record `r` in `buf` (the caller's, reused from batch to batch), writes
    /// it at its place and makes it durable (see [`Appender::append`]).
    pub(crate) fn append(&self, r: &mut Record, ops: &Ops, buf: &mut Vec<u8>) -> io::Result<()> {
        append_to(&self.file, self.id, r, ops, buf)
    }

    /// A writer of this log's records for another thread (the log thread, see
    /// [`crate::commit`]), on its own handle of the file.
    pub(crate) fn appender(&self) -> io::Result<Appender> {
        Ok(Appender {
            file: self.file.try_clone()?,
            id: self.id,
            buf: Vec::new(),
        })
    }

    /// The batch of `r` failed: its record must never be replayed. The next record is written
    /// in its place, with its number.
    pub(crate) fn discard(&mut self, r: &Record) -> io::Result<()> {
        // `return` fails the discard, before anything is written.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("floxy-redb::wal-discard", |_| Err(io::Error::other(
            "injected by failpoint floxy-redb::wal-discard"
        )));
        self.file.write_all_at(&[0_u8; HEADER], r.at)?;
        self.file.sync_data()
    }

    /// The batch of `r` is committed in redb (durably when `checkpoint`).
    pub(crate) fn applied(&mut self, r: &Record, checkpoint: bool) {
        self.next_lsn = r.lsn + 1;
        if checkpoint {
            self.checkpointed = r.lsn;
            self.end = 0;
        } else {
            self.end = r.at + r.len;
        }
    }

    /// Whether the next batch should checkpoint.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.end >= self.checkpoint_bytes
    }

    /// Whether the log holds enough for a checkpoint while the store is idle: a sixteenth of
    /// [`Wal::checkpoint_due`]'s size (4 MiB by default), so a checkpoint then costs a few
    /// milliseconds and an idle store is not synced after every small batch.
    pub(crate) fn idle_checkpoint_due(&self) -> bool {
        self.behind() && self.end >= (self.checkpoint_bytes / 16).max(1)
    }

    /// A checkpoint without a batch of its own (see [`Wal::idle_checkpoint_due`]) made every
    /// record applied so far durable in redb: the log starts over at its beginning. What it
    /// held stays in the file until overwritten; its numbers are at or below the checkpoint,
    /// so it is never replayed.
    pub(crate) fn checkpointed(&mut self) {
        self.checkpointed = self.last_lsn();
        self.end = 0;
    }

    /// Whether batches committed since the last checkpoint exist only in the log (and in
    /// redb's memory).
    pub(crate) fn behind(&self) -> bool {
        self.next_lsn.saturating_sub(1) > self.checkpointed
    }

    /// Number of the last record applied.
    pub(crate) fn last_lsn(&self) -> u64 {
        self.next_lsn.saturating_sub(1)
    }

    /// A checkpoint covered every record: empties the file.
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.checkpointed();
        self.file.set_len(0)?;
        self.file.sync_all()
    }
}

/// Writes records of a log from the log thread, which encodes, checksums, writes and syncs
/// each batch's record while the committing thread applies the batch.
#[derive(Debug)]
pub(crate) struct Appender {
    file: File,
    id: u64,
    /// The buffer records are encoded in, reused from batch to batch.
    buf: Vec<u8>,
}

impl Appender {
    /// Encodes `ops` as record `r`, writes it at its place and makes it durable. Only one
    /// record is written at a time: the committing thread waits for each before it commits.
    pub(crate) fn append(&mut self, r: &mut Record, ops: &Ops) -> io::Result<()> {
        append_to(&self.file, self.id, r, ops, &mut self.buf)
    }
}

/// Encodes `ops` as record `r` of log `id` in `buf`, writes it at its place in `file` and
/// syncs the file.
fn append_to(file: &File, id: u64, r: &mut Record, ops: &Ops, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.resize(HEADER, 0);
    ops.encode_log(buf);
    let payload = buf.get(HEADER..).unwrap_or_default();
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other("a batch too large for one log record"))?;
    let crc = checksum(id, r.lsn, len, payload);
    let mut header = [0_u8; HEADER];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..16].copy_from_slice(&r.lsn.to_le_bytes());
    header[16..24].copy_from_slice(&id.to_le_bytes());
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    if let Some(h) = buf.get_mut(..HEADER) {
        h.copy_from_slice(&header);
    }
    r.len = buf.len() as u64;
    file.write_all_at(buf, r.at)?;
    // `return` fails the sync (after the record was written, so it is on the file).
    #[cfg(feature = "failpoints")]
    fail::fail_point!("floxy-redb::wal-sync", |_| Err(io::Error::other(
        "injected by failpoint floxy-redb::wal-sync"
    )));
    file.sync_data()
}

fn checksum(id: u64, lsn: u64, len: u32, payload: &[u8]) -> u32 {
    let mut d = CRC.digest();
    d.update(&id.to_le_bytes());
    d.update(&lsn.to_le_bytes());
    d.update(&len.to_le_bytes());
    d.update(payload);
    d.finalize()
}

/// The records of log id `id` in a log file, in order, up to the first torn, foreign or
/// out-of-sequence one: (number, payload).
pub(crate) fn records(bytes: &[u8], id: u64) -> Vec<(u64, &[u8])> {
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    let mut pos = 0_usize;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let word = |r: std::ops::Range<usize>| header.get(r).unwrap_or_default();
        let magic = u32::from_le_bytes(word(0..4).try_into().unwrap_or_default());
        let len = u32::from_le_bytes(word(4..8).try_into().unwrap_or_default());
        let lsn = u64::from_le_bytes(word(8..16).try_into().unwrap_or_default());
        let record_id = u64::from_le_bytes(word(16..24).try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(word(24..28).try_into().unwrap_or_default());
        if magic != MAGIC || record_id != id {
            break;
        }
        let start = pos + HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        if checksum(id, lsn, len, payload) != crc {
            break;
        }
        if out.last().is_some_and(|(prev, _)| lsn != prev + 1) {
            break;
        }
        out.push((lsn, payload));
        pos = start + len as usize;
    }
    out
}

/// What recovery did at open.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Recovered {
    /// Batches replayed from the log.
    pub(crate) replayed: u64,
}

/// Opens (or creates) the log of `db_path`, replays into `db` every record after its last
/// checkpoint (one durable transaction) and empties the log.
pub(crate) fn recover(
    db: &Database,
    db_path: &Path,
    checkpoint_bytes: u64,
) -> Result<(Wal, Recovered), StoreError> {
    let path = path_of(db_path);
    let io_err = |what: &str, e: io::Error| {
        StoreError::Unavailable(format!("write-ahead log {}: {what}: {e}", path.display()))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("cannot open it", e))?;
    // The log's directory entry must be durable before any record counts as durable: a
    // file's `fdatasync` does not cover the directory that names it.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot sync its directory", e))?;
    }
    let (checkpointed, id) = log_state(db)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_err("cannot read it", e))?;
    let all = records(&bytes, id);
    let replay: Vec<&(u64, &[u8])> = all.iter().filter(|(lsn, _)| *lsn > checkpointed).collect();
    if let Some((first, _)) = replay.first()
        && *first != checkpointed + 1
    {
        return Err(StoreError::Corrupt(format!(
            "write-ahead log {}: the database is checkpointed at record {checkpointed} but the log continues at record {first}",
            path.display()
        )));
    }
    let mut recovered = Recovered::default();
    let mut last = checkpointed;
    if !replay.is_empty() {
        let txn = db.begin_write().map_err(redb_err)?;
        for (lsn, payload) in &replay {
            let ops = Ops::decode_log(payload).map_err(|e| {
                StoreError::Corrupt(format!(
                    "write-ahead log {}: record {lsn}: {e}",
                    path.display()
                ))
            })?;
            ops.apply(&txn)?;
            last = *lsn;
            recovered.replayed += 1;
        }
        record_checkpoint(&txn, last)?;
        txn.commit().map_err(redb_err)?;
    }
    let mut wal = Wal {
        file,
        end: 0,
        next_lsn: last + 1,
        checkpointed: last,
        checkpoint_bytes,
        id,
    };
    wal.clear().map_err(|e| io_err("cannot empty it", e))?;
    Ok((wal, recovered))
}

/// A checkpoint without a batch: one durable write transaction that records `lsn`, the last
/// log record applied, as checkpointed (a clean close, an idle store).
pub(crate) fn checkpoint(db: &Database, lsn: u64) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(redb_err)?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| StoreError::Backend(format!("redb: {e}")))?;
    record_checkpoint(&txn, lsn)?;
    txn.commit().map_err(redb_err)
}

/// Records in `txn` (a durable one) that redb holds every log record up to `lsn`.
pub(crate) fn record_checkpoint(txn: &redb::WriteTransaction, lsn: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(redb_err)?;
    meta.insert(META_WAL_LSN, lsn.to_be_bytes().as_slice())
        .map_err(redb_err)?;
    Ok(())
}

/// The number of the last log record redb holds durably (0 for a file never checkpointed)
/// and the database's log id (created, durably, for a file that has none).
fn log_state(db: &Database) -> Result<(u64, u64), StoreError> {
    let (lsn, id) = {
        let rtx = db.begin_read().map_err(redb_err)?;
        let meta = rtx.open_table(META).map_err(redb_err)?;
        let read = |key: &str| -> Result<Option<u64>, StoreError> {
            match meta.get(key).map_err(redb_err)? {
                None => Ok(None),
                Some(v) => <[u8; 8]>::try_from(v.value())
                    .map(|b| Some(u64::from_be_bytes(b)))
                    .map_err(|_| StoreError::Corrupt(format!("meta: {key} is not 8 bytes"))),
            }
        };
        (read(META_WAL_LSN)?.unwrap_or(0), read(META_WAL_ID)?)
    };
    if let Some(id) = id {
        return Ok((lsn, id));
    }
    let id = new_log_id();
    let txn = db.begin_write().map_err(redb_err)?;
    {
        let mut meta = txn.open_table(META).map_err(redb_err)?;
        meta.insert(META_WAL_ID, id.to_be_bytes().as_slice())
            .map_err(redb_err)?;
    }
    txn.commit().map_err(redb_err)?;
    Ok((lsn, id))
}

/// A random log id: std's per-process random hash keys, mixed with the time.
fn new_log_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::layout::LIVE;
    use redb::ReadableTable;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        Fixture { _dir: dir, path }
    }

    fn open(f: &Fixture) -> Database {
        crate::open::open_database(&f.path, 1 << 20).unwrap()
    }

    /// A batch marking `keys` live.
    fn batch(keys: &[u128]) -> Ops {
        let mut ops = Ops::default();
        for k in keys {
            ops.live(*k, true);
        }
        ops
    }

    /// Writes `ops` as the next record.
    fn append(wal: &Wal, ops: &Ops) -> Record {
        let mut r = wal.next_record();
        wal.append(&mut r, ops, &mut Vec::new()).unwrap();
        r
    }

    /// Logs `batches` as the committing thread does, without their redb commits: what a
    /// crash right after their acknowledgements leaves.
    fn log(wal: &mut Wal, batches: &[&[u128]]) {
        for b in batches {
            let r = append(wal, &batch(b));
            wal.applied(&r, false);
        }
    }

    fn live(db: &Database) -> Vec<u128> {
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(LIVE).unwrap();
        t.iter().unwrap().map(|r| r.unwrap().0.value()).collect()
    }

    fn log_len(f: &Fixture) -> u64 {
        std::fs::metadata(path_of(&f.path)).unwrap().len()
    }

    #[test]
    fn records_after_the_checkpoint_are_replayed_and_the_log_emptied() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 0);
        log(&mut wal, &[&[1, 2], &[3], &[4, 5, 6]]);
        assert!(log_len(&f) > 0);
        assert!(live(&db).is_empty(), "nothing reached redb");
        drop((wal, db));

        let db = open(&f);
        let (wal, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 3);
        assert_eq!(live(&db), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log_len(&f), 0, "the log is emptied");
        assert_eq!(
            wal.last_lsn(),
            3,
            "numbers go on after the replayed records"
        );
        drop((wal, db));
        // Nothing is replayed twice.
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 0);
        assert_eq!(live(&db), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn reading_stops_at_a_torn_record() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, _) = recover(&db, &f.path, 1 << 20).unwrap();
        log(&mut wal, &[&[1], &[2], &[3]]);
        drop((wal, db));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path_of(&f.path))
            .unwrap();
        file.set_len(log_len(&f) - 5).unwrap();
        drop(file);
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 2, "the torn third record is not replayed");
        assert_eq!(live(&db), vec![1, 2]);
    }

    #[test]
    fn a_flipped_byte_ends_the_log_there() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, _) = recover(&db, &f.path, 1 << 20).unwrap();
        log(&mut wal, &[&[1], &[2], &[3]]);
        drop((wal, db));
        let mut bytes = std::fs::read(path_of(&f.path)).unwrap();
        let second = bytes.len() / 3 + HEADER + 2;
        bytes[second] ^= 0x40;
        std::fs::write(path_of(&f.path), &bytes).unwrap();
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 1, "the checksum of the second record fails");
        assert_eq!(live(&db), vec![1]);
    }

    #[test]
    fn a_discarded_record_is_never_replayed_and_the_next_takes_its_place() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, _) = recover(&db, &f.path, 1 << 20).unwrap();
        log(&mut wal, &[&[1]]);
        // The batch of the second record fails after the record was written.
        let failed = append(&wal, &batch(&[2]));
        wal.discard(&failed).unwrap();
        drop((wal, db));
        let db = open(&f);
        let (mut wal, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 1);
        assert_eq!(live(&db), vec![1]);

        // Without a crash in between, the next batch overwrites the discarded record.
        log(&mut wal, &[&[3]]);
        let failed = append(&wal, &batch(&[4, 5, 6, 7]));
        wal.discard(&failed).unwrap();
        log(&mut wal, &[&[8], &[9]]);
        drop((wal, db));
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 3);
        assert_eq!(live(&db), vec![1, 3, 8, 9]);
    }

    #[test]
    fn records_of_the_round_before_a_checkpoint_are_not_replayed() {
        let f = fixture();
        let db = open(&f);
        // A tiny threshold: the fourth batch checkpoints.
        let (mut wal, _) = recover(&db, &f.path, 1).unwrap();
        log(&mut wal, &[&[1, 2, 3, 4, 5, 6, 7, 8]]);
        assert!(wal.checkpoint_due());
        // The checkpoint: the batch commits durably with its number.
        let mut ops = batch(&[9]);
        let r = append(&wal, &ops);
        ops.meta(META_WAL_LSN, &r.lsn.to_be_bytes());
        let txn = db.begin_write().unwrap();
        batch(&[1, 2, 3, 4, 5, 6, 7, 8]).apply(&txn).unwrap();
        ops.apply(&txn).unwrap();
        txn.commit().unwrap();
        wal.applied(&r, true);
        assert!(!wal.checkpoint_due());
        // The next round starts at the beginning, over the old records: a record of the same
        // size as the old first one, so the old second one (number 2, checksum valid) follows
        // it and only its number tells it is stale.
        log(&mut wal, &[&[10, 11, 12, 13, 14, 15, 16, 17]]);
        let bytes = std::fs::read(path_of(&f.path)).unwrap();
        let read: Vec<u64> = records(&bytes, wal.id).iter().map(|r| r.0).collect();
        assert_eq!(read, vec![3], "reading stops at the stale record 2");
        drop((wal, db));
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1).unwrap();
        assert_eq!(r.replayed, 1, "only the record after the checkpoint");
        assert_eq!(live(&db), (1..=17).collect::<Vec<u128>>());
    }

    #[test]
    fn the_log_of_another_database_is_not_replayed() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, _) = recover(&db, &f.path, 1 << 20).unwrap();
        log(&mut wal, &[&[1], &[2]]);
        drop((wal, db));
        // The database file is deleted and created again; its old log stays.
        std::fs::remove_file(&f.path).unwrap();
        let db = open(&f);
        let (_, r) = recover(&db, &f.path, 1 << 20).unwrap();
        assert_eq!(r.replayed, 0);
        assert!(live(&db).is_empty());
        assert_eq!(log_len(&f), 0);
    }

    #[test]
    fn a_gap_between_the_checkpoint_and_the_log_is_refused() {
        let f = fixture();
        let db = open(&f);
        let (mut wal, _) = recover(&db, &f.path, 1 << 20).unwrap();
        // Records 5 and 6 while the file is checkpointed at 0: 1 to 4 are missing.
        wal.next_lsn = 5;
        log(&mut wal, &[&[1], &[2]]);
        drop((wal, db));
        let db = open(&f);
        let err = recover(&db, &f.path, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("checkpointed at record 0") && m.contains("continues at record 5")),
            "{err}"
        );
        assert!(live(&db).is_empty(), "nothing was replayed");
        assert!(log_len(&f) > 0, "the log is kept for inspection");
    }
}
