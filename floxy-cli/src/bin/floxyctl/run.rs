//! Run mode: `run` (one instance of a flow file, to its end) and `resume` (the unfinished
//! instances of a durable store), with live progress drawn from the instance's events.

use crate::DbArgs;
use crate::input::{self, read_input};
use crate::render;
use clap::Args;
use floxy::{
    Engine, EngineError, Event, EventKind, InstanceId, InstanceQuery, InstanceRecord,
    InstanceSnapshot, InstanceStatus, MAX_PAGE_SIZE, Payload, PostgresLayout, StepRun, StepStatus,
    Timestamp,
};
use floxy_cli::exit::{CliError, CliResult, Exit, one_line};
use floxy_cli::flows::{FlowError, Flows, LoadOptions};
use floxy_cli::output::{OutputFormat, format_ms, to_json};
use floxy_cli::store::{OpenMode, OpenStore, StoreSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a finished run waits for its workers to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a run that timed out or was interrupted waits for running handlers.
const ABANDON_TIMEOUT: Duration = Duration::from_millis(500);

/// Options shared by `run` and `resume`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DriveArgs {
    /// The flow file (YAML or JSON): its handlers run the steps.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Handler executions at once.
    #[arg(short = 'w', long = "workers", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    workers: u16,
    /// Longest idle sleep of a worker between polls of the store.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = crate::duration_arg)]
    worker_interval: Duration,
    /// Give up waiting after this long (exit 7; a redb run can be resumed).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::duration_arg)]
    completion_timeout: Duration,
    /// Debug: print each handler call's input, output and stderr to stderr.
    #[arg(short = 'D', long = "debug")]
    debug: bool,
    /// No progress lines: only the final report.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    drive: DriveArgs,
    /// Input JSON file (`-` reads standard input). Without it, standard input is read when
    /// it is piped, else the input is `{}`.
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
    /// The flow to run (required when the file has several).
    #[arg(long, value_name = "NAME")]
    flow: Option<String>,
    /// Where the instance lives: `memory` (gone at exit) or `redb:PATH` (survives a crash:
    /// continue with `floxyctl resume`).
    #[arg(long, value_name = "memory|redb:PATH", default_value = "memory", value_parser = crate::store_arg)]
    store: StoreSpec,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    drive: DriveArgs,
    #[command(flatten)]
    db: DbArgs,
}

/// A flow-file error with its exit code.
pub(crate) fn flow_error(e: FlowError) -> CliError {
    if e.is_bad_input() {
        CliError::bad_input(e.to_string())
    } else {
        CliError::error(one_line(&e.to_string()))
    }
}

/// Loads the flow file and builds an engine over `store` with its handlers.
fn engine_for(drive: &DriveArgs, store: &OpenStore) -> CliResult<(Engine, Flows)> {
    let flows = floxy_cli::flows::load(&drive.file, LoadOptions::default().debug(drive.debug))
        .map_err(flow_error)?;
    let interval = u64::try_from(drive.worker_interval.as_millis()).unwrap_or(u64::MAX);
    let engine = Engine::builder(store.store())
        .workers(usize::from(drive.workers))
        .poll_interval_ms(interval)
        .build();
    flows.register_handlers(&engine);
    Ok((engine, flows))
}

