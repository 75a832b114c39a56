//! Every benchmark that crosses crates, in one run: claims, durable step completions and
//! end-to-end 3-step sagas on the memory, redb and PostgreSQL stores side by side, the raw
//! ceilings (raw redb rows/s, raw pgbench) measured in the same run, and the ratios.
//!
//! ```text
//! cargo bench -p floxy-benches                       # everything; writes benches/RESULTS.md
//! cargo bench -p floxy-benches -- --quick            # smaller sizes, shorter runs
//! cargo bench -p floxy-benches -- --parts claims,sagas --backends memory,redb
//! cargo bench -p floxy-benches --features mimalloc   # mimalloc as the global allocator
//! ```
//!
//! Parts (`--parts`, comma-separated; default all):
//!
//! * `claims`: claims/s of `W` concurrent workers draining a prefilled queue (every
//!   backend), and the single-thread CPU cost of claims on the memory store;
//! * `completions`: durable step completions/s, plain and in eager chains (every backend);
//! * `sagas`: 3-step sagas/s through the engine (every backend);
//! * `ceilings`: raw redb rows/s per commit size, next to the redb store's completions
//!   (backend `redb`); floxy's claim + complete next to raw pgbench on the same server
//!   (backend `postgres`);
//! * `latency`: PostgreSQL claim latency by queue size (backend `postgres`);
//! * `rows`: PostgreSQL row work per no-op step (statements, rows, WAL, tuples and HOT
//!   updates per table, from `pg_stat_statements` and `pg_stat_user_tables` on a cluster of
//!   its own; backend `postgres`);
//! * `events`: the cost of `Engine::subscribe` on sagas/s, no / stalled / draining
//!   subscriber (backend `memory`).
//!
//! Backends (`--backends`, comma-separated; default all): `memory`, `redb`, `postgres`.
//! PostgreSQL parts start a throwaway cluster with `floxy_store_postgres::testing` (or use
//! `FLOXY_TEST_DATABASE_URL`); when there is no server they say so loudly and are reported
//! as not run.
//!
//! Sizes: `--secs S` (each timed PostgreSQL claim + complete and pgbench run; default 5),
//! `--workers 1,4,16` (worker counts of the claims, completions and ceilings parts),
//! `--claims N` (instances prefilled per claims run; default 50 000), `--steps N` (instances
//! of 3 steps per completions run; default 20 000), `--sagas N` (default 10 000),
//! `--max-queue N` (largest queue of the latency table; default 100 000), `--quick`
//! (smaller defaults for all of them).
//!
//! Report: a run of every part on every backend overwrites `benches/RESULTS.md`; other runs
//! print only, unless `--out FILE` names a file to write.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    // Rates and sizes: counts far below 2^52 shown as floats, percentages rounded to
    // integers.
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod claim_cpu;
mod events;
mod postgres;
mod raw_redb;
mod report;
mod rows;
mod stores;

use report::Report;
use std::path::PathBuf;

/// The parts, in the order they run.
const PARTS: [&str; 7] = [
    "claims",
    "completions",
    "sagas",
    "ceilings",
    "latency",
    "rows",
    "events",
];

/// A store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `floxy-store-memory`.
    Memory,
    /// `floxy-store-redb`, a fresh file per run, durable commits.
    Redb,
    /// `floxy-store-postgres`, a fresh schema per run, `fsync=on`.
    Postgres,
}

impl Backend {
    const ALL: [Backend; 3] = [Backend::Memory, Backend::Redb, Backend::Postgres];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redb => "redb",
            Backend::Postgres => "postgres",
        }
    }
}

/// What to run, and how long.
pub(crate) struct Opts {
    parts: Vec<String>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) secs: u64,
    pub(crate) workers: Vec<usize>,
    pub(crate) claims: usize,
    pub(crate) steps: usize,
    pub(crate) sagas: usize,
    pub(crate) max_queue: u64,
    quick: bool,
    out: Option<PathBuf>,
}

