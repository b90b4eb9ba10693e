//! Resuming a stream from a cursor (docs/ARCHITECTURE.md, "Subscribe", resume): replay
//! from the ring or the log, the hand-over to live events with no gap and no
//! duplicate, `event: reset` for cursors the log cannot serve, refusals of
//! cursors that are not ids, and resuming on another instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// A heartbeat long enough that no `: ping` falls between the frames a
/// byte-for-byte assertion expects.
pub(crate) const QUIET: Duration = Duration::from_secs(60);

/// The sum of the samples of `name` whose labels include `label`
/// (e.g. `source="ring"`).
pub(crate) async fn labeled_metric(app: &TestApp, name: &str, label: &str) -> f64 {
    app.metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once('}'))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Reads events until one with `last` arrives; fails on a stream end.
pub(crate) async fn events_through(sse: &mut SseClient, last: i64) -> Vec<SseFrame> {
    let mut out = Vec::new();
    loop {
        let ev = sse.next_event().await.expect("stream open");
        let id = ev.id_num();
        out.push(ev);
        if id >= last {
            return out;
        }
    }
}

pub(crate) fn ids(frames: &[SseFrame]) -> Vec<i64> {
    frames.iter().map(SseFrame::id_num).collect()
}

/// A stream of every topic opened before anything is published: once it has
/// seen an id, so has the hub (the ring holds it, the hub's head is past it).
pub(crate) async fn open_witness(app: &TestApp) -> SseClient {
    let mut sse = app.stream("", None).await;
    assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));
    sse
}

/// Publishes one event per topic in one batch; returns `(topic, id)` pairs.
async fn publish_topics(app: &TestApp, topics: &[&str]) -> Vec<(String, i64)> {
    let batch = topics
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"topic": t, "data": {"i": i}}))
        .collect();
    let ids = app.publish_batch_ok(batch).await;
    topics.iter().map(|t| (*t).to_owned()).zip(ids).collect()
}

fn ids_on(published: &[(String, i64)], topic: &str, after: i64) -> Vec<i64> {
    published
        .iter()
        .filter(|(t, id)| t == topic && *id > after)
        .map(|(_, id)| *id)
        .collect()
}

/// Publishes a mix of two topics, resumes `topic` from the second event with
/// the cursor given as `how` says, and checks replay then live delivery.
async fn assert_resume_replays_then_goes_live(
    writer: Writer,
    how: impl Fn(&str, i64) -> (String, Option<String>),
) {
    let app = spawn_app().await.over(writer);
    let (mine, other) = (unique_topic("resume"), unique_topic("other"));
    let published =
        publish_topics(&app, &[&mine, &mine, &other, &mine, &other, &other, &mine]).await;
    let cursor = published[1].1;

    let (query, header) = how(&mine, cursor);
    let mut sse = app.stream(&query, header.as_deref()).await;
    let replayed = ids_on(&published, &mine, cursor);
    let got_replay = events_through(&mut sse, *replayed.last().unwrap()).await;
    let live = publish_topics(&app, &[&other, &mine, &other, &mine]).await;
    let got_live = events_through(&mut sse, live[3].1).await;

    assert_eq!(ids(&got_replay), replayed);
    assert_eq!(ids(&got_live), ids_on(&live, &mine, 0));
    for ev in got_replay.iter().chain(&got_live) {
        assert_eq!(ev.json()["topic"], mine.as_str());
        assert_eq!(ev.json()["id"], ev.id_num().to_string());
    }
    app.stop().await;
}

async fn resume_with_last_event_id_header_replays_missed_matching_events_once_then_live(
    writer: Writer,
) {
    assert_resume_replays_then_goes_live(writer, |topic, cursor| {
        (format!("topic={topic}"), Some(cursor.to_string()))
    })
    .await;
}
over_both_writers!(resume_with_last_event_id_header_replays_missed_matching_events_once_then_live);

