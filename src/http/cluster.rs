//! `POST /v1/cluster/append`: the groups of publish requests the other
//! instances send the cluster's committer (`log/append/cluster.rs`,
//! `log/append/forward.rs`). Not for clients: it takes only the secret
//! this instance wrote in `log_committer` when it was elected, which only
//! those who can read the database know; every other instance answers
//! `403`, and its sender commits the group itself.
//!
//! Every refusal is a `4xx` and comes before anything of the group is
//! queued; its sender then commits the group itself (`forward.rs`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, json_response};
use crate::error::ApiError;
use crate::log::{ForwardBatch, MAX_FORWARD_BODY, take_forwarded};

pub async fn append(State(state): State<AppState>, req: Request<Body>) -> Response {
    let Some(authorization) = req.headers().get(header::AUTHORIZATION) else {
        return ApiError::Unauthorized(
            "the cluster's committer takes groups only with its secret".into(),
        )
        .into_response();
    };
    if !state.cluster.accepts(authorization.as_bytes()) {
        return ApiError::Forbidden(
            "this instance does not commit for the cluster, or not with this secret".into(),
        )
        .into_response();
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_FORWARD_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::TooLarge(format!("a group over {MAX_FORWARD_BODY} bytes"))
                .into_response();
        }
    };
    let batch: ForwardBatch = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return ApiError::BadRequest(format!("not a group of requests: {e}")).into_response();
        }
    };
    let answer = take_forwarded(&state.log, batch).await;
    match serde_json::to_string(&answer) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => ApiError::Internal(format!("cannot write the answer: {e}")).into_response(),
    }
}
