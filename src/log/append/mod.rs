//! Appending: one committer task per instance takes every publish request
//! waiting (group commit) and stores them in one transaction, in id order.
//!
//! Every append locks the single `log_head` row before it takes ids, and
//! holds the lock to its commit; the next append, from any instance, gets its
//! ids only after this one is visible (see `migrations/`). The commit time
//! is taken under the same lock and never goes back (`greatest` with the
//! previous append's), so commit times follow ids.
//!
//! A group without idempotency keys is one statement, in autocommit: lock,
//! insert, move the head, notify, commit, in a single round trip, which
//! keeps the lock held for as short as PostgreSQL allows. A group with keys
//! needs to look the keys up under the lock first, so it is a transaction
//! of a few statements.
//!
//! **Every answer is true, and comes in time.** Each request has a deadline
//! (its arrival plus `--db-timeout`) and gets its answer by then plus
//! [`ANSWER_MARGIN`], however PostgreSQL fails:
//! - A request still waiting in the queue at its deadline is withdrawn by
//!   its publisher ([`Claim`]): it was never sent, so "nothing was stored".
//! - A group is sent only with time left for every request in it, and
//!   PostgreSQL itself aborts a statement that outlives it
//!   (`statement_timeout`, `lock_timeout`), so a slow trigger or a held lock
//!   ends in an error PostgreSQL reports: again, nothing was stored. A
//!   timeout on our side alone would not do: the statement PostgreSQL
//!   already has goes on and commits after the client gave up.
//! - Only when the statement that commits was sent and no answer came at
//!   all (the network or the server went silent) is the outcome unknown,
//!   and the answer says so ([`LogError::Unknown`]).
//!
//! **One request cannot fail another's.** A group that PostgreSQL refuses
//! for a reason other than its availability (a row it will not take) is
//! retried one request at a time, so the request at fault gets the error and
//! the others commit.
//!
//! **One committer for the cluster.** The instances on one database elect
//! one of them to commit everyone's groups, and the others send it theirs
//! (`cluster.rs`, `forward.rs`): one statement per group for the whole
//! cluster, as with one instance. Correctness never rests on the election:
//! every append still locks `log_head`, whoever sends it.
//!
//! - `group`: the committer, gathering waiting requests into a group.
//! - `commit`: one group's commit within its deadline, and what its
//!   failure means.
//! - `sql`: the statements, with and without idempotency keys.
//! - `cluster`: the election of the cluster's committer.
//! - `forward`: groups sent to it, and taken there.

mod cluster;
mod commit;
mod forward;
mod group;
mod sql;

use std::time::Duration;

pub use cluster::{APPEND_PATH, Cluster, Election, advertised_url};
pub use forward::{Batch, MAX_FORWARD_BODY, take as take_forwarded};
pub(super) use group::{AppendJob, Claim, committer};

/// How long after its deadline a publisher may wait for its answer: the
/// time PostgreSQL's own answer (an abort at `statement_timeout`) takes to
/// come back and be sent on. Documented in the README ("Errors").
pub const ANSWER_MARGIN: Duration = Duration::from_millis(500);
/// Least time worth sending a statement with; a request with less left is
/// answered "nothing was stored" without being sent.
const MIN_STATEMENT_TIME: Duration = Duration::from_millis(20);