async fn resume_with_last_event_id_query_replays_missed_matching_events_once_then_live(
    writer: Writer,
) {
    assert_resume_replays_then_goes_live(writer, |topic, cursor| {
        (format!("topic={topic}&last_event_id={cursor}"), None)
    })
    .await;
}
over_both_writers!(resume_with_last_event_id_query_replays_missed_matching_events_once_then_live);

async fn replay_treats_underscore_in_filters_literally_as_live_delivery_does(writer: Writer) {
    let app = spawn_app_with(|c| c.ring_size = 1).await.over(writer);
    let base = unique_topic("under");
    let (exact, exact_lookalike) = (format!("{base}:a_b"), format!("{base}:aXb"));
    let (deep, deep_lookalike) = (format!("{base}:c_d:e"), format!("{base}:cXd:e"));
    let mut witness = open_witness(&app).await;
    let published = publish_topics(
        &app,
        &[
            &exact_lookalike,
            &exact,
            &deep_lookalike,
            &deep,
            &base,
            &base,
        ],
    )
    .await;
    events_through(&mut witness, published[5].1).await;

    // The ring holds one event: everything after the cursor comes from the
    // log, filtered by SQL `LIKE`, where `_` matches any character.
    let mut sse = app
        .stream(
            &format!("topic={exact}&topic={base}:c_d:*&topic={base}"),
            Some("0"),
        )
        .await;
    let got = events_through(&mut sse, published[5].1).await;

    let expected = vec![
        published[1].1,
        published[3].1,
        published[4].1,
        published[5].1,
    ];
    assert_eq!(ids(&got), expected);
    app.stop().await;
}
over_both_writers!(replay_treats_underscore_in_filters_literally_as_live_delivery_does);

async fn last_event_id_header_wins_over_query_parameter(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("wins");
    let ids_published = app.publish_batch_ok(vec![json!({"topic": topic}); 6]).await;

    let mut sse = app
        .stream(
            &format!("topic={topic}&last_event_id={}", ids_published[0]),
            Some(&ids_published[3].to_string()),
        )
        .await;
    let got = events_through(&mut sse, ids_published[5]).await;

    assert_eq!(ids(&got), ids_published[4..].to_vec());
    app.stop().await;
}
over_both_writers!(last_event_id_header_wins_over_query_parameter);

async fn resume_inside_the_ring_is_served_from_memory(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("ring");
    let mut witness = open_witness(&app).await;
    let published = app.publish_batch_ok(vec![json!({"topic": topic}); 5]).await;
    events_through(&mut witness, published[4]).await;
    let before = labeled_metric(&app, "herald_resumes_total", "source=\"ring\"").await;

    let mut sse = app
        .stream(&format!("topic={topic}"), Some(&published[1].to_string()))
        .await;
    let got = events_through(&mut sse, published[4]).await;

    assert_eq!(ids(&got), published[2..].to_vec());
    let after = labeled_metric(&app, "herald_resumes_total", "source=\"ring\"").await;
    assert!(after >= before + 1.0, "ring resumes {before} -> {after}");
    app.stop().await;
}
over_both_writers!(resume_inside_the_ring_is_served_from_memory);

async fn resume_from_before_the_ring_is_served_from_the_database_complete_and_in_order(
    writer: Writer,
) {
    let app = spawn_app_with(|c| c.ring_size = 4).await.over(writer);
    let topic = unique_topic("database");
    let mut witness = open_witness(&app).await;
    let published = app
        .publish_batch_ok(vec![json!({"topic": topic}); 20])
        .await;
    events_through(&mut witness, published[19]).await;
    let before = labeled_metric(&app, "herald_resumes_total", "source=\"database\"").await;

    let mut sse = app
        .stream(&format!("topic={topic}"), Some(&published[1].to_string()))
        .await;
    let replayed = events_through(&mut sse, published[19]).await;
    let live = app.publish_ok(&topic, json!("live")).await;
    let marker = app.publish_ok(&topic, json!("marker")).await;
    let after_replay = events_through(&mut sse, marker).await;

    assert_eq!(ids(&replayed), published[2..].to_vec());
    assert_eq!(ids(&after_replay), vec![live, marker]);
    let after = labeled_metric(&app, "herald_resumes_total", "source=\"database\"").await;
    assert!(
        after >= before + 1.0,
        "database resumes {before} -> {after}"
    );
    app.stop().await;
}
over_both_writers!(resume_from_before_the_ring_is_served_from_the_database_complete_and_in_order);

