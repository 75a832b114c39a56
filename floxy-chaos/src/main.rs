//! `floxy-chaos`: chaos-test floxy on the memory store, redb or PostgreSQL.
//!
//! ```text
//! floxy-chaos run --backend postgres --profile short --seed 42 --json report.json
//! floxy-chaos run --backend redb --duration 10m --worker-processes 1
//! floxy-chaos sim --seeds 1..1000
//! floxy-chaos sim --seed 17            # replay one seed with its full report
//! floxy-chaos proxy --listen 127.0.0.1:8474
//! ```
//!
//! Exit status: 0 when every invariant held, 1 on a violation, 2 when the run could not be
//! set up.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use floxy_chaos::backend::{Backend, BackendKind, BackendOptions};
use floxy_chaos::inject::failpoints::FailpointSpec;
use floxy_chaos::inject::handler::HandlerFaults;
use floxy_chaos::inject::store::StoreFaults;
use floxy_chaos::ledger::Ledger;
use floxy_chaos::process::WorkerProcesses;
use floxy_chaos::report::Report;
use floxy_chaos::runner::{Run, Scenario};
use floxy_chaos::workload::Builtin;
use floxy_chaos::{FaultCounters, profiles, sim};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "floxy-chaos",
    version,
    about = "Chaos testing for the floxy workflow engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a chaos scenario against a backend (real time).
    Run(Box<RunArgs>),
    /// Runs the deterministic simulation (memory store, virtual time) over seeds.
    Sim(SimArgs),
    /// Serves the Toxiproxy-compatible proxy and its HTTP API until interrupted.
    Proxy(ProxyArgs),
    /// A worker process of a multi-process run (started by `run --worker-processes`).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Parses `500ms`, `20s`, `10m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1_000)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3_600_000)
    } else {
        (s, 1_000)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    let ms = n * f64::from(mul);
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    // Finite and not negative: `as` drops the sub-millisecond part (and saturates above).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Duration::from_millis(ms as u64))
}

/// Parses `A..B` (exclusive) or `A..=B` or a single number.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    if let Some((a, b)) = s.split_once("..=") {
        let a: u64 = a.parse().map_err(|_| format!("bad range {s:?}"))?;
        let b: u64 = b.parse().map_err(|_| format!("bad range {s:?}"))?;
        Ok((a, b.saturating_add(1)))
    } else if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a.parse().map_err(|_| format!("bad range {s:?}"))?;
        let b: u64 = b.parse().map_err(|_| format!("bad range {s:?}"))?;
        Ok((a, b))
    } else {
        let a: u64 = s.parse().map_err(|_| format!("bad range {s:?}"))?;
        Ok((a, a + 1))
    }
}

