//! Property tests over the parsers of client input on the read side: the
//! stream's query string and `Last-Event-ID` header, and the history's
//! query string. Whatever a client sends, the parser returns either a
//! request whose every part is in range or a 400, and never panics (an
//! overflowing `since=12100y` once took the connection down).

use proptest::prelude::*;

use super::history::{self, After};
use crate::stream::{SINCE_FLOOR, Start, stream_request};

/// Values a client might put in any parameter: random text, and the
/// shapes the parsers look for, pushed to their edges.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,25}",
        "-[0-9]{1,20}",
        "[0-9]{1,22} ?(ns|us|ms|s|m|h|d|w|M|y|years|months)",
        "[0-9]{1,6}y[0-9]{1,6}d",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "[a-z]{1,8}(:[a-z0-9]{1,8}){0,3}\\*?",
        Just(i64::MAX.to_string()),
        Just(u64::MAX.to_string()),
        Just(String::new()),
        Just("*".to_owned()),
        Just("true".to_owned()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("topic".to_owned()),
        Just("since".to_owned()),
        Just("last_event_id".to_owned()),
        Just("message_events".to_owned()),
        Just("after".to_owned()),
        Just("limit".to_owned()),
        "[a-z_]{0,12}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec((name(), value()), 0..6).prop_map(|pairs| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
        }),
        // Not even form-encoded.
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn stream_request_is_in_range_or_a_400(
        q in query(),
        header in prop::collection::vec(value(), 0..3),
    ) {
        let headers: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
        match stream_request(&q, &headers) {
            Ok(req) => match req.start {
                Start::After(id) => prop_assert!(id >= 0),
                Start::Since(time) => prop_assert!(time >= SINCE_FLOOR),
                Start::Now => {}
            },
            Err(e) => prop_assert_eq!(e.status().as_u16(), 400, "{}", e),
        }
    }

    #[test]
    fn history_query_is_in_range_or_a_400(q in query()) {
        match history::parse_query(&q) {
            Ok((after, _, limit, _)) => {
                prop_assert!((1..=history::MAX_LIMIT).contains(&limit));
                match after {
                    After::Id(id) => prop_assert!(id >= 0),
                    After::Start => {}
                    After::Since(time) => prop_assert!(time >= SINCE_FLOOR),
                }
            }
            Err(e) => prop_assert_eq!(e.status().as_u16(), 400, "{}", e),
        }
    }
}