pub(crate) async fn run(args: RunArgs, out: OutputFormat) -> CliResult<Exit> {
    let input = read_input(args.input.as_deref(), input::Default::StdinIfPiped)?;
    // Load the file before opening the store: a bad file must not create a redb file.
    let flows_check =
        floxy_cli::flows::load(&args.drive.file, LoadOptions::default()).map_err(flow_error)?;
    let def = flows_check
        .select(args.flow.as_deref())
        .map_err(flow_error)?
        .clone();
    drop(flows_check);
    let store = OpenStore::open(&args.store, OpenMode::Create).await?;
    let result = async {
        let (engine, flows) = engine_for(&args.drive, &store)?;
        let single = Flows::from_parts(flows.path(), vec![def.clone()], Vec::new());
        let ids = single
            .register_definitions(&engine)
            .await
            .map_err(flow_error)?;
        let wf = ids
            .into_iter()
            .next()
            .ok_or_else(|| CliError::error("no definition registered"))?;
        engine.start_workers()?;
        let id = engine.start(&wf, Payload::new(input)).await?;
        let deadline = Instant::now() + args.drive.completion_timeout;
        let mut progress = Progress::new(out, args.drive.quiet, def.steps.len(), None);
        progress.line(&format!("started instance {id} of {wf}"));
        let outcome = follow_interruptible(&engine, id, deadline, &mut progress).await;
        progress.finish();
        // A settled instance has nothing in flight; after a timeout or an interrupt the
        // running handlers are abandoned quickly (their leases expire: `resume` reruns them).
        let grace = if matches!(outcome, Followed::Settled) {
            SHUTDOWN_TIMEOUT
        } else {
            ABANDON_TIMEOUT
        };
        let report = finish_instance(&engine, id, outcome, out, &store).await;
        engine.shutdown(grace).await;
        report
    }
    .await;
    store.close().await;
    result
}

pub(crate) async fn resume(args: ResumeArgs, out: OutputFormat) -> CliResult<Exit> {
    let spec = args.db.spec()?;
    let store = OpenStore::open(&spec, OpenMode::Existing).await?;
    let result = async {
        if !args.db.no_migrate {
            store.migrate(PostgresLayout::Plain).await?;
        }
        let (engine, flows) = engine_for(&args.drive, &store)?;
        flows
            .register_definitions(&engine)
            .await
            .map_err(flow_error)?;
        let pending = unfinished(&engine).await?;
        if pending.is_empty() {
            match out {
                OutputFormat::Json => println!("{}", to_json(&Vec::<()>::new())),
                _ => println!("nothing to resume: no unfinished instance"),
            }
            return Ok(Exit::Ok);
        }
        engine.start_workers()?;
        let deadline = Instant::now() + args.drive.completion_timeout;
        let mut exits = Vec::new();
        let mut reports = Vec::new();
        for rec in &pending {
            let total = engine
                .workflow(&rec.workflow_id)
                .await
                .map_or(0, |w| w.definition().steps.len());
            let prefix = (pending.len() > 1).then(|| short_id(rec.id));
            let mut progress = Progress::new(out, args.drive.quiet, total, prefix);
            progress.line(&format!(
                "resuming instance {} of {} ({})",
                rec.id, rec.workflow_id, rec.status
            ));
            let outcome = follow_interruptible(&engine, rec.id, deadline, &mut progress).await;
            progress.finish();
            match outcome {
                Followed::Interrupted => {
                    engine.shutdown(ABANDON_TIMEOUT).await;
                    return Err(CliError::new(
                        Exit::Interrupted,
                        "interrupted; unfinished instances stay in the store",
                    ));
                }
                Followed::Error(e) => return Err(e),
                Followed::Settled | Followed::TimedOut => {}
            }
            let rec = engine
                .instance(rec.id)
                .await?
                .ok_or(EngineError::UnknownInstance(rec.id))?;
            let steps = engine.steps(rec.id).await?;
            let exit = if matches!(outcome, Followed::TimedOut) {
                Exit::Timeout
            } else {
                Exit::for_status(rec.status)
            };
            exits.push(exit);
            reports.push((rec, steps));
        }
        match out {
            OutputFormat::Json => {
                let docs: Vec<render::InstanceReport<'_>> = reports
                    .iter()
                    .map(|(r, s)| render::InstanceReport {
                        instance: r,
                        steps: s,
                    })
                    .collect();
                println!("{}", to_json(&docs));
            }
            _ => {
                let now = engine.clock().now();
                for (r, s) in &reports {
                    println!();
                    print!("{}", render::instance_header(r, now));
                    println!();
                    print!("{}", render::steps_table(s));
                }
            }
        }
        let grace = if exits.contains(&Exit::Timeout) {
            ABANDON_TIMEOUT
        } else {
            SHUTDOWN_TIMEOUT
        };
        engine.shutdown(grace).await;
        Ok(combined_exit(&exits))
    }
    .await;
    store.close().await;
    result
}

