//! One committer for the cluster (issue 26): the instances on one database
//! elect one of them to commit every instance's publishes, and the others
//! send it theirs (`src/log/append/cluster.rs`, `forward.rs`). Each test
//! runs real `herald` processes, so that each has metrics of its own.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::faults::{Api, HeraldProcess};
use crate::helpers::*;

/// One series of `/metrics` (its full name with labels), 0 when absent.
async fn series(api: &Api, name: &str) -> f64 {
    let text = api.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn is_committer(h: &HeraldProcess) -> bool {
    series(&h.api, "herald_append_committer").await == 1.0
}

async fn forwarded(h: &HeraldProcess, outcome: &str) -> f64 {
    series(
        &h.api,
        &format!("herald_append_forwarded_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

/// Groups this instance committed itself.
async fn own_groups(h: &HeraldProcess) -> f64 {
    series(&h.api, "herald_append_group_events_count").await
}

/// The index of the one instance that commits for the cluster, once
/// exactly one says so.
async fn committer_of(instances: &[&HeraldProcess]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut committers = Vec::new();
        for (i, h) in instances.iter().enumerate() {
            if is_committer(h).await {
                committers.push(i);
            }
        }
        if let [one] = committers[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "committers after {WAIT:?}: {committers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes through `follower` until one of its publishes was answered by
/// the committer: it has read where the committer is.
async fn until_forwarding(follower: &HeraldProcess, topic: &str) {
    wait_for(
        "the follower to send its publishes to the committer",
        || async {
            follower.api.publish_ok(topic, json!("warm-up")).await;
            forwarded(follower, "answered").await >= 1.0
        },
    )
    .await;
}

/// Two instances on a fresh database, and which of them commits.
async fn pair(extra_first: &[&str]) -> (TestDb, HeraldProcess, HeraldProcess) {
    let db = TestDb::create().await;
    let first = HeraldProcess::start(&db.url, extra_first).await;
    first.api.wait_ready().await;
    // The first one started alone: it holds the lock.
    wait_for("the first instance to commit for the cluster", || {
        is_committer(&first)
    })
    .await;
    let second = HeraldProcess::start(&db.url, &[]).await;
    second.api.wait_ready().await;
    (db, first, second)
}

async fn publish_with_key(api: &Api, topic: &str, key: &str, data: Value) -> reqwest::Response {
    api.client
        .post(api.url("/v1/events"))
        .header("Idempotency-Key", key)
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await
        .expect("publish request")
}

/// Every event of the log as (id, topic, data), in id order.
async fn whole_log(db: &TestDb) -> Vec<(i64, String, String)> {
    let mut conn = db.connect().await;
    sqlx::query_as("select id, topic, data::text from events order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_instances_elect_one_committer_and_the_others_send_it_their_publishes() {
    let (db, committer, follower) = pair(&[]).await;
    assert_eq!(committer_of(&[&committer, &follower]).await, 0);
    let topic = unique_topic("forwarded");
    until_forwarding(&follower, &topic).await;
    let answered = forwarded(&follower, "answered").await;
    let own = own_groups(&follower).await;

    // 40 publishes at once, all through the follower.
    let publishes = (0..40).map(|n| {
        let (api, topic) = (follower.api.clone(), topic.clone());
        async move {
            let res = api.publish(&topic, json!({"n": n})).await;
            assert_eq!(res.status(), 201);
            let body: Value = res.json().await.unwrap();
            (body["id"].as_str().unwrap().parse::<i64>().unwrap(), n)
        }
    });
    let acked = futures::future::join_all(publishes).await;

    // The committer stored them all; the follower committed nothing itself.
    assert_eq!(forwarded(&follower, "answered").await - answered, 40.0);
    assert_eq!(own_groups(&follower).await, own);
    assert_eq!(forwarded(&follower, "not_sent").await, 0.0);
    let log = whole_log(&db).await;
    for (i, (id, _, _)) in log.iter().enumerate() {
        assert_eq!(*id, i as i64 + 1, "ids are dense");
    }
    for (id, n) in acked {
        let (_, t, data) = &log[id as usize - 1];
        assert_eq!((t, data), (&topic, &json!({"n": n}).to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_publish_through_a_follower_answers_its_original_on_every_instance() {
    let (_db, committer, follower) = pair(&[]).await;
    let topic = unique_topic("keyed");
    until_forwarding(&follower, &topic).await;

    let first = publish_with_key(&follower.api, &topic, "order-1", json!({"v": 1})).await;
    assert_eq!(first.status(), 201);
    let original = first.text().await.unwrap();
    for (api, data) in [
        (&follower.api, json!({"v": 2})),
        (&committer.api, json!({"v": 3})),
    ] {
        let again = publish_with_key(api, &topic, "order-1", data).await;
        assert_eq!(
            again.status(),
            200,
            "a repeat is answered with the original"
        );
        assert_eq!(again.text().await.unwrap(), original);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_request_postgres_refuses_fails_alone() {
    let (db, _committer, follower) = pair(&[]).await;
    let good = unique_topic("good");
    until_forwarding(&follower, &good).await;
    let mut conn = db.connect().await;
    for sql in [
        "create function refuse_poison() returns trigger language plpgsql as $$ \
         begin raise exception 'poison' using errcode = '22023'; end $$",
        "create trigger refuse_poison before insert on events for each row \
         when (new.topic = 'poison') execute function refuse_poison()",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    let publishes = (0..60).map(|n| {
        let (api, good) = (follower.api.clone(), good.clone());
        async move {
            let topic = if n % 4 == 0 {
                "poison".to_owned()
            } else {
                good
            };
            let res = api.publish(&topic, json!(n)).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (
                topic == "poison",
                status,
                body["code"].as_str().map(str::to_owned),
            )
        }
    });
    for (poison, status, code) in futures::future::join_all(publishes).await {
        if poison {
            assert_eq!(
                (status, code.as_deref()),
                (400, Some("refused_by_database"))
            );
        } else {
            assert_eq!(status, 201, "a good publish: {code:?}");
        }
    }
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from events where topic = $1 and data::text <> '\"warm-up\"'",
    )
    .bind(&good)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored, 45, "every good one, besides the warm-ups");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_survivor_commits_for_the_cluster_when_the_committer_dies() {
    let (_db, mut committer, follower) = pair(&[]).await;
    let topic = unique_topic("takeover");
    until_forwarding(&follower, &topic).await;

    committer.kill9().await;
    wait_for("the survivor to hold the committer lock", || {
        is_committer(&follower)
    })
    .await;
    let own = own_groups(&follower).await;
    follower.api.publish_ok(&topic, json!("after")).await;
    assert!(own_groups(&follower).await > own, "it commits itself now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_that_cannot_reach_the_committer_commits_its_publishes_itself() {
    // The committer advertises a port nothing listens on.
    let (db, _committer, follower) = pair(&["--advertise-url", "http://127.0.0.1:9"]).await;
    let topic = unique_topic("unreachable");
    wait_for("the follower to try the committer", || async {
        follower.api.publish_ok(&topic, json!("try")).await;
        forwarded(&follower, "not_sent").await >= 1.0
    })
    .await;
    for n in 0..20 {
        follower.api.publish_ok(&topic, json!(n)).await;
    }
    assert_eq!(forwarded(&follower, "answered").await, 0.0);
    let log = whole_log(&db).await;
    assert!(log.len() >= 21);
    assert!(log.iter().enumerate().all(|(i, e)| e.0 == i as i64 + 1));
}

/// `POST /v1/cluster/append` is not for clients: it takes only the
/// secret of the committer's election, and only on the committer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_committer_takes_groups_only_with_its_secret() {
    let (db, committer, follower) = pair(&[]).await;
    let mut conn = db.connect().await;
    let secret: String = sqlx::query_scalar("select secret from log_committer")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let topic = unique_topic("direct");
    let group = json!({"requests": [
        {"left_ms": 2000, "events": [{"topic": topic, "type": "message", "data": {"a": [1, 2]}}]},
        {"left_ms": 2000, "events": [{"topic": "not a topic", "type": "message", "data": 1}]},
    ]});
    let send = |api: &Api, auth: Option<String>, body: String| {
        let mut req = api.client.post(api.url("/v1/cluster/append")).body(body);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        req.send()
    };
    let bearer = Some(format!("Bearer {secret}"));
    let status = |res: reqwest::Result<reqwest::Response>| res.unwrap().status().as_u16();

    assert_eq!(
        status(send(&committer.api, None, group.to_string()).await),
        401
    );
    let wrong = Some("Bearer not-the-secret".to_owned());
    assert_eq!(
        status(send(&committer.api, wrong, group.to_string()).await),
        403
    );
    assert_eq!(
        status(send(&follower.api, bearer.clone(), group.to_string()).await),
        403
    );
    let not_json = send(&committer.api, bearer.clone(), "{\"requests\": [".into()).await;
    assert_eq!(status(not_json), 400);
    let huge = format!("{{\"requests\":[],\"pad\":\"{}\"}}", "x".repeat(17 << 20));
    assert_eq!(
        status(send(&committer.api, bearer.clone(), huge).await),
        413
    );
    assert!(
        whole_log(&db).await.is_empty(),
        "nothing refused was stored"
    );

    let res = send(&committer.api, bearer, group.to_string())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["results"][0]["stored"][0]["id"], 1);
    assert_eq!(answer["results"][1]["failed"]["kind"], "refused");
    let log = whole_log(&db).await;
    assert_eq!(log, [(1, topic, r#"{"a":[1,2]}"#.to_owned())]);
}