/// `n` events of which every fifth is on `noise`: replays filter too.
fn mixed_batch(topic: &str, noise: &str, n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let t = if i % 5 == 4 { noise } else { topic };
            json!({"topic": t, "type": tag, "data": i})
        })
        .collect()
}

async fn resume_hands_over_from_replay_to_live_without_gap_or_duplicate_under_load(writer: Writer) {
    const BACKLOG_BATCHES: usize = 3;
    const BATCH: usize = 1000;
    const PUBLISHERS: usize = 4;
    let app = spawn_app_with(|c| c.ring_size = 8).await.over(writer);
    let (topic, noise) = (unique_topic("handover"), unique_topic("noise"));
    let mut backlog_last = 0;
    for _ in 0..BACKLOG_BATCHES {
        backlog_last = *app
            .publish_batch_ok(mixed_batch(&topic, &noise, BATCH, "backlog"))
            .await
            .last()
            .unwrap();
    }
    let seen = Arc::new(AtomicI64::new(0));
    let batches_sent = Arc::new(AtomicI64::new(0));

    // Publishers run from before the resume until well after its replay.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (client, url) = (reqwest::Client::new(), app.url("/v1/events"));
            let (seen, sent) = (seen.clone(), batches_sent.clone());
            let (topic, noise) = (topic.clone(), noise.clone());
            tokio::spawn(async move {
                let mut after_replay = 0;
                while after_replay < 20 {
                    let batch = mixed_batch(&topic, &noise, 5, "live");
                    let res = client.post(&url).json(&batch).send().await.unwrap();
                    assert_eq!(res.status(), 201);
                    sent.fetch_add(1, Ordering::SeqCst);
                    if seen.load(Ordering::SeqCst) >= backlog_last {
                        after_replay += 1;
                    }
                }
            })
        })
        .collect();
    wait_for("publishing to be under way", || async {
        batches_sent.load(Ordering::SeqCst) >= 10
    })
    .await;
    let mut sse = app.stream(&format!("topic={topic}"), Some("0")).await;
    let subscriber = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let ev = sse.next_event().await.expect("stream open");
            seen.store(ev.id_num(), Ordering::SeqCst);
            let end = ev.event.as_deref() == Some("end");
            got.push(ev.id_num());
            if end {
                return got;
            }
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        for p in publishers {
            p.await.unwrap();
        }
        let end = json!({"topic": topic, "type": "end", "data": null});
        assert_eq!(app.publish(&end).await.status(), 201);
        subscriber.await.unwrap()
    })
    .await
    .expect("replay and hand-over in time");

    let mut conn = app.db.connect().await;
    let log: Vec<i64> = sqlx::query_scalar("select id from events where topic = $1 order by id")
        .bind(&topic)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(log.len() > BACKLOG_BATCHES * BATCH * 4 / 5, "{}", log.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
    assert_eq!(got.len(), log.len(), "no gap, no duplicate");
    assert_eq!(got, log);
    // Each publisher went on for 20 batches (4 of 5 events on the topic)
    // after the subscriber had replayed the backlog.
    let live = got.iter().filter(|id| **id > backlog_last).count();
    assert!(live > PUBLISHERS * 20 * 4, "{live} live events");
    app.stop().await;
}
over_both_writers!(resume_hands_over_from_replay_to_live_without_gap_or_duplicate_under_load);