/// The exit code of several instances: a timeout if any timed out, 0 if all completed,
/// else the code of the first that did not complete.
fn combined_exit(exits: &[Exit]) -> Exit {
    if exits.contains(&Exit::Timeout) {
        Exit::Timeout
    } else {
        exits
            .iter()
            .copied()
            .find(|e| *e != Exit::Ok)
            .unwrap_or(Exit::Ok)
    }
}

/// Instances that still need the engine: running, rolling back, cancelling (or pending).
async fn unfinished(engine: &Engine) -> CliResult<Vec<InstanceRecord>> {
    let mut out = Vec::new();
    for status in [
        InstanceStatus::Pending,
        InstanceStatus::Running,
        InstanceStatus::RollingBack,
        InstanceStatus::Cancelling,
    ] {
        let mut after = None;
        loop {
            let page = engine
                .instances(&InstanceQuery {
                    status: Some(status),
                    after,
                    limit: MAX_PAGE_SIZE,
                    ..InstanceQuery::default()
                })
                .await?;
            out.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

fn short_id(id: InstanceId) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(8)..].to_owned()
}

/// How following an instance ended.
#[derive(Debug)]
enum Followed {
    Settled,
    TimedOut,
    Interrupted,
    Error(CliError),
}

async fn follow_interruptible(
    engine: &Engine,
    id: InstanceId,
    deadline: Instant,
    progress: &mut Progress,
) -> Followed {
    tokio::select! {
        r = follow(engine, id, deadline, progress) => match r {
            Ok(true) => Followed::Settled,
            Ok(false) => Followed::TimedOut,
            Err(e) => Followed::Error(e),
        },
        _ = tokio::signal::ctrl_c() => Followed::Interrupted,
    }
}

/// A fingerprint of what progress shows: the instance version and each step's status and
/// attempts (claims change steps without a new instance version).
fn fingerprint(s: &InstanceSnapshot) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.instance.version.hash(&mut h);
    s.instance.status.hash(&mut h);
    let mut steps: Vec<&StepRun> = s.steps.iter().collect();
    steps.sort_by(|a, b| a.step.cmp(&b.step));
    for r in steps {
        r.step.hash(&mut h);
        r.status.hash(&mut h);
        r.attempts.hash(&mut h);
        r.compensation_attempts.hash(&mut h);
    }
    h.finish()
}

