//! W3C Trace Context (level 1) kept with an event: the publisher's
//! `traceparent` and `tracestate`, checked on the way in, stored beside the
//! event and written into its envelope (docs/ARCHITECTURE.md, "Tracing").
//!
//! A value that breaks the rules is dropped and counted, never refused: an
//! event matters more than its trace, and a publisher's tracing library is
//! not the publisher's to fix in a hurry. A `tracestate` without a valid
//! `traceparent` is dropped too (Trace Context §3.3: it means nothing on
//! its own).

/// The longest `traceparent` kept: version `00` is 55 characters; a later
/// version may append fields, and this bounds what a publisher can add.
const MAX_TRACEPARENT: usize = 256;
/// The longest `tracestate` kept (the recommendation's 512 characters).
const MAX_TRACESTATE: usize = 512;
/// Most list members in a `tracestate` (§3.3.1.1).
const MAX_MEMBERS: usize = 32;

/// An event's trace context, both values checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: Box<str>,
    tracestate: Option<Box<str>>,
}

/// Which value was dropped, for the count and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Traceparent,
    Tracestate,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traceparent => "traceparent",
            Self::Tracestate => "tracestate",
        }
    }
}

impl TraceContext {
    /// The context of `traceparent` and `tracestate` as received, and what
    /// of them was dropped: an invalid `traceparent` takes its
    /// `tracestate` with it.
    pub fn parse(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> (Option<Self>, Vec<Dropped>) {
        let mut dropped = Vec::new();
        let Some(parent) = traceparent else {
            if tracestate.is_some() {
                dropped.push(Dropped::Tracestate);
            }
            return (None, dropped);
        };
        if !valid_traceparent(parent) {
            dropped.push(Dropped::Traceparent);
            if tracestate.is_some() {
                dropped.push(Dropped::Tracestate);
            }
            return (None, dropped);
        }
        let state = tracestate.map(str::trim).filter(|s| !s.is_empty());
        let state = match state {
            Some(s) if valid_tracestate(s) => Some(s.into()),
            Some(_) => {
                dropped.push(Dropped::Tracestate);
                None
            }
            None => None,
        };
        let context = Self {
            traceparent: parent.into(),
            tracestate: state,
        };
        (Some(context), dropped)
    }

    /// A context read back from the log, checked when it was stored.
    pub fn from_log(traceparent: String, tracestate: Option<String>) -> Self {
        Self {
            traceparent: traceparent.into(),
            tracestate: tracestate.map(Into::into),
        }
    }

    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id: the 32 hex digits after the version.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// `,"traceparent":"…"` and, when present, `,"tracestate":"…"`, for the
    /// envelope. A `traceparent` is hex and dashes; a `tracestate` is
    /// printable ASCII, of which only `"` and `\` need escaping in JSON.
    pub fn push_json_fields(&self, json: &mut String) {
        json.push_str(",\"traceparent\":\"");
        json.push_str(&self.traceparent);
        json.push('"');
        if let Some(state) = &self.tracestate {
            json.push_str(",\"tracestate\":\"");
            for c in state.chars() {
                if c == '"' || c == '\\' {
                    json.push('\\');
                }
                json.push(c);
            }
            json.push('"');
        }
    }

    /// What [`push_json_fields`](Self::push_json_fields) writes, in bytes
    /// at most.
    pub fn json_room(&self) -> usize {
        let state = self.tracestate.as_deref().map_or(0, |s| 2 * s.len() + 16);
        self.traceparent.len() + 18 + state
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `version "-" trace-id "-" parent-id "-" trace-flags` (§3.2): lowercase
/// hex, version not `ff`, ids not all zeros; version `00` is exactly 55
/// characters, a later one at least 55 with a `-` after the flags.
fn valid_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() < 55 || b.len() > MAX_TRACEPARENT || !value.is_ascii() {
        return false;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
    let hex = [version, trace_id, parent_id, flags]
        .iter()
        .all(|f| is_lower_hex(f));
    if !dashes || !hex || version == "ff" {
        return false;
    }
    if trace_id.bytes().all(|c| c == b'0') || parent_id.bytes().all(|c| c == b'0') {
        return false;
    }
    match version {
        "00" => b.len() == 55,
        _ => b.len() == 55 || b[55] == b'-',
    }
}

/// `list-member 0*31( OWS "," OWS list-member )` (§3.3.1), empty members
/// allowed, keys unique.
fn valid_tracestate(value: &str) -> bool {
    if value.len() > MAX_TRACESTATE {
        return false;
    }
    let mut keys = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let Some((key, val)) = member.split_once('=') else {
            return false;
        };
        if !valid_key(key) || !valid_value(val) || keys.contains(&key) {
            return false;
        }
        keys.push(key);
    }
    !keys.is_empty() && keys.len() <= MAX_MEMBERS
}

/// `simple-key` or `tenant-id "@" system-id` (§3.3.1.3.1).
fn valid_key(key: &str) -> bool {
    let rest = |s: &str| {
        s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
        })
    };
    match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && rest(key)
        }
        Some((tenant, system)) => {
            (1..=241).contains(&tenant.len())
                && tenant
                    .as_bytes()
                    .first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && rest(tenant)
                && (1..=14).contains(&system.len())
                && system
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_lowercase)
                && rest(system)
        }
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending in a
/// space (§3.3.1.3.2).
fn valid_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && !value.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_ids() {
        let (ctx, dropped) = TraceContext::parse(Some(GOOD), Some("congo=t61rcWkgMzE"));
        let ctx = ctx.unwrap();
        assert!(dropped.is_empty());
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_traceparents_are_dropped_with_their_tracestate() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            let (ctx, dropped) = TraceContext::parse(Some(bad), Some("a=b"));
            assert_eq!(ctx, None, "{bad:?}");
            assert_eq!(dropped, [Dropped::Traceparent, Dropped::Tracestate]);
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceContext::parse(Some(later), None).0.is_some());
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_alone() {
        for bad in [
            "Upper=x",
            "a=b,a=c",
            "a",
            "a=b=c",
            "a=tab\tinside",
            "1abc=x",
            &(0..33)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
            &format!("a={}", "x".repeat(600)),
        ] {
            let (ctx, dropped) = TraceContext::parse(Some(GOOD), Some(bad));
            assert_eq!(ctx.unwrap().tracestate(), None, "{bad:?}");
            assert_eq!(dropped, [Dropped::Tracestate], "{bad:?}");
        }
        for good in ["a=b", "a=b , c=d", "t@sys=v\"q\\", "a=b,,c=d", "x/y*z_-=1"] {
            let (ctx, dropped) = TraceContext::parse(Some(GOOD), Some(good));
            assert!(dropped.is_empty(), "{good:?}");
            assert!(ctx.unwrap().tracestate().is_some());
        }
        let (_, dropped) = TraceContext::parse(None, Some("a=b"));
        assert_eq!(dropped, [Dropped::Tracestate]);
    }

    #[test]
    fn json_fields_escape_what_tracestate_may_hold() {
        let (ctx, _) = TraceContext::parse(Some(GOOD), Some("a=q\"b\\c"));
        let ctx = ctx.unwrap();
        let mut json = String::from("{\"x\":1");
        ctx.push_json_fields(&mut json);
        json.push('}');
        assert!(json.len() <= 7 + ctx.json_room() + 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["traceparent"], GOOD);
        assert_eq!(v["tracestate"], "a=q\"b\\c");
    }
}
