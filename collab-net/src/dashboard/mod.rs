//! The live dashboard: a web page the server process serves on its own port, with charts
//! pushed by server-sent events and controls that act on the running devices.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the page (HTML, its script and uPlot, MIT, vendored: no CDN) |
//! | `GET /api/snapshot` | the board now ([`BoardSnapshot`] as JSON) |
//! | `GET /api/events` | the board every [`PUSH_EVERY`], as server-sent events (`event: board`) |
//! | `POST /api/settings` | operator: [`SettingsBody`] to one device or all (`"*"`) |
//! | `POST /api/phase` | operator: `{"label", "previous"?}`: keep the series so far as the comparison (renamed `previous`), start `label` |
//!
//! The two `POST` routes need `Authorization: Bearer <operator token>` (the secret of the
//! server's `--operator-token-env` variable); without a token configured they answer `403`,
//! with a wrong or missing one `401`. Bad values are `400` with a JSON `{"error": ...}`
//! naming the field and its range, an unknown device `404`, a body over [`MAX_BODY`] bytes
//! `413`. Settings reach the devices as [`crate::wire::Message::Settings`] on their sessions.
//!
//! Bounded: [`MAX_CONNECTIONS`] open connections (the next waits), [`MAX_PER_PEER`] from one
//! address (one more is closed), a connection silent both ways for [`IDLE`] is closed,
//! [`MAX_STREAMS`] event streams (one more is `503`), request bodies of [`MAX_BODY`] bytes.

mod listener;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::Secret;
use crate::server::ServerMonitor;
use crate::server::board::{ALL_DEVICES, BoardSnapshot, SettingsError};
use crate::wire::{DeviceSettings, LinkSetting};

/// How often the event stream pushes the board.
pub const PUSH_EVERY: Duration = Duration::from_millis(1000);
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Open connections at most from one address.
pub const MAX_PER_PEER: usize = 32;
pub use listener::IDLE;
/// Event streams at most.
pub const MAX_STREAMS: usize = 16;
/// The largest request body read, bytes.
pub const MAX_BODY: usize = 4096;
/// The longest phase label, bytes.
pub const MAX_LABEL: usize = 64;

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");

/// What the handlers share.
#[derive(Clone, Debug)]
struct App {
    monitor: ServerMonitor,
    operator: Option<Arc<Secret>>,
    streams: Arc<Semaphore>,
}

/// An operator's settings for a device, as the page posts them. `mbit` and `rtt_ms` go
/// together (the emulated link).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// A device id, or `"*"` (or empty) for every device.
    pub device: String,
    /// End-to-end deadline, ms.
    pub deadline_ms: Option<f32>,
    /// Accuracy-loss limit, `0.02` = two points.
    pub max_loss: Option<f32>,
    /// Link bandwidth, Mbit/s.
    pub mbit: Option<f32>,
    /// Link round trip, ms.
    pub rtt_ms: Option<f32>,
    /// Requests per second (a load generator or a device sending at a rate).
    pub rate: Option<f32>,
}

