//! The hub's unit tests: hand-over, eviction, and the work the index
//! saves, counted (lookups and frames examined), not timed.

use super::*;
use crate::event::{Topic, TopicFilter};

pub(super) fn frame(id: i64, topic: &str) -> Arc<Frame> {
    Arc::new(Frame {
        id,
        topic: Topic::parse(topic).unwrap(),
        bytes: bytes::Bytes::from(format!("id: {id}\n\n")),
        event_line: (0, 0),
    })
}

fn ids(frames: &[Arc<Frame>]) -> Vec<i64> {
    frames.iter().map(|f| f.id).collect()
}

#[test]
fn attach_inside_ring_returns_matching_backlog() {
    let hub = Hub::new(4, 0);
    hub.publish(&[frame(1, "a"), frame(2, "b"), frame(3, "a")]);
    let filters = Filters::new(vec![TopicFilter::parse("a").unwrap()]);
    match hub.attach(1, &filters, 8, &CancellationToken::new()) {
        Attach::Live { backlog, .. } => assert_eq!(ids(&backlog), vec![3]),
        Attach::NotCovered { .. } => panic!("ring covers cursor 1"),
    }
}

#[test]
fn attach_below_ring_floor_is_not_covered() {
    let hub = Hub::new(2, 0);
    hub.publish(&[frame(1, "a"), frame(2, "a"), frame(3, "a")]);
    assert!(matches!(
        hub.attach(0, &Filters::default(), 8, &CancellationToken::new()),
        Attach::NotCovered { ring_floor: 1 }
    ));
    assert!(matches!(
        hub.attach(1, &Filters::default(), 8, &CancellationToken::new()),
        Attach::Live { .. }
    ));
}

#[test]
fn full_queue_drops_the_subscriber() {
    let hub = Hub::new(8, 0);
    let lagged = CancellationToken::new();
    let Attach::Live { mut live, .. } = hub.attach(0, &Filters::default(), 1, &lagged) else {
        panic!("covered");
    };
    hub.publish(&[frame(1, "a"), frame(2, "a")]);
    assert_eq!(hub.subscribers(), 0);
    assert!(lagged.is_cancelled());
    assert_eq!(live.queue.try_recv().unwrap().id, 1);
    assert!(live.queue.try_recv().is_err());
}

#[test]
fn dropping_registration_detaches() {
    let hub = Hub::new(8, 0);
    let attached = hub.attach(0, &Filters::default(), 1, &CancellationToken::new());
    assert_eq!(hub.subscribers(), 1);
    drop(attached);
    assert_eq!(hub.subscribers(), 0);
}

fn filters(list: &[&str]) -> Filters {
    Filters::new(
        list.iter()
            .map(|f| TopicFilter::parse(f).unwrap())
            .collect(),
    )
}

fn live(attached: Attach) -> (Vec<Arc<Frame>>, Registration) {
    match attached {
        Attach::Live { backlog, live } => (backlog, live),
        Attach::NotCovered { ring_floor } => panic!("not covered, floor {ring_floor}"),
    }
}

fn drain(reg: &mut Registration) -> Vec<i64> {
    std::iter::from_fn(|| reg.queue.try_recv().ok().map(|f| f.id)).collect()
}

#[test]
fn publish_to_one_user_among_10000_visits_one_subscriber() {
    let hub = Hub::new(16, 0);
    let token = CancellationToken::new();
    let mut regs: Vec<Registration> = (0..10_000)
        .map(|i| live(hub.attach(0, &filters(&[&format!("user:{i}")]), 4, &token)).1)
        .collect();
    let before = hub.work().candidates;
    hub.publish(&[frame(1, "user:4242")]);
    assert_eq!(hub.work().candidates - before, 1);
    assert_eq!(drain(&mut regs[4242]), vec![1]);
    assert!(regs.iter_mut().all(|r| r.queue.try_recv().is_err()));

    // Prefix and all-topics subscribers add what they match, no more.
    let _ops = live(hub.attach(1, &filters(&["ops:*"]), 4, &token));
    let _users = live(hub.attach(1, &filters(&["user:42*"]), 4, &token));
    let _all = live(hub.attach(1, &Filters::default(), 4, &token));
    let before = hub.work().candidates;
    hub.publish(&[frame(2, "user:4242")]);
    assert_eq!(hub.work().candidates - before, 3);
}

#[test]
fn overlapping_filters_get_each_event_once() {
    let hub = Hub::new(16, 0);
    let both = filters(&["user:1", "user:*", "us*", "user:1*", "user:1"]);
    let (_, mut reg) = live(hub.attach(0, &both, 8, &CancellationToken::new()));
    hub.publish(&[frame(1, "user:1"), frame(2, "user:2"), frame(3, "ops")]);
    assert_eq!(drain(&mut reg), vec![1, 2]);
    let (backlog, _) = live(hub.attach(0, &both, 8, &CancellationToken::new()));
    assert_eq!(ids(&backlog), vec![1, 2]);
}

#[test]
fn lagging_subscriber_leaves_every_index() {
    let hub = Hub::new(8, 0);
    let lagged = CancellationToken::new();
    let f = filters(&["user:1", "user:*", "u*"]);
    let (_, mut reg) = live(hub.attach(0, &f, 1, &lagged));
    hub.publish(&[frame(1, "user:1"), frame(2, "user:1")]);
    assert!(lagged.is_cancelled());
    assert_eq!(hub.subscribers(), 0);
    assert_eq!(hub.index_size(), 0);
    assert_eq!(drain(&mut reg), vec![1]);
    drop(reg);
    assert_eq!(hub.index_size(), 0);
}

#[test]
fn subscribers_leaving_under_load_leave_no_index_entry() {
    let hub = Hub::new(64, 0);
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for id in 1..=20_000 {
                hub.publish(&[frame(id, &format!("user:{}", id % 300))]);
            }
        })
    };
    let mut attached = std::collections::VecDeque::new();
    for i in 0..3_000 {
        let user = format!("user:{i}");
        let prefix = format!("user:{}*", i % 30);
        let f = match i % 4 {
            0 => filters(&[&user]),
            1 => filters(&[&prefix]),
            2 => filters(&[&user, &prefix, "user:*"]),
            _ => Filters::default(),
        };
        let lagged = CancellationToken::new();
        if let Attach::Live { live, .. } = hub.attach(hub.head(), &f, 1 + i % 3, &lagged) {
            attached.push_back(live);
        }
        if attached.len() > 200 {
            attached.pop_front();
        }
    }
    publisher.join().unwrap();
    drop(attached);
    assert_eq!(hub.subscribers(), 0);
    assert_eq!(hub.index_size(), 0);
}
