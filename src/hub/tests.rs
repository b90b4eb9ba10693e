//! The hub's unit tests: hand-over, eviction, and the work the index
//! saves, counted (lookups and frames examined), not timed.

use super::*;
use crate::event::{Topic, TopicFilter};

pub(super) fn frame(id: i64, topic: &str) -> Arc<Frame> {
    Arc::new(Frame {
        id,
        committed: time::OffsetDateTime::UNIX_EPOCH,
        topic: Topic::parse(topic).unwrap(),
        bytes: bytes::Bytes::from(format!("id: {id}\n\n")),
        event_line: (0, 0),
        trace: None,
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
        Attach::NotCovered => panic!("ring covers cursor 1"),
    }
}

#[test]
fn attach_below_ring_floor_is_not_covered() {
    let hub = Hub::new(2, 0);
    hub.publish(&[frame(1, "a"), frame(2, "a"), frame(3, "a")]);
    assert!(matches!(
        hub.attach(0, &Filters::default(), 8, &CancellationToken::new()),
        Attach::NotCovered
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

fn live(attached: Attach) -> (Vec<Arc<Frame>>, Registration) {
    match attached {
        Attach::Live { backlog, live } => (backlog, live),
        Attach::NotCovered => panic!("not covered"),
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
        .map(|i| live(hub.attach(0, &Filters::of(&[&format!("user:{i}")]), 4, &token)).1)
        .collect();
    let before = hub.work().candidates;
    hub.publish(&[frame(1, "user:4242")]);
    assert_eq!(hub.work().candidates - before, 1);
    assert_eq!(drain(&mut regs[4242]), vec![1]);
    assert!(regs.iter_mut().all(|r| r.queue.try_recv().is_err()));

    // Prefix and all-topics subscribers add what they match, no more.
    let _ops = live(hub.attach(1, &Filters::of(&["ops:*"]), 4, &token));
    let _users = live(hub.attach(1, &Filters::of(&["user:42*"]), 4, &token));
    let _all = live(hub.attach(1, &Filters::default(), 4, &token));
    let before = hub.work().candidates;
    hub.publish(&[frame(2, "user:4242")]);
    assert_eq!(hub.work().candidates - before, 3);
}

#[test]
fn overlapping_filters_get_each_event_once() {
    let hub = Hub::new(16, 0);
    let both = Filters::of(&["user:1", "user:*", "us*", "user:1*", "user:1"]);
    let (_, mut reg) = live(hub.attach(0, &both, 8, &CancellationToken::new()));
    hub.publish(&[frame(1, "user:1"), frame(2, "user:2"), frame(3, "ops")]);
    assert_eq!(drain(&mut reg), vec![1, 2]);
    let (backlog, _) = live(hub.attach(0, &both, 8, &CancellationToken::new()));
    assert_eq!(ids(&backlog), vec![1, 2]);
}

/// A hub whose default-sized ring is full: 65,636 frames published over
/// 1,000 per-user topics, the first 100 already gone.
fn full_ring() -> Hub {
    let hub = Hub::new(65_536, 0);
    let frames: Vec<_> = (1..=65_636)
        .map(|id| frame(id, &format!("user:{}", id % 1000)))
        .collect();
    hub.publish(&frames);
    assert_eq!(hub.ring_floor(), 100);
    hub
}

#[test]
fn exact_resume_examines_only_its_topics_frames() {
    let hub = full_ring();
    let token = CancellationToken::new();
    let mine: Vec<i64> = (101..=65_636).filter(|id| id % 1000 == 7).collect();
    let before = hub.work().frames;
    let (backlog, _reg) = live(hub.attach(100, &Filters::of(&["user:7"]), 8, &token));
    assert_eq!(ids(&backlog), mine);
    assert_eq!(hub.work().frames - before, mine.len() as u64);
    assert_eq!(mine.len(), 65);

    let before = hub.work().frames;
    let two = Filters::of(&["user:8", "user:7"]);
    let (backlog, _reg) = live(hub.attach(60_000, &two, 8, &token));
    let expected: Vec<i64> = (60_001..=65_636)
        .filter(|id| matches!(id % 1000, 7 | 8))
        .collect();
    assert_eq!(ids(&backlog), expected);
    assert_eq!(hub.work().frames - before, expected.len() as u64);
}

#[test]
fn prefix_resume_holds_the_lock_for_blocks_not_frames() {
    let hub = full_ring();
    let token = CancellationToken::new();
    let before = hub.work().frames;
    let (backlog, _reg) = live(hub.attach(100, &Filters::default(), 8, &token));
    assert_eq!(ids(&backlog), (101..=65_636).collect::<Vec<_>>());
    let locked = hub.work().frames - before;
    assert!(
        locked <= (65_536 / ring::BLOCK + ring::BLOCK) as u64,
        "{locked}"
    );

    let (backlog, _reg) = live(hub.attach(100, &Filters::of(&["user:99*"]), 8, &token));
    let expected: Vec<i64> = (101..=65_636)
        .filter(|id| id % 1000 == 99 || id % 1000 / 10 == 99)
        .collect();
    assert_eq!(ids(&backlog), expected);
}

#[test]
fn hot_topic_resume_holds_the_lock_for_blocks_not_frames() {
    let hub = Hub::new(65_536, 0);
    let frames: Vec<_> = (1..=65_536).map(|id| frame(id, "ops")).collect();
    hub.publish(&frames);
    let before = hub.work().frames;
    let ops = Filters::of(&["ops"]);
    let (backlog, _reg) = live(hub.attach(0, &ops, 8, &CancellationToken::new()));
    assert_eq!(backlog.len(), 65_536);
    let locked = hub.work().frames - before;
    assert!(
        locked <= (65_536 / ring::BLOCK + ring::BLOCK) as u64,
        "{locked}"
    );
}

#[test]
fn lagging_subscriber_leaves_every_index() {
    let hub = Hub::new(8, 0);
    let lagged = CancellationToken::new();
    let f = Filters::of(&["user:1", "user:*", "u*"]);
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
            0 => Filters::of(&[&user]),
            1 => Filters::of(&[&prefix]),
            2 => Filters::of(&[&user, &prefix, "user:*"]),
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
    // The ring's index holds only the topics of the 64 frames left.
    assert_eq!(hub.ring_topics(), 64);
}

#[test]
fn attach_during_publish_hands_over_without_gap_or_duplicate() {
    const LAST: i64 = 8_000;
    let hub = Hub::new(2_048, 0);
    let topic = |id: i64| format!("user:{}", id % 100);
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for id in 1..=LAST {
                hub.publish(&[frame(id, &topic(id))]);
            }
        })
    };
    let subscribers: Vec<_> = (0..4)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..100 {
                    // Spread the attaches over the whole publication.
                    while hub.head() < i * (LAST - 1_000) / 100 {
                        std::thread::yield_now();
                    }
                    let f = match i % 3 {
                        0 => Filters::of(&[&format!("user:{}", (t * 100 + i) % 100)]),
                        1 => Filters::of(&[&format!("user:{}*", i % 10)]),
                        _ => Filters::default(),
                    };
                    let cursor = (hub.head() - 1_000).max(hub.ring_floor());
                    let token = CancellationToken::new();
                    if let Attach::Live { backlog, live } =
                        hub.attach(cursor, &f, LAST as usize, &token)
                    {
                        got.push((cursor, f, ids(&backlog), live));
                    }
                }
                got
            })
        })
        .collect();
    let got: Vec<_> = subscribers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    publisher.join().unwrap();
    assert!(got.len() > 300);
    let topics: Vec<String> = (0..100).map(topic).collect();
    for (cursor, f, mut seen, mut reg) in got {
        seen.extend(drain(&mut reg));
        let expected: Vec<i64> = ((cursor + 1)..=LAST)
            .filter(|&id| f.matches(&topics[id as usize % 100]))
            .collect();
        assert_eq!(seen, expected, "from {cursor} with {f:?}");
    }
}

