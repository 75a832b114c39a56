//! The ceiling the store works under: raw redb on this machine, no floxy code. One thread
//! commits batches of `R` rows (`Durability::Immediate`), each row a ~100-byte value under a
//! `(u128, u64)` key spread over a few tables the way the store's rows are (UUIDv7-ordered
//! instance ids, so recent keys cluster), and reports durable commits/s and rows/s.
//! Part `ceilings`, backend `redb` (moved from `floxy-store-redb/benches/raw_redb.rs`).
//!
//! The store writes about 8 rows per durable step completion (claim: step row and event;
//! completion: instance row, one or two step rows, event; plus `floxy_live` / `floxy_terminal`
//! at the ends of an instance), so rows/s here divided by 8 bounds completions/s there.
use redb::{Database, Durability, TableDefinition};
use std::time::{Duration, Instant};

const TABLES: [TableDefinition<(u128, u64), &[u8]>; 4] = [
    TableDefinition::new("a"),
    TableDefinition::new("b"),
    TableDefinition::new("c"),
    TableDefinition::new("d"),
];

fn run(rows_per_commit: usize, total_rows: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .create(dir.path().join("raw.redb"))
        .expect("create");
    let value = [7_u8; 100];
    let commits = total_rows / rows_per_commit;
    let mut n: u64 = 0;
    let start = Instant::now();
    for _ in 0..commits {
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut tables: Vec<_> = TABLES
                .iter()
                .map(|t| txn.open_table(*t).expect("table"))
                .collect();
            for r in 0..rows_per_commit {
                n += 1;
                // Recent instances: a growing id, several rows per instance.
                let id = u128::from(n / 8) << 64 | u128::from(n % 8);
                let t = &mut tables[r % TABLES.len()];
                t.insert((id, n), value.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let secs = start.elapsed().as_secs_f64().max(f64::EPSILON);
    (
        commits as f64 / secs,
        (commits * rows_per_commit) as f64 / secs,
    )
}

/// Rows per commit, durable commits/s and rows/s of each batch size, the total per batch
/// size about `budget` rows (small commits are slow: a fortieth of it below 100 rows).
pub(crate) fn run_all(budget: usize) -> Vec<(usize, f64, f64)> {
    let mut out = Vec::new();
    for rows in [1_usize, 10, 100, 1_000, 2_500] {
        // Small commits are slow: cap their run at about the same wall time.
        let total = if rows < 100 {
            (budget / 40).max(rows)
        } else {
            budget.max(rows)
        };
        let (c, r) = run(rows, total - total % rows);
        out.push((rows, c, r));
        std::thread::sleep(Duration::from_millis(200));
    }
    out
}

/// Rows the store writes per durable step completion, about (see the module docs).
pub(crate) const ROWS_PER_COMPLETION: f64 = 8.0;