#[derive(Args, Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // command-line flags
struct RunArgs {
    /// memory, redb or postgres.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// short, default, stress or soak.
    #[arg(long, default_value = "default")]
    profile: String,
    /// The seed (replays the workload and the fault decisions).
    #[arg(long)]
    seed: Option<u64>,
    /// Length of the fault phase (`60s`, `10m`, ...).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Instances kept in flight.
    #[arg(long)]
    concurrency: Option<usize>,
    /// In-process engines.
    #[arg(long)]
    engines: Option<usize>,
    /// Workers per engine.
    #[arg(long)]
    workers: Option<usize>,
    /// Workloads: simple, complex, parallel, nested, random (comma-separated).
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Probability of a business failure per task step.
    #[arg(long)]
    business_failure_rate: Option<f64>,
    /// Probability of an operator cancel per instance.
    #[arg(long)]
    cancel_rate: Option<f64>,
    /// Probability of an operator abort per instance.
    #[arg(long)]
    abort_rate: Option<f64>,
    /// Handler panic probability.
    #[arg(long)]
    handler_panic: Option<f64>,
    /// Handler error probability.
    #[arg(long)]
    handler_error: Option<f64>,
    /// Handler hang probability.
    #[arg(long)]
    handler_hang: Option<f64>,
    /// Handler sleep probability.
    #[arg(long)]
    handler_sleep: Option<f64>,
    /// Store error probability.
    #[arg(long)]
    store_error: Option<f64>,
    /// Store latency probability.
    #[arg(long)]
    store_latency: Option<f64>,
    /// Store lost-reply probability.
    #[arg(long)]
    store_lost_reply: Option<f64>,
    /// No faults at all (handlers, store, crashes, network): a baseline.
    #[arg(long)]
    no_faults: bool,
    /// Never crash in-process engines.
    #[arg(long)]
    no_engine_crash: bool,
    /// Arm a failpoint `NAME=ACTIONS` (repeatable; needs the `failpoints` feature), or
    /// `crash` for the built-in crash profile.
    #[arg(long = "failpoint")]
    failpoints: Vec<String>,
    /// PostgreSQL: connect directly, without the proxy and its network faults.
    #[arg(long)]
    no_proxy: bool,
    /// PostgreSQL: immediate restarts during the fault phase.
    #[arg(long)]
    pg_restarts: Option<u32>,
    /// PostgreSQL: database URL (default: a throwaway cluster).
    #[arg(long)]
    pg_url: Option<String>,
    /// redb: the file (default: a temp file).
    #[arg(long)]
    redb_path: Option<PathBuf>,
    /// Worker processes to run (and SIGKILL at random) besides the in-process engines
    /// (PostgreSQL), or the one process holding the file (redb).
    #[arg(long, default_value_t = 0)]
    worker_processes: usize,
    /// Pause between two worker kills (`2s..6s` or `3s`).
    #[arg(long, default_value = "2s..6s")]
    kill_every: String,
    /// Stats line interval (0 = off).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    stats_interval: Duration,
    /// Time instances get to settle once faults stop.
    #[arg(long, value_parser = parse_duration)]
    settle_timeout: Option<Duration>,
    /// Steady mode: validate instances as they settle and remove finished ones older than
    /// this from the store (`30s`; `0s` keeps everything and validates at the end). The
    /// soak profile uses 30 s.
    #[arg(long, value_parser = parse_duration)]
    retention: Option<Duration>,
    /// Largest growth of memory, descriptors and tasks from the one-minute figure to the
    /// end of the fault phase, in percent (checked on fault phases of two minutes or more).
    #[arg(long)]
    max_resource_growth: Option<f64>,
    /// Largest rollback depth accepted.
    #[arg(long)]
    max_rollback_depth: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A scenario as JSON (the fields of `Scenario`); command-line options override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SimArgs {
    /// Seeds to run (`1..1000`, `1..=50`).
    #[arg(long, default_value = "1..101")]
    seeds: String,
    /// Replay one seed and print its full report.
    #[arg(long)]
    seed: Option<u64>,
    /// A lighter scenario (3 virtual seconds, 4 in flight) for large sweeps.
    #[arg(long)]
    quick: bool,
    /// Heavier faults (the `stress` profile's handler and store faults, more crashes).
    #[arg(long)]
    heavy: bool,
    /// Arm a failpoint `NAME=ACTIONS` (repeatable; needs the `failpoints` feature), or
    /// `crash` for the built-in crash profile.
    #[arg(long = "failpoint")]
    failpoints: Vec<String>,
    /// Write the JSON report (one seed) or sweep summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8474")]
    listen: std::net::SocketAddr,
    /// Seed of toxicity draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// memory is not allowed: redb or postgres.
    #[arg(long)]
    backend: String,
    /// The scenario (JSON file).
    #[arg(long)]
    scenario: PathBuf,
    #[arg(long)]
    pg_url: Option<String>,
    #[arg(long)]
    pg_schema: Option<String>,
    #[arg(long)]
    redb_path: Option<PathBuf>,
    /// Start instances too (and adopt those in the store), not only work.
    #[arg(long)]
    drive: bool,
    #[arg(long, default_value_t = 0)]
    index: usize,
    #[arg(long, default_value_t = 0)]
    generation: u64,
    /// Ledger file.
    #[arg(long)]
    ledger: PathBuf,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOXY_CHAOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,floxy=error,sqlx=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    floxy_chaos::panics::quiet_injected_panics();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Sim(a) => sim_cmd(&a),
        Cmd::Run(a) => runtime().and_then(|rt| rt.block_on(run_cmd(*a))),
        Cmd::Proxy(a) => runtime().and_then(|rt| rt.block_on(proxy_cmd(a))),
        Cmd::Worker(a) => runtime().and_then(|rt| rt.block_on(worker_cmd(a))),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("floxy-chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn write_json(path: Option<&Path>, json: &str) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn finish(report: &Report, json: Option<&Path>) -> Result<i32> {
    println!("{}", report.to_text());
    write_json(json, &report.to_json())?;
    Ok(i32::from(!report.passed()))
}

fn sim_cmd(a: &SimArgs) -> Result<i32> {
    let quick = a.quick;
    let heavy = a.heavy;
    let mut fps = Vec::new();
    for f in &a.failpoints {
        if f == "crash" {
            fps.extend(FailpointSpec::crash_profile());
        } else {
            fps.push(FailpointSpec::parse(f)?);
        }
    }
    let adjust = move |sc: &mut Scenario| {
        if quick {
            sc.duration_ms = 3_000;
            sc.concurrency = 4;
            sc.workload.random_graphs = 2;
        }
        if heavy {
            if let Some((stress, _)) = profiles::profile("stress", BackendKind::Memory, sc.seed) {
                sc.handler_faults = stress.handler_faults;
                sc.store_faults = stress.store_faults;
            }
            sc.engine_crash_ms = Some((1_000, 3_000));
        }
        sc.failpoints.clone_from(&fps);
    };
    if let Some(seed) = a.seed {
        let mut sc = sim::scenario(seed);
        adjust(&mut sc);
        let r = sim::run(sc)?;
        return finish(&r, a.json.as_deref());
    }
    let (from, to) = parse_range(&a.seeds).map_err(|e| anyhow!(e))?;
    let t = std::time::Instant::now();
    let s = sim::sweep(from..to, adjust, |r| {
        if !r.passed() {
            eprintln!(
                "seed {}: FAIL {:?} (replay: floxy-chaos sim --seed {}{})",
                r.seed,
                r.violations_by_kind,
                r.seed,
                if quick { " --quick" } else { "" },
            );
        }
    })?;
    println!(
        "simulation: {} seeds, {} passed, {} failed, {} instances, {:.1?}",
        s.seeds,
        s.passed,
        s.failed.len(),
        s.instances,
        t.elapsed()
    );
    write_json(a.json.as_deref(), &serde_json::to_string_pretty(&s)?)?;
    Ok(i32::from(!s.failed.is_empty()))
}

fn scenario_of(a: &RunArgs, kind: BackendKind) -> Result<(Scenario, BackendOptions)> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_nanos() % 1_000_000_007).unwrap_or(1)
            })
    });
    let (mut sc, mut bo) = profiles::profile(&a.profile, kind, seed).ok_or_else(|| {
        anyhow!(
            "unknown profile {:?} (one of {:?})",
            a.profile,
            profiles::PROFILES
        )
    })?;
    if let Some(p) = &a.scenario {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        sc = serde_json::from_str(&text).context("parsing the scenario")?;
        if a.seed.is_some() {
            sc.seed = seed;
        }
    }
    if let Some(d) = a.duration {
        sc.duration_ms = millis(d);
    }
    macro_rules! set {
        ($src:expr, $dst:expr) => {
            if let Some(v) = $src {
                $dst = v;
            }
        };
    }
    set!(a.concurrency, sc.concurrency);
    set!(a.engines, sc.engines);
    set!(a.workers, sc.workers);
    set!(a.business_failure_rate, sc.business_failure_rate);
    set!(a.cancel_rate, sc.cancel_rate);
    set!(a.abort_rate, sc.abort_rate);
    set!(a.handler_panic, sc.handler_faults.panic);
    set!(a.handler_error, sc.handler_faults.error);
    set!(a.handler_hang, sc.handler_faults.hang);
    set!(a.handler_sleep, sc.handler_faults.sleep);
    set!(a.store_error, sc.store_faults.error);
    set!(a.store_latency, sc.store_faults.latency);
    set!(a.store_lost_reply, sc.store_faults.lost_reply);
    set!(a.max_rollback_depth, sc.limits.max_rollback_depth);
    set!(a.pg_restarts, bo.pg_restarts);
    if let Some(t) = a.settle_timeout {
        sc.limits.settle_timeout_ms = millis(t);
    }
    if let Some(r) = a.retention {
        sc.retention_ms = Some(millis(r)).filter(|&ms| ms > 0);
    }
    if let Some(pct) = a.max_resource_growth {
        if !(pct.is_finite() && pct >= 0.0) {
            bail!("--max-resource-growth must be a percentage >= 0, got {pct}");
        }
        sc.limits.max_resource_growth = Some(pct / 100.0);
    }
    if a.worker_processes > 0 && sc.retention_ms.is_some() {
        // Worker processes write their ledger to files merged at the end: nothing can be
        // validated (and forgotten) before that.
        eprintln!(
            "floxy-chaos: worker processes: steady mode off, every instance is validated at the end"
        );
        sc.retention_ms = None;
        sc.limits.max_resource_growth = None;
    }
    if let Some(ws) = &a.workloads {
        sc.workloads = ws
            .iter()
            .map(|w| Builtin::parse(w.trim()).ok_or_else(|| anyhow!("unknown workload {w:?}")))
            .collect::<Result<_>>()?;
    }
    if a.no_faults {
        sc.handler_faults = HandlerFaults::default();
        sc.store_faults = StoreFaults::default();
        sc.engine_crash_ms = None;
        bo.network = None;
        bo.pg_restarts = 0;
    }
    if a.no_engine_crash {
        sc.engine_crash_ms = None;
    }
    if a.no_proxy {
        bo.network = None;
    }
    for f in &a.failpoints {
        if f == "crash" {
            sc.failpoints.extend(FailpointSpec::crash_profile());
        } else {
            sc.failpoints.push(FailpointSpec::parse(f)?);
        }
    }
    sc.stats_interval_ms = millis(a.stats_interval);
    bo.pg_url.clone_from(&a.pg_url);
    bo.redb_path.clone_from(&a.redb_path);
    Ok((sc, bo))
}