async fn cursor_that_is_not_an_event_id_is_refused_with_problem_json(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("badcursor");

    for bad in ["abc", "-1", "1.5", "1e3", "0x10", "99999999999999999999"] {
        let by_header = app
            .stream_response(&format!("topic={topic}"), Some(bad))
            .await;
        let by_query = app
            .stream_response(&format!("topic={topic}&last_event_id={bad}"), None)
            .await;

        for (how, res) in [("header", by_header), ("query", by_query)] {
            assert_eq!(res.status(), 400, "{how} {bad}");
            assert_eq!(
                res.headers()["content-type"],
                "application/problem+json",
                "{how} {bad}"
            );
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["status"], 400, "{how} {bad}");
            assert_eq!(body["code"], "bad_request", "{how} {bad}: {body}");
        }
    }
    app.stop().await;
}
over_both_writers!(cursor_that_is_not_an_event_id_is_refused_with_problem_json);

async fn empty_last_event_id_header_means_no_cursor(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("empty");
    let mut witness = open_witness(&app).await;
    let earlier = app.publish_batch_ok(vec![json!({"topic": topic}); 3]).await;
    events_through(&mut witness, earlier[2]).await;

    let mut sse = app.stream(&format!("topic={topic}"), Some("")).await;
    assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));
    let live = app.publish_ok(&topic, json!("live")).await;
    let next = sse.next_event().await.unwrap();

    assert_eq!(
        next.id_num(),
        live,
        "nothing before the connection replayed"
    );
    assert_eq!(next.event.as_deref(), Some("message"));
    app.stop().await;
}
over_both_writers!(empty_last_event_id_header_means_no_cursor);

async fn later_instance_resumes_a_cursor_from_an_earlier_one_exactly_once(writer: Writer) {
    let first = spawn_app().await.over(writer);
    let topic = unique_topic("instances");
    let mut sse = first.stream(&format!("topic={topic}"), None).await;
    assert_eq!(sse.next_frame().await.unwrap().retry, Some(200));
    let published = first
        .publish_batch_ok(vec![json!({"topic": topic}); 10])
        .await;
    let cursor = sse.events(4).await[3].id_num();
    drop(sse);

    let second = spawn_on(first.db.clone(), test_config(&first.db.url))
        .await
        .over(writer);
    let mut resumed = second
        .stream(&format!("topic={topic}"), Some(&cursor.to_string()))
        .await;
    let replayed = events_through(&mut resumed, published[9]).await;
    let from_first = first.publish_ok(&topic, json!("via first")).await;
    let from_second = second.publish_ok(&topic, json!("via second")).await;
    let live = events_through(&mut resumed, from_second).await;

    assert_eq!(cursor, published[3]);
    assert_eq!(ids(&replayed), published[4..].to_vec());
    assert_eq!(ids(&live), vec![from_first, from_second]);
    second.stop().await;
    first.stop().await;
}
over_both_writers!(later_instance_resumes_a_cursor_from_an_earlier_one_exactly_once);

async fn client_that_drops_before_its_first_event_resumes_from_the_opening_id(writer: Writer) {
    let app = spawn_app().await.over(writer);
    let topic = unique_topic("opening");
    let before = app.publish_ok(&topic, json!("before")).await;
    let mut first = app.stream(&format!("topic={topic}"), None).await;
    let opening = first.next_frame().await.unwrap();
    // The instance may not have read `before` from the log yet: the start
    // is at most there.
    assert!(
        opening.id_num() <= before,
        "the opening frame names the start"
    );
    assert!(!opening.is_event());
    drop(first);

    let missed = app.publish_ok(&topic, json!("while away")).await;
    let mut again = app
        .stream(&format!("topic={topic}"), opening.id.as_deref())
        .await;
    let mut got = Vec::new();
    while got.last() != Some(&missed) {
        got.push(again.next_event().await.unwrap().id_num());
    }

    let expected: Vec<i64> = [before, missed]
        .into_iter()
        .filter(|id| *id > opening.id_num())
        .collect();
    assert_eq!(got, expected);
    app.stop().await;
}
over_both_writers!(client_that_drops_before_its_first_event_resumes_from_the_opening_id);
