//! `GET /api/events/stream`: the engine's committed events as server-sent events.

use crate::AppState;
use crate::auth::Caller;
use crate::dto::{LiveEventDto, View};
use crate::error::{ApiError, ErrorBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use floxy::{EventSubscription, InstanceId, SubscriptionError, WorkflowId};
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use utoipa::IntoParams;

/// Filters of the stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Only this instance's events.
    instance: Option<String>,
    /// Only this workflow's events.
    workflow: Option<String>,
    /// The bearer token, for clients that cannot send an `Authorization` header (browsers'
    /// `EventSource`); used when the header is absent or not accepted.
    access_token: Option<String>,
}

struct Filter {
    instance: Option<InstanceId>,
    workflow: Option<WorkflowId>,
}

/// Live lifecycle events (server-sent events, `text/event-stream`), filterable by instance
/// and workflow. Each event is named by its kind (`step_completed`, ...) and carries a JSON
/// `LiveEventDto`; a subscriber that falls behind gets an event `lagged` with
/// `{"missed": n}` and continues with the oldest event still buffered. The token may be
/// given as `?access_token=` instead of the `Authorization` header.
#[utoipa::path(get, path = "/api/events/stream", tag = "events",
    params(StreamQuery),
    responses((status = 200, description = "A stream of server-sent events",
            content_type = "text/event-stream", body = LiveEventDto),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn event_stream(
    caller: Result<Caller, ApiError>,
    State(st): State<AppState>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let caller = match (caller, q.access_token.as_deref()) {
        (Ok(c), _) => c,
        (Err(ApiError::Unauthorized(_)), Some(token)) => Caller::of_token(&st, token)?,
        (Err(e), _) => return Err(e),
    };
    let filter = Filter {
        instance: q
            .instance
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e| ApiError::BadRequest(format!("invalid instance id {s:?}: {e}")))
            })
            .transpose()?,
        workflow: q.workflow.map(|w| WorkflowId::from(w.as_str())),
    };
    let view = View::of(&caller);
    let sub = st.engine.subscribe();
    let stream = futures::stream::unfold((sub, filter), move |(mut sub, filter)| async move {
        let ev = next_event(&mut sub, &filter, view).await?;
        Some((Ok(ev), (sub, filter)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn next_event(sub: &mut EventSubscription, f: &Filter, view: View) -> Option<Event> {
    loop {
        match sub.recv().await {
            Ok(e) => {
                if f.instance.is_some_and(|i| i != e.instance_id)
                    || f.workflow.as_ref().is_some_and(|w| *w != e.workflow_id)
                {
                    continue;
                }
                let dto = LiveEventDto::new(&e, view);
                let data = serde_json::to_string(&dto).unwrap_or_else(|_| "{}".into());
                return Some(Event::default().event(e.kind().as_str()).data(data));
            }
            Err(SubscriptionError::Lagged(n)) => {
                return Some(
                    Event::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}")),
                );
            }
            Err(_) => return None,
        }
    }
}