/// Follows instance `id` until it settles (`Ok(true)`) or `deadline` passes (`Ok(false)`),
/// printing its events as they are committed.
async fn follow(
    engine: &Engine,
    id: InstanceId,
    deadline: Instant,
    progress: &mut Progress,
) -> CliResult<bool> {
    let last_fp = Arc::new(AtomicU64::new(0));
    loop {
        progress.print_new_events(engine, id).await?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let settled = Arc::new(AtomicBool::new(false));
        let seen = last_fp.load(Ordering::Relaxed);
        let (fp_out, settled_out) = (Arc::clone(&last_fp), Arc::clone(&settled));
        let waited = engine
            .wait_until(id, deadline - now, move |s| {
                let fp = fingerprint(s);
                let done = floxy::settled(s).is_some();
                settled_out.store(done, Ordering::Relaxed);
                if fp != seen || done {
                    fp_out.store(fp, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            })
            .await;
        match waited {
            Ok(_) if settled.load(Ordering::Relaxed) => {
                progress.print_new_events(engine, id).await?;
                return Ok(true);
            }
            Ok(_) => {}
            Err(EngineError::Timeout { .. }) => {
                progress.print_new_events(engine, id).await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints the final report of a `run` and picks its exit code.
async fn finish_instance(
    engine: &Engine,
    id: InstanceId,
    outcome: Followed,
    out: OutputFormat,
    store: &OpenStore,
) -> CliResult<Exit> {
    match outcome {
        Followed::Interrupted => {
            let hint = if store.is_durable() {
                format!(
                    "interrupted; instance {id} stays in {}: continue it with `floxyctl resume`",
                    store.spec()
                )
            } else {
                format!("interrupted; instance {id} is lost (memory store)")
            };
            return Err(CliError::new(Exit::Interrupted, hint));
        }
        Followed::Error(e) => return Err(e),
        Followed::Settled | Followed::TimedOut => {}
    }
    let rec = engine
        .instance(id)
        .await?
        .ok_or(EngineError::UnknownInstance(id))?;
    let steps = engine.steps(id).await?;
    match out {
        OutputFormat::Json => println!(
            "{}",
            to_json(&render::InstanceReport {
                instance: &rec,
                steps: &steps,
            })
        ),
        _ => {
            println!();
            print!("{}", render::instance_header(&rec, engine.clock().now()));
            println!();
            print!("{}", render::steps_table(&steps));
        }
    }
    if matches!(outcome, Followed::TimedOut) {
        eprintln!(
            "floxyctl: instance {id} did not settle in time (still {})",
            rec.status
        );
        return Ok(Exit::Timeout);
    }
    if let Some(waiting) = steps
        .iter()
        .find(|s| s.status == StepStatus::WaitingDecision)
        && rec.status == InstanceStatus::Running
    {
        if store.is_durable() {
            eprintln!(
                "floxyctl: step {} waits for a decision: floxyctl decide -o {id} --step {} --confirm|--reject --store {}, then floxyctl resume",
                waiting.step,
                waiting.step,
                store.spec()
            );
        } else {
            eprintln!(
                "floxyctl: step {} waits for a decision; the memory store ends with this process: run with --store redb:PATH to decide later (floxyctl decide) and continue (floxyctl resume)",
                waiting.step
            );
        }
    }
    Ok(Exit::for_status(rec.status))
}

/// Live progress of one instance: event lines, and on a terminal a spinner with the steps
/// running now.
struct Progress {
    bar: Option<ProgressBar>,
    to_stderr: bool,
    quiet: bool,
    start: Instant,
    last_seq: Option<u64>,
    total_steps: usize,
    started_at: HashMap<String, Timestamp>,
    done: BTreeSet<String>,
    running: BTreeSet<String>,
    prefix: Option<String>,
}

impl Progress {
    fn new(out: OutputFormat, quiet: bool, total_steps: usize, prefix: Option<String>) -> Self {
        // Progress shares stdout with a table report; with --output json it goes to stderr
        // so that stdout holds only the JSON document.
        let to_stderr = matches!(out, OutputFormat::Json);
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bar = (tty && !quiet).then(|| {
            let target = if to_stderr {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::stdout()
            };
            let bar = ProgressBar::with_draw_target(None, target);
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            bar,
            to_stderr,
            quiet,
            start: Instant::now(),
            last_seq: None,
            total_steps,
            started_at: HashMap::new(),
            done: BTreeSet::new(),
            running: BTreeSet::new(),
            prefix,
        }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let text = match &self.prefix {
            Some(p) => format!("{elapsed:>8.3}s  [{p}] {text}"),
            None => format!("{elapsed:>8.3}s  {text}"),
        };
        if let Some(bar) = &self.bar {
            bar.println(text);
        } else if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            let running: Vec<&str> = self.running.iter().map(String::as_str).collect();
            let now = if running.is_empty() {
                String::from("waiting")
            } else {
                format!("running {}", running.join(", "))
            };
            bar.set_message(format!(
                "{} of {} steps done; {now}",
                self.done.len(),
                self.total_steps
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    async fn print_new_events(&mut self, engine: &Engine, id: InstanceId) -> CliResult<()> {
        loop {
            let page = engine
                .store()
                .list_events(id, self.last_seq, MAX_PAGE_SIZE)
                .await
                .map_err(EngineError::from)?;
            let full = page.len() >= MAX_PAGE_SIZE;
            for e in &page {
                self.last_seq = Some(e.seq);
                if let Some(text) = self.describe(e) {
                    self.line(&text);
                }
            }
            if !full {
                break;
            }
        }
        self.refresh();
        Ok(())
    }

    /// One event as a line for people (`None`: not worth a line).
    fn describe(&mut self, e: &Event) -> Option<String> {
        let step = e.step.as_deref().unwrap_or("").to_owned();
        let error = e
            .detail
            .as_ref()
            .and_then(|d| d.value().get("error"))
            .and_then(|v| v.as_str())
            .map(one_line);
        let attempt = e
            .attempt
            .map(|a| format!(" (attempt {a})"))
            .unwrap_or_default();
        let text = match e.kind {
            EventKind::StepStarted => {
                self.started_at.insert(step.clone(), e.at);
                self.running.insert(step.clone());
                format!("started      {step}{attempt}")
            }
            EventKind::StepCompleted => {
                self.running.remove(&step);
                self.done.insert(step.clone());
                let took = self
                    .started_at
                    .get(&step)
                    .map(|t| format!(" in {}", format_ms(e.at.since(*t))))
                    .unwrap_or_default();
                format!("completed    {step}{took}")
            }
            EventKind::StepRetry => {
                self.running.remove(&step);
                let delay = e
                    .detail
                    .as_ref()
                    .and_then(|d| d.value().get("delay_ms"))
                    .and_then(serde_json::Value::as_u64)
                    .map(|ms| format!(", next try in {}", format_ms(ms)))
                    .unwrap_or_default();
                format!(
                    "retry        {step}{attempt} failed: {}{delay}",
                    error.unwrap_or_default()
                )
            }
            EventKind::StepFailed => {
                self.running.remove(&step);
                format!(
                    "failed       {step}{attempt}: {}",
                    error.unwrap_or_default()
                )
            }
            EventKind::StepSkipped => format!("skipped      {step}"),
            EventKind::StepPaused => {
                self.running.remove(&step);
                format!("paused       {step}")
            }
            EventKind::CompensationStarted => {
                self.running.insert(format!("{step} (compensation)"));
                format!("compensating {step}")
            }
            EventKind::CompensationCompleted => {
                self.running.remove(&format!("{step} (compensation)"));
                format!("rolled back  {step}")
            }
            EventKind::CompensationRetry => format!(
                "retry        compensation of {step}{attempt} failed: {}",
                error.unwrap_or_default()
            ),
            EventKind::CompensationFailed => {
                self.running.remove(&format!("{step} (compensation)"));
                format!(
                    "failed       compensation of {step}: {}",
                    error.unwrap_or_default()
                )
            }
            EventKind::StepRolledBack => format!("rolled back  {step} (nothing to compensate)"),
            EventKind::HumanDecisionWaiting => format!("waiting      {step}: needs a decision"),
            EventKind::HumanDecisionConfirmed => format!("confirmed    {step}"),
            EventKind::HumanDecisionRejected => format!("rejected     {step}"),
            EventKind::LeaseExpired => format!("lease lost   {step}{attempt}"),
            EventKind::RollbackStarted => {
                format!(
                    "rollback     started{}",
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                )
            }
            EventKind::CancellationStarted => "cancel       requested".to_owned(),
            EventKind::AbortStarted => "abort        requested".to_owned(),
            EventKind::WorkflowStarted => return None,
            EventKind::WorkflowCompleted => "instance     completed".to_owned(),
            EventKind::WorkflowFailed => "instance     failed".to_owned(),
            EventKind::WorkflowCancelled => "instance     cancelled".to_owned(),
            EventKind::WorkflowAborted => "instance     aborted".to_owned(),
            EventKind::WorkflowDlq => format!("instance     parked in the DLQ at {step}"),
            other => {
                let name = other.as_str();
                if step.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name:<12} {step}")
                }
            }
        };
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_exit_prefers_timeouts_then_failures() {
        assert_eq!(combined_exit(&[]), Exit::Ok);
        assert_eq!(combined_exit(&[Exit::Ok, Exit::Ok]), Exit::Ok);
        assert_eq!(
            combined_exit(&[Exit::Ok, Exit::Failed, Exit::Dlq]),
            Exit::Failed
        );
        assert_eq!(combined_exit(&[Exit::Failed, Exit::Timeout]), Exit::Timeout);
    }
}