impl SettingsBody {
    /// The settings it asks for.
    ///
    /// # Errors
    /// `mbit` without `rtt_ms` or the other way round.
    pub fn settings(&self) -> Result<DeviceSettings, String> {
        let link = match (self.mbit, self.rtt_ms) {
            (Some(mbit), Some(rtt_ms)) => Some(LinkSetting { mbit, rtt_ms }),
            (None, None) => None,
            _ => return Err("mbit and rtt_ms go together (the emulated link)".into()),
        };
        Ok(DeviceSettings {
            deadline_ms: self.deadline_ms,
            max_loss: self.max_loss,
            link,
            rate: self.rate,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseBody {
    label: String,
    /// A new label for the series kept as the comparison.
    previous: Option<String>,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The dashboard's routes over `monitor`'s server; `operator` is the secret that opens the
/// controls (none: read-only).
pub fn router(monitor: ServerMonitor, operator: Option<Secret>) -> Router {
    let app = App {
        monitor,
        operator: operator.map(Arc::new),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
    };
    let text = |kind: &'static str, body: &'static str| {
        move || async move { ([(header::CONTENT_TYPE, kind)], body) }
    };
    Router::new()
        .route("/", get(text("text/html; charset=utf-8", INDEX)))
        .route("/app.js", get(text("text/javascript; charset=utf-8", APP)))
        .route(
            "/uPlot.iife.min.js",
            get(text("text/javascript; charset=utf-8", UPLOT_JS)),
        )
        .route(
            "/uPlot.min.css",
            get(text("text/css; charset=utf-8", UPLOT_CSS)),
        )
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/settings", post(settings))
        .route("/api/phase", post(phase))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Serves the dashboard on `listener` until the monitored server has stopped.
pub async fn serve_dashboard(
    listener: TcpListener,
    monitor: ServerMonitor,
    operator: Option<Secret>,
) {
    let stopped = monitor.clone();
    let app = router(monitor, operator);
    let bounded = listener::BoundedListener::new(listener, MAX_CONNECTIONS, MAX_PER_PEER);
    tokio::select! {
        r = axum::serve(bounded, app) => {
            if let Err(e) = r {
                tracing::warn!("dashboard: {e}");
            }
        }
        () = stopped.stopped() => {}
    }
}

async fn snapshot(State(app): State<App>) -> Json<BoardSnapshot> {
    Json(app.monitor.board_snapshot())
}

async fn events(State(app): State<App>) -> Response {
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open already"),
        );
    };
    let monitor = app.monitor.clone();
    let ticks = stream::unfold(
        (monitor, permit, true),
        |(monitor, permit, first)| async move {
            if !first {
                tokio::time::sleep(PUSH_EVERY).await;
            }
            if !monitor.healthy() {
                return None; // the server is going away: end the stream
            }
            let event = Event::default()
                .event("board")
                .json_data(monitor.board_snapshot())
                .unwrap_or_else(|_| Event::default().event("error").data("unserialisable"));
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (monitor, permit, false),
            ))
        },
    );
    Sse::new(ticks)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `None` when the request carries the operator's token, else the refusal.
fn authorise(app: &App, headers: &HeaderMap) -> Option<Response> {
    let Some(secret) = &app.operator else {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "this server has no operator token: its controls are off (start it with one)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.is_empty() || !secret.matches(given) {
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "operator token missing or wrong (Authorization: Bearer <token>)",
        ));
    }
    None
}

/// An operator's request body: the token checked first, then the JSON.
fn operator_body<T>(
    app: &App,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Response> {
    if let Some(refusal) = authorise(app, headers) {
        return Err(refusal);
    }
    body.map(|Json(b)| b)
        .map_err(|e| refuse(e.status(), e.body_text()))
}

async fn settings(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<SettingsBody>, JsonRejection>,
) -> Response {
    let body = match operator_body(&app, &headers, body) {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let settings = match body.settings() {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let target = if body.device.is_empty() {
        ALL_DEVICES
    } else {
        &body.device
    };
    match app.monitor.board().apply(target, settings) {
        Ok(reached) => {
            tracing::info!(device = target, ?settings, reached, "operator settings");
            Json(json!({ "device": target, "reached": reached })).into_response()
        }
        Err(e @ SettingsError::Invalid(_)) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ SettingsError::UnknownDevice(_)) => refuse(StatusCode::NOT_FOUND, e.to_string()),
    }
}

async fn phase(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<PhaseBody>, JsonRejection>,
) -> Response {
    let body = match operator_body(&app, &headers, body) {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let bad = |l: &str| l.is_empty() || l.len() > MAX_LABEL;
    if bad(&body.label) || body.previous.as_deref().is_some_and(bad) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("labels must be 1 to {MAX_LABEL} bytes"),
        );
    }
    app.monitor
        .board()
        .start_phase(&body.label, body.previous.as_deref());
    Json(json!({ "phase": body.label })).into_response()
}