async fn run_cmd(a: RunArgs) -> Result<i32> {
    let kind = BackendKind::parse(&a.backend)
        .ok_or_else(|| anyhow!("unknown backend {:?} (memory, redb, postgres)", a.backend))?;
    let (sc, bo) = scenario_of(&a, kind)?;
    eprintln!(
        "floxy-chaos: {} on {} for {} ms, seed {} (replay with --seed {})",
        sc.name,
        kind.as_str(),
        sc.duration_ms,
        sc.seed,
        sc.seed
    );
    if a.worker_processes > 0 && kind == BackendKind::Redb {
        return redb_process_run(&a, sc, bo).await;
    }
    if a.worker_processes > 0 && kind == BackendKind::Memory {
        bail!("worker processes need a shared durable store: use --backend redb or postgres");
    }
    let baseline_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let backend = Backend::open(&bo, sc.seed).await?;
    let mut sc = sc;
    // Backend tasks (pool, committers, proxy connections) come and go with the backend:
    // count leaks against the baseline from before it was opened, after it is closed.
    sc.limits.check_task_leak = kind == BackendKind::Memory;
    let ledger = Arc::new(Ledger::new());
    let mut run = Run::new(sc.clone(), Arc::clone(&backend.store), backend.name.clone())
        .ledger(Arc::clone(&ledger))
        .notes(backend.notes.clone());
    if let Some(p) = &backend.pooled {
        run = run.pooled(Arc::clone(p));
    }
    if let Some(es) = &backend.engine_store {
        run = run.engine_store(Arc::clone(es));
    }
    for d in &backend.disruptors {
        run = run.disruptor(Arc::clone(d));
    }
    let tmp = floxy_chaos::backend::temp_path("floxy-chaos-workers", "");
    if a.worker_processes > 0 {
        let scenario_file = tmp.with_extension("scenario.json");
        std::fs::create_dir_all(&tmp)?;
        let mut child_sc = sc.clone();
        child_sc.stats_interval_ms = 0;
        std::fs::write(&scenario_file, serde_json::to_string(&child_sc)?)?;
        let mut args = vec![
            "worker".to_owned(),
            "--backend".to_owned(),
            kind.as_str().to_owned(),
            "--scenario".to_owned(),
            scenario_file.display().to_string(),
        ];
        args.extend(backend.child_args.iter().cloned());
        let interval = kill_interval(&a.kill_every)?;
        let exe = std::env::current_exe()?;
        let procs = WorkerProcesses::start(
            exe,
            args,
            a.worker_processes,
            tmp.clone(),
            interval,
            Arc::clone(&ledger),
        )
        .await
        .map_err(|e| anyhow!(e))?;
        run = run.disruptor(procs);
    }
    // A run that does not end by itself is a hang of the system under test (or of this
    // tool): stop waiting, say so, exit 2.
    let budget = Duration::from_millis(
        sc.duration_ms
            .saturating_add(sc.limits.settle_timeout_ms)
            .saturating_add(300_000),
    );
    let Ok(report) = tokio::time::timeout(budget, run.execute()).await else {
        eprintln!(
            "floxy-chaos: the run did not finish within {budget:?}: hung (replay with --seed {})",
            sc.seed
        );
        std::process::exit(2);
    };
    backend.close().await;
    let _ = std::fs::remove_file(tmp.with_extension("scenario.json"));
    let mut report = report?;
    if !sc.limits.check_task_leak {
        check_leak_after_close(&mut report, baseline_tasks, sc.limits.task_drain_timeout_ms).await;
    }
    finish(&report, a.json.as_deref())
}