impl Opts {
    /// Whether part `name` runs.
    pub(crate) fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p == name)
    }

    /// Whether backend `b` runs.
    fn backend(&self, b: Backend) -> bool {
        self.backends.contains(&b)
    }

    /// Every part on every backend.
    fn full(&self) -> bool {
        self.parts.len() == PARTS.len() && self.backends.len() == Backend::ALL.len()
    }

    fn parse(args: &[String]) -> Result<Self, String> {
        fn value<'a>(
            name: &str,
            it: &mut impl Iterator<Item = &'a String>,
        ) -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        }
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: not a number: {v}"))
        }
        fn list(v: &str) -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Opts {
            parts: PARTS.iter().map(|p| (*p).to_owned()).collect(),
            backends: Backend::ALL.to_vec(),
            secs: if quick { 2 } else { 5 },
            workers: vec![1, 4, 16],
            claims: if quick { 10_000 } else { 50_000 },
            steps: if quick { 2_000 } else { 20_000 },
            sagas: if quick { 2_000 } else { 10_000 },
            max_queue: if quick { 10_000 } else { 100_000 },
            quick,
            out: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // `--name=value` or `--name value`.
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut val = || inline.clone().map_or_else(|| value(name, &mut it), Ok);
            match name {
                "--bench" | "--quick" => {}
                "--parts" => {
                    o.parts = list(&val()?);
                    if let Some(p) = o.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                        return Err(format!("unknown part {p} (parts: {})", PARTS.join(",")));
                    }
                }
                "--backends" => {
                    o.backends = Vec::new();
                    for b in list(&val()?) {
                        let b = Backend::ALL
                            .into_iter()
                            .find(|x| x.name() == b)
                            .ok_or_else(|| format!("unknown backend {b} (memory,redb,postgres)"))?;
                        o.backends.push(b);
                    }
                }
                "--secs" => o.secs = num(name, &val()?)?,
                "--workers" => {
                    o.workers = list(&val()?)
                        .iter()
                        .map(|w| num(name, w))
                        .collect::<Result<_, _>>()?;
                }
                "--claims" => o.claims = num(name, &val()?)?,
                "--steps" => o.steps = num(name, &val()?)?,
                "--sagas" => o.sagas = num(name, &val()?)?,
                "--max-queue" => o.max_queue = num(name, &val()?)?,
                "--out" => o.out = Some(PathBuf::from(val()?)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if o.workers.is_empty() || o.workers.contains(&0) {
            return Err("--workers: a list of worker counts above 0".to_owned());
        }
        Ok(o)
    }
}

