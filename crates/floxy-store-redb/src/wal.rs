//! The write-ahead log: what makes a batch durable with [`Durability::Immediate`].
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
//! **Records.** A 24-byte header (magic, payload length, log sequence number, CRC-32C of the
//! number, the length and the payload, 4 reserved bytes) and the payload
//! ([`Ops::encode_log`]). Records follow each other from offset 0 with numbers increasing by
//! one. Reading stops at the first record that is torn (short, bad magic or checksum) or out
//! of sequence: whatever follows is the leftover of an earlier round of the log (numbers at or
//! below the checkpoint) or of a batch that failed. A batch that fails after its record was
//! written has the record's header zeroed ([`Wal::discard`]), so it is never replayed, and
//! the next batch takes its place and number.
//!
//! The file is `<database path>-wal`. It is opened only after redb locked the database file,
//! so it has one writer.

use crate::layout::{META, META_WAL_LSN, redb_err};
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
const HEADER: usize = 24;
/// CRC-32C (Castagnoli), as storage formats use.
static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

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
    /// The record being written (kept to reuse its allocation).
    buf: Vec<u8>,
}

/// A record written but not yet known applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// Its number.
    pub(crate) lsn: u64,
    at: u64,
    len: u64,
}

impl Wal {
    /// Encodes `ops` as the next record, to be written by [`Wal::write`].
    pub(crate) fn record(&mut self, ops: &Ops) -> io::Result<Record> {
        self.buf.clear();
        self.buf.resize(HEADER, 0);
        ops.encode_log(&mut self.buf);
        let payload = self.buf.get(HEADER..).unwrap_or_default();
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other("a batch too large for one log record"))?;
        let lsn = self.next_lsn;
        let crc = checksum(lsn, len, payload);
        let mut header = [0_u8; HEADER];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..16].copy_from_slice(&lsn.to_le_bytes());
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        if let Some(h) = self.buf.get_mut(..HEADER) {
            h.copy_from_slice(&header);
        }
        Ok(Record {
            lsn,
            at: self.end,
            len: self.buf.len() as u64,
        })
    }

    /// Writes the record [`Wal::record`] encoded and makes it durable. Takes `&self`: the
    /// committing thread runs it on a helper thread while it applies the batch.
    pub(crate) fn write(&self, r: &Record) -> io::Result<()> {
        self.file.write_all_at(&self.buf, r.at)?;
        self.file.sync_data()
    }

    /// The batch of `r` failed: its record must never be replayed. The next record is written
    /// in its place, with its number.
    pub(crate) fn discard(&mut self, r: &Record) -> io::Result<()> {
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
        self.checkpointed = self.last_lsn();
        self.end = 0;
        self.file.set_len(0)?;
        self.file.sync_all()
    }
}

fn checksum(lsn: u64, len: u32, payload: &[u8]) -> u32 {
    let mut d = CRC.digest();
    d.update(&lsn.to_le_bytes());
    d.update(&len.to_le_bytes());
    d.update(payload);
    d.finalize()
}

/// The records of a log file in order, up to the first torn or out-of-sequence one: (number,
/// payload).
pub(crate) fn records(bytes: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    let mut pos = 0_usize;
    while let Some(header) = bytes.get(pos..pos + HEADER) {
        let word = |r: std::ops::Range<usize>| header.get(r).unwrap_or_default();
        let magic = u32::from_le_bytes(word(0..4).try_into().unwrap_or_default());
        let len = u32::from_le_bytes(word(4..8).try_into().unwrap_or_default());
        let lsn = u64::from_le_bytes(word(8..16).try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(word(16..20).try_into().unwrap_or_default());
        if magic != MAGIC {
            break;
        }
        let start = pos + HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        if checksum(lsn, len, payload) != crc {
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
    let checkpointed = checkpoint_lsn(db)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_err("cannot read it", e))?;
    let all = records(&bytes);
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
        {
            let mut meta = txn.open_table(META).map_err(redb_err)?;
            meta.insert(META_WAL_LSN, last.to_be_bytes().as_slice())
                .map_err(redb_err)?;
        }
        txn.commit().map_err(redb_err)?;
    }
    let mut wal = Wal {
        file,
        end: 0,
        next_lsn: last + 1,
        checkpointed: last,
        checkpoint_bytes,
        buf: Vec::new(),
    };
    wal.clear().map_err(|e| io_err("cannot empty it", e))?;
    Ok((wal, recovered))
}

/// The number of the last log record redb holds durably (0 for a file never checkpointed).
pub(crate) fn checkpoint_lsn(db: &Database) -> Result<u64, StoreError> {
    let rtx = db.begin_read().map_err(redb_err)?;
    let meta = rtx.open_table(META).map_err(redb_err)?;
    let Some(v) = meta.get(META_WAL_LSN).map_err(redb_err)? else {
        return Ok(0);
    };
    <[u8; 8]>::try_from(v.value())
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("meta: the checkpoint number is not 8 bytes".to_owned()))
}