/// Waits (bounded) for the task count to come back to `baseline` after the backend was
/// closed; a violation if it does not.
async fn check_leak_after_close(report: &mut Report, baseline: usize, drain_ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(drain_ms);
    let mut n = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    while n > baseline && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
    }
    report.final_tasks = n;
    report.baseline_tasks = baseline;
    if n > baseline {
        report.add_violation(floxy_chaos::validate::Violation::new(
            "task_leak",
            format!("{n} tokio tasks alive after the engines and the backend were closed, {baseline} before"),
        ));
    }
}

fn kill_interval(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let a = millis(parse_duration(a).map_err(|e| anyhow!(e))?);
    let b = millis(parse_duration(b).map_err(|e| anyhow!(e))?);
    Ok((a.min(b), a.max(b)))
}

/// redb with process faults: a worker process holds the file, drives the workload and is
/// `SIGKILLed` and restarted; then this process opens the file, settles and validates.
async fn redb_process_run(a: &RunArgs, sc: Scenario, mut bo: BackendOptions) -> Result<i32> {
    use floxy_chaos::runner::Disruptor as _;
    let path = bo
        .redb_path
        .clone()
        .unwrap_or_else(|| floxy_chaos::backend::temp_path("floxy-chaos", ".redb"));
    let temp_file = bo.redb_path.is_none();
    let tmp = floxy_chaos::backend::temp_path("floxy-chaos-workers", "");
    std::fs::create_dir_all(&tmp)?;
    let scenario_file = tmp.with_extension("scenario.json");
    let mut child_sc = sc.clone();
    child_sc.stats_interval_ms = 0;
    child_sc.duration_ms = u64::MAX / 4;
    std::fs::write(&scenario_file, serde_json::to_string(&child_sc)?)?;
    let ledger = Arc::new(Ledger::new());
    let counters = FaultCounters::default();
    let args = vec![
        "worker".to_owned(),
        "--backend".to_owned(),
        "redb".to_owned(),
        "--scenario".to_owned(),
        scenario_file.display().to_string(),
        "--redb-path".to_owned(),
        path.display().to_string(),
        "--drive".to_owned(),
    ];
    let interval = kill_interval(&a.kill_every)?;
    let procs = WorkerProcesses::start(
        std::env::current_exe()?,
        args,
        1,
        tmp.clone(),
        interval,
        Arc::clone(&ledger),
    )
    .await
    .map_err(|e| anyhow!(e))?;
    let end = tokio::time::Instant::now() + Duration::from_millis(sc.duration_ms);
    let mut rng = floxy_chaos::rng::rng_for(sc.seed, "redb-kill", &[]);
    loop {
        let wait = floxy_chaos::rng::between(&mut rng, interval.0, interval.1);
        let at = tokio::time::Instant::now() + Duration::from_millis(wait);
        if at >= end {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep_until(at).await;
        procs
            .disrupt(&mut rng, &counters)
            .await
            .map_err(|e| anyhow!(e))?;
        eprintln!(
            "[redb] worker process killed (SIGKILL) and restarted: {} kills so far",
            counters.get("process.sigkill")
        );
    }
    procs.heal().await.map_err(|e| anyhow!(e))?;
    counters.add("process.sigkill");
    // Settle and validate in this process, without faults.
    bo.redb_path = Some(path.clone());
    let backend = Backend::open(&bo, sc.seed).await?;
    let mut settle = sc.clone();
    settle.duration_ms = 0;
    settle.handler_faults = HandlerFaults::default();
    settle.store_faults = StoreFaults::default();
    settle.engine_crash_ms = None;
    settle.failpoints.clear();
    let report = Run::new(
        settle,
        Arc::clone(&backend.store),
        "redb (worker process SIGKILLed)",
    )
    .ledger(ledger)
    .counters(counters)
    .adopt_existing(true)
    .notes(vec![format!(
        "fault phase of {} ms ran in a worker process holding {}; this run settles and validates",
        sc.duration_ms,
        path.display()
    )])
    .execute()
    .await;
    backend.close().await;
    if temp_file {
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&scenario_file);
    let _ = std::fs::remove_dir_all(&tmp);
    let mut report = report?;
    report.fault_phase_ms = sc.duration_ms;
    finish(&report, a.json.as_deref())
}

async fn proxy_cmd(a: ProxyArgs) -> Result<i32> {
    let server = floxy_chaos::proxy::ProxyServer::new(a.seed);
    let h = floxy_chaos::proxy::api::serve(server, a.listen).await?;
    eprintln!("Toxiproxy-compatible API on http://{}", h.addr);
    tokio::signal::ctrl_c().await?;
    h.shutdown().await;
    Ok(0)
}

async fn worker_cmd(a: WorkerArgs) -> Result<i32> {
    tokio::spawn(floxy_chaos::process::exit_when_stdin_closes());
    let text = std::fs::read_to_string(&a.scenario)?;
    let mut sc: Scenario = serde_json::from_str(&text)?;
    // Every worker process draws its own faults and instance ids (same workload).
    sc.salt = floxy_chaos::rng::mix(1, &[&a.index.to_le_bytes(), &a.generation.to_le_bytes()]);
    sc.stats_interval_ms = 0;
    let ledger = Arc::new(Ledger::with_file(&a.ledger)?);
    let kind = BackendKind::parse(&a.backend).ok_or_else(|| anyhow!("bad backend"))?;
    let bo = BackendOptions {
        kind,
        redb_path: a.redb_path.clone(),
        pg_url: a.pg_url.clone(),
        pg_schema: a.pg_schema.clone(),
        ..BackendOptions::default()
    };
    let backend = Backend::open(&bo, sc.seed).await?;
    if a.drive {
        // Drives and works until killed.
        let r = Run::new(sc, Arc::clone(&backend.store), "worker")
            .ledger(ledger)
            .adopt_existing(true)
            .execute()
            .await;
        backend.close().await;
        r?;
        return Ok(0);
    }
    // Works only: engines with the workload's handlers, until killed.
    let r = floxy_chaos::runner::work_only(sc, Arc::clone(&backend.store), ledger).await;
    backend.close().await;
    r?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{kill_interval, parse_duration};
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.4ms"), Ok(Duration::ZERO));
        for bad in ["-1s", "NaN", "infs", "x", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(kill_interval("6s..2s").ok(), Some((2_000, 6_000)));
        assert_eq!(kill_interval("3s").ok(), Some((3_000, 3_000)));
    }
}
