//! The server a run drives, as one or more instances: a deployment for high
//! availability runs several herald instances on one database (issue 26),
//! and the `publish` scenario splits its publishers (and subscribers)
//! across them, client `i` on instance `i mod n`.
//!
//! [`spawn`] starts them for a run: herald instances on one fresh database,
//! each with a name of its own (`--instance-name=bench-K`, so PostgreSQL
//! shows its backends as `herald/bench-K` and the probe can tell whose lock
//! waits it sees), or nginx with nchan (always one).

use std::sync::Arc;

use anyhow::Context;

use crate::postgres::drop_database;
use crate::servers::{self, Options, Spawned};
use crate::target::{self, Kind, Target};

/// One instance of the server under test.
#[derive(Clone)]
pub struct Member {
    pub target: Arc<dyn Target>,
    /// herald's `--instance-name` (its backends' `application_name` is
    /// `herald/<name>`; `None`: `herald`).
    pub name: Option<String>,
    /// Its process, to measure its CPU and memory.
    pub pid: Option<u32>,
}

impl Member {
    /// Its backends' `application_name` in `pg_stat_activity`.
    pub fn application_name(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(|| "herald".to_owned(), |n| format!("herald/{n}"))
    }
}

/// The instances a run drives, and the database they share when the
/// harness knows it (it started them).
#[derive(Clone)]
pub struct Cluster {
    pub members: Vec<Member>,
    /// The instances' database (herald), for the probe's view of their
    /// backends; `None` when the harness did not start them.
    pub database_url: Option<String>,
}

impl Cluster {
    /// A single server: `target`, with its process if known.
    pub fn single(target: Arc<dyn Target>, pid: Option<u32>) -> Self {
        Self {
            members: vec![Member {
                target,
                name: None,
                pid,
            }],
            database_url: None,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The instance client `i` (a publisher, a subscriber) uses.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[instance_of(i, self.members.len())]
    }
}

/// The instance (index) client `i` uses when there are `instances`:
/// `i mod instances`, so consecutive clients alternate and each instance
/// gets an equal share, give or take one.
pub fn instance_of(i: usize, instances: usize) -> usize {
    i % instances.max(1)
}

/// How many of `clients` each of `instances` gets (see [`instance_of`]).
pub fn split(clients: usize, instances: usize) -> Vec<usize> {
    let n = instances.max(1);
    (0..n)
        .map(|k| clients / n + usize::from(k < clients % n))
        .collect()
}

/// Servers the harness started for a run: `n` herald instances on one
/// fresh database (dropped when they are stopped), or one nginx.
pub struct SpawnedCluster {
    instances: Vec<Spawned>,
    names: Vec<Option<String>>,
    /// herald's database: its name, and its URL.
    database: Option<(String, String)>,
    admin_url: String,
}

/// Starts `n` instances of `kind` (nchan: one) and waits until each is
/// ready. herald's start one after another: the first creates the
/// database and applies the migrations, the others find them done.
///
/// # Errors
/// An instance cannot be started (those already started are stopped).
pub async fn spawn(kind: Kind, opts: &Options, n: usize) -> anyhow::Result<SpawnedCluster> {
    anyhow::ensure!(n >= 1, "--instances must be at least 1");
    if kind == Kind::Nchan {
        anyhow::ensure!(n == 1, "several instances are for herald only");
        let one = servers::spawn(kind, opts).await?;
        return Ok(SpawnedCluster {
            instances: vec![one],
            names: vec![None],
            database: None,
            admin_url: opts.admin_url.clone(),
        });
    }
    let (name, url) = servers::fresh_database(&opts.admin_url)?;
    let mut cluster = SpawnedCluster {
        instances: Vec::with_capacity(n),
        names: Vec::with_capacity(n),
        database: Some((name, url.clone())),
        admin_url: opts.admin_url.clone(),
    };
    let named = opts
        .herald_args
        .iter()
        .any(|a| a.starts_with("--instance-name"));
    for k in 1..=n {
        let mut o = opts.clone();
        o.herald_args.push(format!("--database-url={url}"));
        let instance_name = (!named).then(|| format!("bench-{k}"));
        if let Some(name) = &instance_name {
            o.herald_args.push(format!("--instance-name={name}"));
        }
        // On an error `cluster` is dropped: its instances are killed and
        // the database dropped.
        let spawned = servers::spawn(kind, &o)
            .await
            .with_context(|| format!("herald instance {k} of {n} did not start"))?;
        cluster.instances.push(spawned);
        cluster.names.push(instance_name);
    }
    Ok(cluster)
}

impl SpawnedCluster {
    /// What a scenario needs to drive them.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            members: self
                .instances
                .iter()
                .zip(&self.names)
                .map(|(s, name)| Member {
                    target: target::make(s.kind, s.addr),
                    name: name.clone(),
                    pid: Some(s.pid),
                })
                .collect(),
            database_url: self.database.as_ref().map(|(_, url)| url.clone()),
        }
    }

    /// Stops every instance, then drops the database.
    ///
    /// # Errors
    /// The database cannot be dropped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let instances = std::mem::take(&mut self.instances);
        let stopped = futures_all(instances.into_iter().map(Spawned::stop)).await;
        if let Some((name, _)) = self.database.take() {
            drop_database(&self.admin_url, &name).await?;
        }
        stopped
    }
}

/// Awaits every future (together), and returns the first error.
async fn futures_all<F>(futures: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut first = Ok(());
    for h in handles {
        let r = h.await.map_err(anyhow::Error::from).and_then(|r| r);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        // The instances first (each killed as it drops), then their database.
        self.instances.clear();
        if let Some((name, _)) = self.database.take() {
            servers::drop_database_blocking(&self.admin_url, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_split_evenly_across_instances() {
        assert_eq!(split(64, 1), [64]);
        assert_eq!(split(64, 2), [32, 32]);
        assert_eq!(split(64, 3), [22, 21, 21]);
        assert_eq!(split(2, 3), [1, 1, 0]);
        // The split is what `instance_of` does, client by client.
        for n in 1..=4 {
            let mut counted = vec![0; n];
            for i in 0..64 {
                counted[instance_of(i, n)] += 1;
            }
            assert_eq!(counted, split(64, n), "{n} instances");
        }
    }

    #[test]
    fn an_instance_is_known_to_postgresql_by_its_name() {
        let target = target::make(Kind::Herald, "127.0.0.1:1".parse().unwrap());
        let mut m = Member {
            target,
            name: None,
            pid: None,
        };
        assert_eq!(m.application_name(), "herald");
        m.name = Some("bench-2".into());
        assert_eq!(m.application_name(), "herald/bench-2");
    }
}
