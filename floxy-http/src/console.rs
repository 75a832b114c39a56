//! Routes the web console needs beyond Floxy's: who the token is, and the human steps
//! waiting for a decision.

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use axum::Json;
use axum::extract::State;
use floxy::{InstanceQuery, InstanceStatus, MAX_PAGE_SIZE, StepStatus};
use serde::Serialize;
use utoipa::ToSchema;

/// Bound on the running instances one `GET /api/decisions/waiting` scans.
pub(crate) const MAX_DECISION_SCAN: usize = 2 * MAX_PAGE_SIZE;

/// The caller of a request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoamiDto {
    /// The token's name (recorded in the events of its operator actions).
    pub(crate) name: String,
    /// `viewer`, `operator` or `admin`.
    pub(crate) role: String,
    /// Whether payloads are shown to it (otherwise they read `"[redacted]"`).
    pub(crate) see_payloads: bool,
}

/// Who the request's token is: name, role, whether it sees payloads.
#[utoipa::path(get, path = "/api/whoami", tag = "meta",
    responses((status = 200, body = WhoamiDto), (status = 401, body = ErrorBody)))]
pub(crate) async fn whoami(caller: Caller) -> Json<WhoamiDto> {
    Json(WhoamiDto {
        name: caller.name.to_string(),
        role: caller.role.as_str().into(),
        see_payloads: caller.see_payloads,
    })
}

/// A human step waiting for a decision.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WaitingDecisionDto {
    /// Instance.
    pub(crate) instance_id: String,
    /// Definition.
    pub(crate) workflow_id: String,
    /// The human step.
    pub(crate) step_name: String,
    /// Since when it waits (ms since the epoch).
    pub(crate) waiting_since: i64,
    /// The instance's creation time (ms since the epoch).
    pub(crate) instance_created_at: i64,
}

/// The human steps waiting for a decision.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WaitingDecisionsDto {
    /// The waiting steps, oldest instance first.
    pub(crate) items: Vec<WaitingDecisionDto>,
    /// Running instances scanned.
    pub(crate) scanned: usize,
    /// Whether more running instances exist than one request scans (2 000): the list may
    /// be incomplete.
    pub(crate) truncated: bool,
}

/// Human steps waiting for a decision, found among the running instances (the oldest
/// 2 000; `truncated` says when there are more).
#[utoipa::path(get, path = "/api/decisions/waiting", tag = "decisions",
    responses((status = 200, body = WaitingDecisionsDto), (status = 401, body = ErrorBody)))]
pub(crate) async fn waiting_decisions(
    _caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<WaitingDecisionsDto>, ApiError> {
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let mut after = None;
    let truncated = loop {
        let page = st
            .engine
            .instances(&InstanceQuery {
                workflow_id: None,
                status: Some(InstanceStatus::Running),
                after,
                limit: MAX_PAGE_SIZE.min(MAX_DECISION_SCAN - scanned),
            })
            .await?;
        for r in &page.items {
            scanned += 1;
            for s in st.engine.steps(r.id).await? {
                if s.status == StepStatus::WaitingDecision {
                    items.push(WaitingDecisionDto {
                        instance_id: r.id.to_string(),
                        workflow_id: r.workflow_id.to_string(),
                        step_name: s.step.to_string(),
                        waiting_since: s.started_at.unwrap_or(s.created_at).as_millis(),
                        instance_created_at: r.created_at.as_millis(),
                    });
                }
            }
        }
        match page.next {
            None => break false,
            Some(_) if scanned >= MAX_DECISION_SCAN => break true,
            Some(n) => after = Some(n),
        }
    };
    Ok(Json(WaitingDecisionsDto {
        items,
        scanned,
        truncated,
    }))
}