#[test]
fn a_pruned_floor_stops_ring_resumes_below_it_but_never_passes_the_head() {
    let hub = Hub::new(8, 0);
    hub.publish(&[frame(1, "a"), frame(2, "a"), frame(3, "a"), frame(4, "a")]);
    let cover = |cursor| {
        matches!(
            hub.attach(cursor, &Filters::default(), 8, &CancellationToken::new()),
            Attach::Live { .. }
        )
    };
    assert!(cover(1));

    hub.prune_floor(2);
    assert_eq!(hub.ring_floor(), 2);
    assert!(!cover(1));
    assert!(cover(2));

    // Pruned past what the hub has read: that is the listener's to notice.
    hub.prune_floor(9);
    assert_eq!(hub.ring_floor(), 4);
    // A later eviction never lowers the floor.
    hub.publish(&[frame(5, "a")]);
    assert_eq!(hub.ring_floor(), 4);
}

#[test]
fn a_cut_ends_every_subscriber_and_restarts_the_ring_above_the_gap() {
    let hub = Hub::new(8, 0);
    hub.publish(&[frame(1, "a"), frame(2, "b")]);
    let lagged = CancellationToken::new();
    let Attach::Live { mut live, .. } = hub.attach(2, &Filters::default(), 8, &lagged) else {
        panic!("covered");
    };

    hub.cut(10);

    assert_eq!(hub.subscribers(), 0);
    assert!(lagged.is_cancelled());
    assert!(live.queue.try_recv().is_err());
    assert_eq!(hub.head(), 10);
    assert_eq!(hub.ring_floor(), 10);
    hub.publish(&[frame(11, "a")]);
    assert!(matches!(
        hub.attach(10, &Filters::default(), 8, &CancellationToken::new()),
        Attach::Live { backlog, .. } if ids(&backlog) == vec![11]
    ));
}
