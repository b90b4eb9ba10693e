//! Each instance's lease in the registry, renewed every third of
//! `--lease`, and the registry's upkeep on the same beat: streams of an
//! instance whose lease passed are marked ended (`instance_lost`), and
//! records are kept as long as events are (`--retention`), since an audit
//! reads them; control rows a few minutes, revocations until they expire.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Registry;
use crate::log::LogError;

/// Control rows older than this are deleted: every instance has read them.
const CONTROL_KEPT_SECONDS: f64 = 600.0;

/// Writes (or renews) this instance's lease.
pub async fn renew(registry: &Registry) -> Result<(), LogError> {
    sqlx::query(
        "INSERT INTO herald_instances (id, name, lease_until) \
         VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
         ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
    )
    .bind(&registry.inner.instance)
    .bind(registry.inner.name.as_deref())
    .bind(registry.inner.settings.lease.as_millis() as f64)
    .execute(registry.pool())
    .await?;
    Ok(())
}

pub async fn run(registry: Registry, stop: CancellationToken) {
    let beat = (registry.inner.settings.lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        if let Err(e) = renew(&registry).await {
            tracing::warn!(error = %e, "cannot renew this instance's lease in the stream registry");
            continue;
        }
        if let Err(e) = upkeep(&registry).await {
            tracing::warn!(error = %e, "stream registry upkeep failed");
        }
        registry.inner.revoked.expire();
    }
    // At a clean stop the lease is left to run out: the writer records the
    // ends of the streams the drain closed, and anything it could not is
    // then marked `instance_lost` by the instances still running.
}

async fn upkeep(registry: &Registry) -> Result<(), sqlx::Error> {
    let pool = registry.pool();
    let lost = sqlx::query(
        "UPDATE herald_streams s SET ended_at = i.lease_until, end_reason = 'instance_lost' \
         FROM herald_instances i WHERE s.instance = i.id AND s.ended_at IS NULL \
         AND i.lease_until < now()",
    )
    .execute(pool)
    .await?
    .rows_affected();
    if lost > 0 {
        tracing::info!(
            streams = lost,
            "streams of instances whose lease passed marked ended"
        );
    }
    let retention = registry.inner.settings.retention;
    // Instances gone for longer than a lease have nothing left open.
    sqlx::query(
        "DELETE FROM herald_instances i WHERE i.lease_until < now() - $1 * interval '1 millisecond' \
         AND NOT EXISTS (SELECT 1 FROM herald_streams s WHERE s.instance = i.id AND s.ended_at IS NULL)",
    )
    .bind(registry.inner.settings.lease.as_millis() as f64)
    .execute(pool)
    .await?;
    if !retention.is_zero() {
        let ms = retention.as_millis() as f64;
        sqlx::query(
            "DELETE FROM herald_streams WHERE ended_at < now() - $1 * interval '1 millisecond'",
        )
        .bind(ms)
        .execute(pool)
        .await?;
        sqlx::query(
            "DELETE FROM herald_handles h WHERE h.updated_at < now() - $1 * interval '1 millisecond' \
             AND NOT EXISTS (SELECT 1 FROM herald_streams s WHERE s.handle = h.handle)",
        )
        .bind(ms)
        .execute(pool)
        .await?;
    }
    sqlx::query("DELETE FROM herald_control WHERE at < now() - $1 * interval '1 second'")
        .bind(CONTROL_KEPT_SECONDS)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM herald_revocations WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(())
}
