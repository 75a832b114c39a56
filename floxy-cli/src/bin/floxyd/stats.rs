//! The statistics printer: every period, Floxy's block (total, completed, failed, running,
//! pending, active; then the active instances), or one structured log event.

use floxy::{
    CancellationToken, Engine, InstanceQuery, InstanceRecord, InstanceStatus, StepStatus,
    StoreStats,
};
use floxy_cli::output::{Table, format_ms};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Most active instances listed per block.
pub(crate) const MAX_ACTIVE_LISTED: usize = 20;

/// One active instance of the block.
#[derive(Debug, Serialize)]
struct Active {
    id: String,
    workflow: String,
    status: &'static str,
    current_step: String,
    steps_done: usize,
    steps_total: usize,
    rolled_back: usize,
    runtime_ms: u64,
}

/// The counts of the block.
#[derive(Debug, Default, Serialize)]
struct Counts {
    total: u64,
    completed: u64,
    failed: u64,
    running: u64,
    pending: u64,
    active: u64,
    cancelled: u64,
    aborted: u64,
    dlq: u64,
}

fn counts(s: &StoreStats) -> Counts {
    let get = |st: InstanceStatus| {
        s.instances_by_status
            .iter()
            .find(|(k, _)| k == st.as_str())
            .map_or(0, |(_, n)| *n)
    };
    let running = get(InstanceStatus::Running);
    let pending = get(InstanceStatus::Pending);
    let rolling = get(InstanceStatus::RollingBack) + get(InstanceStatus::Cancelling);
    Counts {
        total: s.instances_by_status.iter().map(|(_, n)| n).sum(),
        completed: get(InstanceStatus::Completed),
        failed: get(InstanceStatus::Failed),
        running,
        pending,
        active: running + pending + rolling,
        cancelled: get(InstanceStatus::Cancelled),
        aborted: get(InstanceStatus::Aborted),
        dlq: get(InstanceStatus::Dlq),
    }
}

/// Runs until `stop` fires.
pub(crate) async fn run(engine: Engine, period: Duration, json: bool, stop: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once: skip it, the daemon has just started.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // A store that stopped answering must not hold up the shutdown.
        tokio::select! {
            r = print_once(&engine, json) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "statistics: the store failed");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

async fn print_once(engine: &Engine, json: bool) -> Result<(), floxy::EngineError> {
    let stats = engine.stats().await?;
    let c = counts(&stats);
    let active = active_instances(engine).await?;
    if json {
        let instances = serde_json::to_string(&active).unwrap_or_default();
        tracing::info!(
            target: "floxyd::stats",
            total = c.total,
            completed = c.completed,
            failed = c.failed,
            running = c.running,
            pending = c.pending,
            active = c.active,
            cancelled = c.cancelled,
            aborted = c.aborted,
            dlq = c.dlq,
            queue_ready = stats.queue_ready,
            queue_leased = stats.queue_leased,
            active_instances = %instances,
            "workflow statistics"
        );
    } else {
        println!("{}", block(&c, &active));
    }
    Ok(())
}

async fn active_instances(engine: &Engine) -> Result<Vec<Active>, floxy::EngineError> {
    let mut recs: Vec<InstanceRecord> = Vec::new();
    for status in [
        InstanceStatus::Running,
        InstanceStatus::RollingBack,
        InstanceStatus::Cancelling,
        InstanceStatus::Pending,
    ] {
        if recs.len() >= MAX_ACTIVE_LISTED {
            break;
        }
        let page = engine
            .instances(&InstanceQuery {
                status: Some(status),
                limit: MAX_ACTIVE_LISTED - recs.len(),
                ..InstanceQuery::default()
            })
            .await?;
        recs.extend(page.items);
    }
    let now = engine.clock().now();
    let mut out = Vec::with_capacity(recs.len());
    for r in recs {
        let steps = engine.steps(r.id).await?;
        let total = engine
            .workflow(&r.workflow_id)
            .await
            .map_or(steps.len(), |w| w.definition().steps.len());
        let current = steps
            .iter()
            .filter(|s| s.status.is_active())
            .max_by_key(|s| (s.started_at, s.created_at))
            .map(|s| s.step.to_string())
            .unwrap_or_default();
        out.push(Active {
            id: r.id.to_string(),
            workflow: r.workflow_id.to_string(),
            status: r.status.as_str(),
            current_step: current,
            steps_done: steps.iter().filter(|s| s.status.is_success()).count(),
            steps_total: total,
            rolled_back: steps
                .iter()
                .filter(|s| s.status == StepStatus::RolledBack)
                .count(),
            runtime_ms: now.since(r.created_at),
        });
    }
    Ok(out)
}

fn block(c: &Counts, active: &[Active]) -> String {
    let mut s = String::from("=== Workflow Statistics ===\n");
    let _ = writeln!(
        s,
        "Total: {} | Completed: {} | Failed: {} | Running: {} | Pending: {} | Active: {}",
        c.total, c.completed, c.failed, c.running, c.pending, c.active
    );
    let _ = writeln!(
        s,
        "Cancelled: {} | Aborted: {} | DLQ: {}",
        c.cancelled, c.aborted, c.dlq
    );
    if active.is_empty() {
        s.push_str("No active instances\n");
        return s;
    }
    s.push_str("Active instances:\n");
    let mut t = Table::new([
        "ID",
        "WORKFLOW",
        "STATUS",
        "CURRENT STEP",
        "PROGRESS",
        "ROLLED BACK",
        "RUNTIME",
    ]);
    for a in active {
        t.row([
            a.id.clone(),
            a.workflow.clone(),
            a.status.to_owned(),
            a.current_step.clone(),
            format!("{}/{}", a.steps_done, a.steps_total),
            a.rolled_back.to_string(),
            format_ms(a.runtime_ms),
        ]);
    }
    s.push_str(&t.render());
    s
}
