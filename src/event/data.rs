//! What `data` herald accepts: I-JSON (RFC 7493), the subset of JSON that
//! every common client reads back the same way, nested no deeper than
//! [`MAX_DATA_DEPTH`].
//!
//! serde_json's `RawValue` checks only that `data` is JSON. Things JSON
//! allows but clients disagree on are refused here, before anything is
//! stored:
//! - strings (values and member names) with an unpaired surrogate escape
//!   (`"\ud800"`) or a noncharacter (U+FFFE, U+FDD0…): RFC 7493 §2.1;
//! - objects that repeat a member name (`{"a":1,"a":2}`): RFC 7493 §2.3,
//!   readers keep the first, the last, or fail;
//! - numbers beyond the range of an IEEE 754 double (`1e400`): RFC 7493
//!   §2.2, JavaScript reads Infinity and serde_json refuses it;
//! - nesting deeper than [`MAX_DATA_DEPTH`]: PostgreSQL's `json` parser
//!   refuses very deep values (SQLSTATE 54001), serde_json stops at 128
//!   levels and Python's `json` at its recursion limit, so a deep value
//!   could be stored and then be unreadable.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Invalid;

/// Deepest nesting of arrays and objects accepted in `data`: far beyond
/// what a notification needs, and well inside every reader's limit once
/// the envelope adds its own level (serde_json's is 128).
pub const MAX_DATA_DEPTH: usize = 64;

/// Checks that `json` (already known to be JSON) is I-JSON nested at most
/// [`MAX_DATA_DEPTH`] deep.
///
/// # Errors
/// [`Invalid::Data`] saying what is wrong and where.
pub fn check_data(json: &str) -> Result<(), Invalid> {
    let mut de = serde_json::Deserializer::from_str(json);
    Check { depth: 0 }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| Invalid::Data(describe(&e)))
}

/// serde_json's message for its own refusals, said the way herald says
/// the rest.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("number out of range") {
        "a number is beyond the range of an IEEE 754 double".to_owned()
    } else if text.contains("surrogate") || text.starts_with("unexpected end of hex escape") {
        // serde_json's words for a high surrogate escape with no low one
        // after it.
        "a string has an unpaired surrogate escape".to_owned()
    } else if text.starts_with("recursion limit exceeded") {
        format!("it nests deeper than {MAX_DATA_DEPTH} levels")
    } else {
        // Our own messages, with serde_json's position stripped: it is a
        // position inside `data`, not in the request body.
        text.split(" at line ").next().unwrap_or(&text).to_owned()
    }
}

/// A value at `depth` (the number of arrays and objects around it).
#[derive(Clone, Copy)]
struct Check {
    depth: usize,
}

impl Check {
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(E::custom(format_args!(
                "it nests deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json already refuses overflow; this keeps the rule here.
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom(
                "a number is beyond the range of an IEEE 754 double",
            ))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        check_chars(v)
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.enter()?;
        let mut names = Names::default();
        while let Some(name) = map.next_key_seed(NameSeed)? {
            check_chars(&name)?;
            if names.contains(&name) {
                let shown: String = name.chars().take(64).collect();
                return Err(de::Error::custom(format_args!(
                    "an object repeats a member name ({shown:?})"
                )));
            }
            names.insert(name);
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// The member names of one object seen so far. Most objects have a few,
/// so they are compared in a list, borrowed from the request body where
/// they hold no escape; past [`Names::LIST`] they go to a set.
#[derive(Default)]
struct Names<'de> {
    list: Vec<Cow<'de, str>>,
    set: HashSet<Cow<'de, str>>,
}

impl<'de> Names<'de> {
    const LIST: usize = 16;

    fn contains(&self, name: &str) -> bool {
        if self.set.is_empty() {
            self.list.iter().any(|seen| seen == name)
        } else {
            self.set.contains(name)
        }
    }

    fn insert(&mut self, name: Cow<'de, str>) {
        if self.set.is_empty() && self.list.len() < Self::LIST {
            self.list.push(name);
            return;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.drain(..));
        }
        self.set.insert(name);
    }
}

/// A member name, borrowed when the text holds no escape.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Refuses noncharacters (U+FDD0..U+FDEF and the last two code points of
/// every plane). Unpaired surrogates never get here: serde_json refuses
/// them while decoding the escape.
fn check_chars<E: de::Error>(s: &str) -> Result<(), E> {
    match s.chars().find(|&c| is_noncharacter(c)) {
        Some(c) => Err(E::custom(format_args!(
            "a string holds the noncharacter U+{:04X}",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(json: &str) -> String {
        match check_data(json) {
            Err(Invalid::Data(why)) => why,
            other => panic!("{json} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn ordinary_json_is_accepted() {
        for ok in [
            "null",
            "1",
            "-0.5e-3",
            "12345678901234567890123",
            "\"text \\u00e9 \\ud83d\\ude00 😀\"",
            "{\"a\":1,\"b\":[true,false,null,{\"a\":2}]}",
            "{\"a\":{\"a\":{\"a\":1}}}",
            "[]",
            "{}",
        ] {
            assert_eq!(check_data(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn unpaired_surrogates_are_refused() {
        for bad in [
            "\"\\ud800\"",
            "\"\\udc00\"",
            "{\"\\ud800\":1}",
            "[\"a\\ud800b\"]",
        ] {
            let why = refused(bad);
            assert!(why.contains("surrogate"), "{bad}: {why}");
        }
    }

    #[test]
    fn noncharacters_are_refused() {
        for bad in ["\"\\uffff\"", "\"\u{fdd0}\"", "{\"\u{1fffe}\":1}"] {
            assert!(refused(bad).contains("noncharacter"), "{bad}");
        }
    }

    /// An object of 40 distinct names (past the list `Names` starts
    /// with), then `last`.
    fn many_names_then(last: &str) -> String {
        let names: Vec<String> = (0..40).map(|i| format!("\"n{i}\":{i}")).collect();
        format!("{{{},{last}:0}}", names.join(","))
    }

    #[test]
    fn objects_with_many_distinct_names_are_accepted() {
        assert_eq!(check_data(&many_names_then("\"n40\"")), Ok(()));
    }

    #[test]
    fn repeated_member_names_are_refused() {
        for bad in [
            "{\"a\":1,\"a\":2}".to_owned(),
            "{\"a\":1,\"\\u0061\":2}".to_owned(),
            "[{\"x\":{\"b\":1,\"c\":2,\"b\":3}}]".to_owned(),
            many_names_then("\"n0\""),
            many_names_then("\"n39\""),
            many_names_then("\"\\u006e7\""),
        ] {
            assert!(refused(&bad).contains("repeats a member name"), "{bad}");
        }
    }

    #[test]
    fn numbers_beyond_a_double_are_refused() {
        for bad in ["1e400", "-1e400", "[1.5e309]"] {
            assert!(refused(bad).contains("IEEE 754"), "{bad}");
        }
        // Underflow is not overflow: it reads as 0 everywhere.
        assert_eq!(check_data("1e-400"), Ok(()));
    }

    #[test]
    fn nesting_is_limited() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_data(&deep(MAX_DATA_DEPTH)), Ok(()));
        assert!(refused(&deep(MAX_DATA_DEPTH + 1)).contains("nests deeper"));
        assert!(refused(&deep(20_000)).contains("nests deeper"));
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DATA_DEPTH + 1),
            "}".repeat(MAX_DATA_DEPTH + 1)
        );
        assert!(refused(&objects).contains("nests deeper"));
    }
}
