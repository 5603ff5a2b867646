//! `GET /incidents` (the incidents of the remediation report: id, targets, opened, state,
//! evidence) and `GET /incidents/<id>` (the evidence bundle, read from the state directory).
//!
//! The list comes from the published report, so it never touches a disk. A bundle is read on
//! a blocking thread under [`READ_TIMEOUT`], and only one read runs at a time: a hung root disk
//! costs one thread, and every other request gets 503 at once instead of queueing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{evidence::files, publish::shared::Shared};

const READ_TIMEOUT: Duration = Duration::from_secs(2);
static READING: AtomicBool = AtomicBool::new(false);

fn json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn problem(code: StatusCode, why: impl std::fmt::Display) -> Response {
    json(
        code,
        serde_json::json!({ "error": why.to_string() }).to_string(),
    )
}

pub async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let Some(report) = shared.remediation() else {
        return json(StatusCode::OK, "{\"incidents\":[]}".into());
    };
    let text = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    let list: Vec<serde_json::Value> = report
        .get("incidents")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .map(|i| {
                    serde_json::json!({
                        "id": text(i, "id"),
                        "targets": i.get("targets").and_then(|t| t.as_array()).map(|t| {
                            t.iter().map(|t| text(t, "id")).collect::<Vec<_>>()
                        }).unwrap_or_default(),
                        "opened": text(i, "opened_at"),
                        "state": text(i, "phase"),
                        "evidence": text(i, "evidence"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json(
        StatusCode::OK,
        serde_json::json!({ "incidents": list }).to_string(),
    )
}

/// Releases the single-read guard when the blocking read ends, however it ends.
struct Reading;

impl Drop for Reading {
    fn drop(&mut self) {
        READING.store(false, Ordering::SeqCst);
    }
}

pub async fn one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(dir) = shared.evidence_dir() else {
        return problem(
            StatusCode::NOT_FOUND,
            "remediation is not running: no incidents",
        );
    };
    let path = match files::path(&dir, &id) {
        Ok(p) => p,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    if READING.swap(true, Ordering::SeqCst) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "an earlier read of the state directory has not finished",
        );
    }
    let task = tokio::task::spawn_blocking(move || {
        let _guard = Reading;
        files::read_bounded(&path)
    });
    match tokio::time::timeout(READ_TIMEOUT, task).await {
        Ok(Ok(Ok(body))) => json(StatusCode::OK, String::from_utf8_lossy(&body).into_owned()),
        Ok(Ok(Err(files::FileError::Io { source, .. })))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            problem(
                StatusCode::NOT_FOUND,
                format!("no evidence for incident {id}"),
            )
        }
        Ok(Ok(Err(e))) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the state directory did not answer within {READ_TIMEOUT:?}"),
        ),
    }
}
