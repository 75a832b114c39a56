//! Database mode: commands on the instances of a PostgreSQL database or a redb file.

use crate::DbArgs;
use crate::input::{self, read_input};
use crate::render;
use clap::Args;
use floxy::{
    Decision, DlqId, DlqQuery, Engine, InstanceId, InstanceQuery, InstanceStatus, MAX_PAGE_SIZE,
    Payload, PostgresLayout, StartOptions, WorkflowId,
};
use floxy_cli::exit::{CliError, CliResult, Exit};
use floxy_cli::output::{OutputFormat, Table, to_json};
use floxy_cli::store::{OpenMode, OpenStore, StoreSpec};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Default page size of `list` and `dlq`.
const DEFAULT_LIMIT: usize = 50;

/// Opens the store of `db`, runs `f` on an engine over it (no workers), closes the store.
async fn with_engine<T, F, Fut>(db: &DbArgs, mode: OpenMode, f: F) -> CliResult<T>
where
    F: FnOnce(Engine, OpenStore) -> Fut,
    Fut: Future<Output = CliResult<T>>,
{
    let spec = db.spec()?;
    let store = OpenStore::open(&spec, mode).await?;
    if !db.no_migrate
        && let Err(e) = store.migrate(PostgresLayout::Plain).await
    {
        store.close().await;
        return Err(e);
    }
    let engine = Engine::new(store.store());
    let result = f(engine, store.clone()).await;
    store.close().await;
    result
}

fn parse_instance(s: &str) -> CliResult<InstanceId> {
    s.parse::<InstanceId>()
        .map_err(|e| CliError::bad_input(format!("invalid instance id {s:?}: {e}")))
}

/// Parses an instance id argument.
fn instance_arg(s: &str) -> Result<InstanceId, String> {
    parse_instance(s).map_err(|e| e.message)
}

/// Parses a `--status` argument.
fn status_arg(s: &str) -> Result<InstanceStatus, String> {
    InstanceStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown status {s:?}, expected one of {}", all.join(", "))
    })
}

/// Parses a `--limit` argument.
fn limit_arg(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 || n > MAX_PAGE_SIZE {
        return Err(format!("must be between 1 and {MAX_PAGE_SIZE}"));
    }
    Ok(n)
}

fn print_json<T: serde::Serialize + ?Sized>(v: &T) {
    println!("{}", to_json(v));
}

// ----- start --------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The workflow id (`<name>-v<version>`, e.g. `order-v1`).
    #[arg(short = 'o', long = "workflow", value_name = "WORKFLOW_ID")]
    workflow: String,
    /// Input JSON file (`-` reads standard input); default `{}`.
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Idempotency key: a second start with the same key returns the first instance.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn start(args: StartArgs, out: OutputFormat) -> CliResult<Exit> {
    let input = read_input(args.input.as_deref(), input::Default::EmptyObject)?;
    let wf = WorkflowId::from(args.workflow.as_str());
    let key = args.idempotency_key.clone();
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let mut opts = StartOptions::new();
        if let Some(k) = key {
            opts = opts.idempotency_key(k);
        }
        let id = engine.start_with(&wf, Payload::new(input), opts).await?;
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({
                "id": id,
                "workflow_id": wf,
            })),
            _ => println!("started instance {id} of {wf}"),
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- cancel / abort -------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// The instance id.
    #[arg(short = 'o', long = "instance", value_name = "INSTANCE_ID", value_parser = instance_arg)]
    instance: InstanceId,
    /// Why (recorded as the instance's error).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Who asked (recorded with the reason).
    #[arg(long, value_name = "WHO")]
    requested_by: Option<String>,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum StopKind {
    Cancel,
    Abort,
}