#[allow(clippy::too_many_lines)] // the run, part by part
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs the target without it:
    // measuring there would only slow the tests down.
    if !args.iter().any(|a| a == "--bench") {
        println!("floxy-benches: run with `cargo bench -p floxy-benches` (nothing measured)");
        return;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("floxy-benches: {e}\n(see benches/benches/all/main.rs for the flags)");
            std::process::exit(2);
        }
    };
    let command = format!(
        "cargo bench -p floxy-benches{}{}",
        if cfg!(feature = "mimalloc") {
            " --features mimalloc"
        } else {
            ""
        },
        {
            let rest: Vec<&String> = args.iter().filter(|a| *a != "--bench").collect();
            if rest.is_empty() {
                String::new()
            } else {
                format!(
                    " -- {}",
                    rest.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
        }
    );
    let mut report = Report::default();
    println!("floxy-benches on {}", report::machine());
    println!("{command}");

    // The single-thread CPU cost of claims (memory store): outside any runtime.
    if opts.part("claims") && opts.backend(Backend::Memory) {
        let rates = claim_cpu::run(if opts.quick { 0.3 } else { 1.0 });
        report.section("Memory store: claims on one thread (claimed items per CPU second)");
        report.line(
            "100 000 queued items (10 000 instances of 10 steps, 1 000 run_at values, 5 \
             priorities) drained by claims of a fixed batch; thread CPU time.",
        );
        report.line("");
        report.line("| handlers | batch | items/s |");
        report.line("|---|---:|---:|");
        for (label, batch, rate) in rates {
            report.line(&format!("| {label} | {batch} | {rate:.0} |"));
        }
    }

    // A PostgreSQL server, if a PostgreSQL part runs.
    let wants_pg = opts.backend(Backend::Postgres);
    let server = if wants_pg {
        match postgres::server() {
            Ok(s) => Some(s),
            Err(e) => {
                let banner = "!".repeat(78);
                eprintln!(
                    "{banner}\n!! PostgreSQL parts NOT RUN: no PostgreSQL server.\n!! {e}\n{banner}"
                );
                report.section("PostgreSQL: NOT RUN");
                report.line(&format!(
                    "**The PostgreSQL parts did not run**: no PostgreSQL server ({e})."
                ));
                None
            }
        }
    } else {
        None
    };
    let pg_url = server.as_ref().map(|(_, url)| url.as_str());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let figures = stores::run(&opts, pg_url, &mut report).await;
        if opts.part("ceilings") && opts.backend(Backend::Redb) {
            redb_ceiling(&opts, &figures, &mut report);
        }
        if let Some(url) = pg_url
            && (opts.part("ceilings") || opts.part("latency"))
        {
            postgres::run(&opts, url, &mut report).await;
        }
        if pg_url.is_some() && opts.part("rows") {
            rows::run(opts.quick, &mut report).await;
        }
        if opts.part("events") && opts.backend(Backend::Memory) {
            events::run(opts.quick, &mut report).await;
        }
    });
    drop(rt);
    if wants_pg && server.is_none() {
        eprintln!(
            "floxy-benches: the PostgreSQL parts did NOT run (no PostgreSQL server, see above)"
        );
    }
    drop(server);

    let out = opts.out.clone().or_else(|| {
        opts.full()
            .then(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md")))
    });
    if let Some(path) = out {
        match report.write(&path, &command) {
            Ok(()) => eprintln!("floxy-benches: wrote {}", path.display()),
            Err(e) => {
                eprintln!("floxy-benches: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
}

/// Raw redb (one writer thread, durable commits of `R` rows) and the redb store's durable
/// completions measured in this run, as rows/s against that ceiling.
fn redb_ceiling(opts: &Opts, figures: &stores::Figures, report: &mut Report) {
    eprintln!("  raw redb ...");
    let raw = raw_redb::run_all(if opts.quick { 20_000 } else { 200_000 });
    report.section(
        "redb: raw redb ceiling (durability immediate, ~100-byte rows, one writer thread)",
    );
    report.line("| rows per commit | commits/s | rows/s |");
    report.line("|---:|---:|---:|");
    for (rows, c, r) in &raw {
        report.line(&format!("| {rows} | {c:.0} | {r:.0} |"));
    }
    let best = raw.iter().map(|x| x.2).fold(0.0, f64::max);
    let mut lines = Vec::new();
    for (label, rows) in [
        ("durable step completions", &figures.completions),
        ("durable completions, eager chains", &figures.chains),
    ] {
        for (w, row) in rows {
            let c = stores::rate_of(row, Backend::Redb);
            if c > 0.0 {
                let implied = c * raw_redb::ROWS_PER_COMPLETION;
                lines.push(format!(
                    "| {label} | {w} | {c:.0} | {implied:.0} | {best:.0} | {} |",
                    stores::ratio(implied, best)
                ));
            }
        }
    }
    if !lines.is_empty() {
        report.line("");
        report.line(&format!(
            "The store writes about {} rows per durable step completion (claim: step row and \
             event; completion: instance row, one or two step rows, event; plus the live / \
             terminal index rows at the ends of an instance); the ceiling is the best raw \
             rows/s above. Above 100 %: the store's group commits hold more rows than the \
             largest raw commit, or write fewer rows per completion than assumed.",
            raw_redb::ROWS_PER_COMPLETION
        ));
        report.line("");
        report.line("| redb store | workers | completions/s | rows/s (implied) | raw redb rows/s | store / raw |");
        report.line("|---|---:|---:|---:|---:|---:|");
        for l in lines {
            report.line(&l);
        }
    }
}
