//! `GET /v1/stream` through hyper and axum: HTTP/2, and HTTP/1.x requests
//! the accept loop leaves to hyper. [`Streams::open`] decides the answer,
//! exactly as for the stream written straight to the socket; this renders
//! it as an axum response.
//!
//! Through hyper a stream cannot end itself while hyper waits for its
//! client to read, so the subscription's `lagged` token is the
//! connection's [`ConnectionCut`]: when the hub drops this subscriber for
//! falling behind, the connection goes.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::stream::{Opened, StreamBody, Subscription};

/// Cancelled to end a connection served by hyper: its stream fell behind
/// (the hub cancels it). Through hyper a stream cannot be ended by itself
/// while hyper waits for the client to read, so its connection is (over
/// HTTP/2 the other streams on it reconnect and resume, losing nothing).
/// The accept loop (`server`) puts it in every stream request's
/// extensions.
#[derive(Clone)]
pub struct ConnectionCut(pub CancellationToken);

/// The address a connection served by hyper comes from (its TCP peer; the
/// client's own address behind a trusted proxy is decided by `auth`). The
/// accept loop puts it in every stream request's extensions.
#[derive(Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Largest chunk written at once while replaying: several small frames
/// ready together are joined, so a replay of thousands of events is not
/// thousands of body chunks.
const COALESCE_BYTES: usize = 64 * 1024;

pub async fn stream(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let cut = parts
        .extensions
        .get::<ConnectionCut>()
        .map_or_else(CancellationToken::new, |cut| cut.0.clone());
    let peer = parts
        .extensions
        .get::<Peer>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0);
    let answer = match state.streams.open(&parts, peer, cut) {
        Opened::Ready(answer) => answer,
        Opened::Named(named) => named.answer().await,
    };
    let mut res = match answer.body {
        StreamBody::Events(sub) => Response::new(Body::from_stream(chunks(sub))),
        StreamBody::Retry(retry) => Response::new(Body::from(retry)),
        StreamBody::Problem(problem) => problem.into_response(),
    };
    *res.status_mut() = answer.status;
    let headers = res.headers_mut();
    for (name, value) in answer.headers {
        headers.insert(name, value);
    }
    res
}

/// The subscription as body chunks.
fn chunks(sub: Box<Subscription>) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold(sub, |mut sub| async move {
        let first = sub.next_chunk().await?;
        Some((Ok(coalesce(&mut sub, first)), sub))
    })
}

/// `first`, joined with what else is ready while replaying. Live frames
/// are the hub's shared bytes: never copied.
fn coalesce(sub: &mut Subscription, first: Bytes) -> Bytes {
    if sub.is_live() || first.len() >= COALESCE_BYTES {
        return first;
    }
    let Some(second) = sub.ready_chunk() else {
        return first;
    };
    let mut buf = BytesMut::with_capacity(COALESCE_BYTES);
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    while buf.len() < COALESCE_BYTES && !sub.is_live() {
        match sub.ready_chunk() {
            Some(next) => buf.extend_from_slice(&next),
            None => break,
        }
    }
    buf.freeze()
}