pub(crate) async fn stop(args: StopArgs, out: OutputFormat, kind: StopKind) -> CliResult<Exit> {
    let reason = match (&args.reason, &args.requested_by) {
        (Some(r), Some(who)) => Some(format!("{r} (requested by {who})")),
        (Some(r), None) => Some(r.clone()),
        (None, Some(who)) => Some(format!("requested by {who}")),
        (None, None) => None,
    };
    let id = args.instance;
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let rec = match kind {
            StopKind::Cancel => engine.cancel(id, reason.as_deref()).await?,
            StopKind::Abort => engine.abort(id, reason.as_deref()).await?,
        };
        match out {
            OutputFormat::Json => print_json(&rec),
            _ => {
                let what = match kind {
                    StopKind::Cancel => "cancel",
                    StopKind::Abort => "abort",
                };
                println!("{what} requested: instance {id} is now {}", rec.status);
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- decide ---------------------------------------------------------------------------------

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("decision").required(true).args(["confirm", "reject"]))]
pub(crate) struct DecideArgs {
    /// The instance id.
    #[arg(short = 'o', long = "instance", value_name = "INSTANCE_ID", value_parser = instance_arg)]
    instance: InstanceId,
    /// The human step waiting for a decision.
    #[arg(long, value_name = "STEP")]
    step: String,
    /// Confirm: the flow continues.
    #[arg(long)]
    confirm: bool,
    /// Reject: the instance aborts (or rolls back, by the step's policy).
    #[arg(long)]
    reject: bool,
    /// A comment stored with the decision.
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Who decides (default: $USER).
    #[arg(long, value_name = "WHO")]
    decided_by: Option<String>,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn decide(args: DecideArgs, out: OutputFormat) -> CliResult<Exit> {
    let decision = if args.confirm {
        Decision::Confirm
    } else {
        Decision::Reject
    };
    let who = args
        .decided_by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "floxyctl".to_owned());
    let id = args.instance;
    let step = args.step.clone();
    let comment = args.comment.clone();
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let rec = engine
            .decide(id, &step, &who, decision, comment.as_deref())
            .await?;
        match out {
            OutputFormat::Json => print_json(&rec),
            _ => println!(
                "{} step {step} of instance {id}: instance is now {}",
                match decision {
                    Decision::Confirm => "confirmed",
                    Decision::Reject => "rejected",
                },
                rec.status
            ),
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- requeue --------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct RequeueArgs {
    /// The DLQ record id (see `floxyctl dlq`).
    #[arg(value_name = "DLQ_ID")]
    dlq_id: u64,
    /// A new input JSON file for the step (`-` reads standard input).
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn requeue(args: RequeueArgs, out: OutputFormat) -> CliResult<Exit> {
    let new_input = match &args.input {
        Some(p) => Some(Payload::new(read_input(
            Some(p),
            input::Default::EmptyObject,
        )?)),
        None => None,
    };
    let dlq = DlqId(args.dlq_id);
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let rec = engine.requeue(dlq, new_input).await?;
        match out {
            OutputFormat::Json => print_json(&rec),
            _ => println!(
                "requeued DLQ record {dlq}: instance {} is now {}",
                rec.id, rec.status
            ),
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- list -----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only instances in this status.
    #[arg(long, value_name = "STATUS", value_parser = status_arg)]
    status: Option<InstanceStatus>,
    /// Only instances of this workflow id (e.g. `order-v1`).
    #[arg(long, value_name = "WORKFLOW_ID")]
    workflow: Option<String>,
    /// Page size (1..=1000).
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = limit_arg)]
    limit: usize,
    /// Start after this instance id (the `next` of the previous page).
    #[arg(long, value_name = "INSTANCE_ID", value_parser = instance_arg)]
    after: Option<InstanceId>,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn list(args: ListArgs, out: OutputFormat) -> CliResult<Exit> {
    let q = InstanceQuery {
        workflow_id: args.workflow.as_deref().map(WorkflowId::from),
        status: args.status,
        after: args.after,
        limit: args.limit,
    };
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let page = engine.instances(&q).await?;
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({
                "items": page.items,
                "next": page.next,
            })),
            _ => {
                if page.items.is_empty() {
                    println!("no instances");
                } else {
                    print!("{}", render::instances_table(&page.items));
                }
                if let Some(next) = page.next {
                    println!("more: --after {next}");
                }
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- show -----------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The instance id.
    #[arg(value_name = "INSTANCE_ID", value_parser = instance_arg)]
    instance: InstanceId,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn show(args: ShowArgs, out: OutputFormat) -> CliResult<Exit> {
    let id = args.instance;
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let rec = engine
            .instance(id)
            .await?
            .ok_or(floxy::EngineError::UnknownInstance(id))?;
        let steps = engine.steps(id).await?;
        let events = engine.events(id).await?;
        let dlq = engine
            .dlq(&DlqQuery {
                instance_id: Some(id),
                ..DlqQuery::default()
            })
            .await?
            .items;
        match out {
            OutputFormat::Json => print_json(&render::ShowReport {
                instance: &rec,
                steps: &steps,
                events: &events,
                dlq: &dlq,
            }),
            _ => {
                print!("{}", render::instance_header(&rec, engine.clock().now()));
                println!();
                print!("{}", render::steps_table(&steps));
                if !dlq.is_empty() {
                    println!();
                    print!("{}", render::dlq_table(&dlq));
                }
                println!();
                print!("{}", render::events_table(&events));
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- dlq ------------------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    /// Only records of this workflow id.
    #[arg(long, value_name = "WORKFLOW_ID")]
    workflow: Option<String>,
    /// Only records of this instance.
    #[arg(long, value_name = "INSTANCE_ID", value_parser = instance_arg)]
    instance: Option<InstanceId>,
    /// Page size (1..=1000).
    #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = limit_arg)]
    limit: usize,
    /// Start after this DLQ id.
    #[arg(long, value_name = "DLQ_ID")]
    after: Option<u64>,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn dlq(args: DlqArgs, out: OutputFormat) -> CliResult<Exit> {
    let q = DlqQuery {
        instance_id: args.instance,
        workflow_id: args.workflow.as_deref().map(WorkflowId::from),
        after: args.after.map(DlqId),
        limit: args.limit,
    };
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let page = engine.dlq(&q).await?;
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({
                "items": page.items,
                "next": page.next,
            })),
            _ => {
                if page.items.is_empty() {
                    println!("the DLQ is empty");
                } else {
                    print!("{}", render::dlq_table(&page.items));
                }
                if let Some(next) = page.next {
                    println!("more: --after {next}");
                }
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- workflows / stats ----------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct PlainArgs {
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn workflows(args: PlainArgs, out: OutputFormat) -> CliResult<Exit> {
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let defs = engine
            .store()
            .list_definitions()
            .await
            .map_err(floxy::EngineError::from)?;
        match out {
            OutputFormat::Json => print_json(&defs),
            _ => {
                if defs.is_empty() {
                    println!("no workflows registered");
                } else {
                    let mut t = Table::new(["ID", "NAME", "VERSION", "STEPS", "DLQ MODE"]);
                    for d in &defs {
                        t.row([
                            d.id().to_string(),
                            d.name.clone(),
                            d.version.to_string(),
                            d.steps.len().to_string(),
                            if d.options.dlq_enabled { "yes" } else { "no" }.to_owned(),
                        ]);
                    }
                    print!("{}", t.render());
                }
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

pub(crate) async fn stats(args: PlainArgs, out: OutputFormat) -> CliResult<Exit> {
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let s = engine.stats().await?;
        match out {
            OutputFormat::Json => {
                let by_status: serde_json::Map<String, serde_json::Value> = s
                    .instances_by_status
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                    .collect();
                print_json(&serde_json::json!({
                    "instances_by_status": by_status,
                    "instances_total": s.instances_by_status.iter().map(|(_, n)| n).sum::<u64>(),
                    "queue_ready": s.queue_ready,
                    "queue_leased": s.queue_leased,
                    "dlq": s.dlq,
                }));
            }
            _ => {
                let mut t = Table::new(["STATUS", "INSTANCES"]);
                for status in InstanceStatus::ALL {
                    let n = s
                        .instances_by_status
                        .iter()
                        .find(|(k, _)| k == status.as_str())
                        .map_or(0, |(_, n)| *n);
                    t.row([status.as_str().to_owned(), n.to_string()]);
                }
                let total: u64 = s.instances_by_status.iter().map(|(_, n)| n).sum();
                t.row(["total".to_owned(), total.to_string()]);
                print!("{}", t.render());
                println!();
                println!("queue: {} ready, {} leased", s.queue_ready, s.queue_leased);
                println!("dlq: {} record(s)", s.dlq);
            }
        }
        Ok(Exit::Ok)
    })
    .await
}

// ----- cleanup / migrate ----------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Remove terminal instances last updated longer ago than this (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration_arg)]
    older_than: Duration,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn cleanup(args: CleanupArgs, out: OutputFormat) -> CliResult<Exit> {
    let older = args.older_than;
    with_engine(&args.db, OpenMode::Existing, |engine, _| async move {
        let n = engine.cleanup(older).await?;
        match out {
            OutputFormat::Json => print_json(&serde_json::json!({ "removed": n })),
            _ => println!(
                "removed {n} terminal instance(s) older than {}",
                floxy_cli::duration::HumanDuration(older)
            ),
        }
        Ok(Exit::Ok)
    })
    .await
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// PostgreSQL: create a new schema with the partitioned layout (pg_partman).
    #[arg(long)]
    partitioned: bool,
    #[command(flatten)]
    db: DbArgs,
}

pub(crate) async fn migrate(args: MigrateArgs, out: OutputFormat) -> CliResult<Exit> {
    let layout = if args.partitioned {
        PostgresLayout::Partitioned
    } else {
        PostgresLayout::Plain
    };
    let spec = args.db.spec()?;
    if args.partitioned && !matches!(spec, StoreSpec::Postgres { .. }) {
        return Err(CliError::bad_input(
            "--partitioned applies to PostgreSQL only",
        ));
    }
    let store = OpenStore::open(&spec, OpenMode::Create).await?;
    let result = store.migrate(layout).await;
    store.close().await;
    let msg = result?;
    match out {
        OutputFormat::Json => {
            print_json(&serde_json::json!({ "store": spec.to_string(), "message": msg }))
        }
        _ => println!("{msg}"),
    }
    Ok(Exit::Ok)
}
