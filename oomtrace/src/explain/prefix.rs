//! Strip what log tools put before a kernel message: syslog/journalctl headers, /dev/kmsg
//! records, printk levels and dmesg's `[ seconds]` or `dmesg -T` `[weekday date]` stamps.
use std::sync::LazyLock;

use regex::Regex;

/// A kernel message line without its prefixes, and the time the prefixes gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub time: Option<&'a str>,
    pub text: &'a str,
}

static SYSLOG: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // "Feb 03 19:57:08 host kernel: ", "<4>Feb  3 19:57:08 host kernel: " (RFC 3164),
    // "Feb 03 19:57:08.123456 host kernel: " (journalctl -o short-precise),
    // "2024-02-03T19:57:08.123+0000 host kernel: " (short-iso), "[ 1234.567890] host kernel: "
    // (short-monotonic)
    Regex::new(
        r"^(?:<\d{1,3}>)?(?:(?P<t>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*)|\[(?P<m>\s*\d+\.\d+)\]) \S+ kernel: ",
    )
    .ok()
});
/// RFC 5424: "<6>1 2024-02-03T19:57:08.123Z host kernel - - - " (structured data may be "[...]").
static RFC5424: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^<\d{1,3}>1 (?P<t>\S+) \S+ \S+ \S+ \S+ (?:-|(?:\[[^\]]*\])+) ?").ok()
});
/// dmesg -x: "kern  :warn  : " (facility and level, padded).
static DMESG_X: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^(?:kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|local[0-7]) *:(?:emerg|alert|crit|err|warn|notice|info|debug) *: ",
    )
    .ok()
});
static KMSG: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^\d+,\d+,(?P<t>\d+),[^;]*;").ok());
static LEVEL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^<\d{1,3}>").ok());
static STAMP: LazyLock<Option<Regex>> = LazyLock::new(|| {
    // "[ 8758.722811] " or "[Thu May  9 14:52:38 2024] "
    Regex::new(
        r"^\[(?P<t>\s*\d+\.\d+|[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \d{4})\] ?",
    )
    .ok()
});

fn strip<'a>(re: &Option<Regex>, s: &'a str) -> Option<(Option<&'a str>, &'a str)> {
    let c = re.as_ref()?.captures(s)?;
    let whole = c.get(0)?;
    let time = c.name("t").or_else(|| c.name("m"));
    Some((time.map(|t| t.as_str().trim()), &s[whole.end()..]))
}

/// Longest line read as JSON: a journal or container-log record is a few KiB.
const MAX_JSON_LINE: usize = 1 << 20;

/// The message of a line a log collector wrapped in JSON: `journalctl -o json` (MESSAGE, a
/// string or, for bytes that are not UTF-8, an array of them) or a container runtime's log
/// (`{"log":"...","stream":"stdout",...}`). None: not such a line.
pub fn unwrap_json(line: &str) -> Option<String> {
    let t = line.trim();
    if !t.starts_with('{') || t.len() > MAX_JSON_LINE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let field = v.get("MESSAGE").or_else(|| v.get("log"))?;
    let text = match field {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    Some(text.trim_end_matches(['\r', '\n']).to_string())
}

pub fn strip_prefixes(line: &str) -> Message<'_> {
    // Trailing blanks too: a terminal copy pads lines to its width.
    let mut s = line.trim_end();
    let mut time = None;
    if let Some((t, rest)) = strip(&SYSLOG, s)
        .or_else(|| strip(&RFC5424, s))
        .or_else(|| strip(&KMSG, s))
    {
        time = t;
        s = rest;
    } else if let Some(rest) = s.strip_prefix("kernel: ") {
        // A journal line whose date and host the user cut away.
        s = rest;
    }
    if let Some((_, rest)) = strip(&DMESG_X, s) {
        s = rest;
    }
    if let Some((_, rest)) = strip(&LEVEL, s) {
        s = rest;
    }
    if let Some((t, rest)) = strip(&STAMP, s) {
        // The kernel's own stamp beats the logger's.
        time = t.or(time);
        s = rest;
    }
    Message {
        time,
        text: s.trim_start(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_log_prefix_style_is_removed_and_its_time_kept() {
        let text = "CPU 1/KVM invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0";
        for (line, time) in [
            (format!("[ 8758.722811] {text}"), Some("8758.722811")),
            (
                format!("[Thu May  9 14:52:38 2024] {text}"),
                Some("Thu May  9 14:52:38 2024"),
            ),
            (
                format!("Feb 03 19:57:08 ** kernel: {text}"),
                Some("Feb 03 19:57:08"),
            ),
            (
                format!("Feb  3 19:57:08 node1 kernel: [ 12.5] {text}"),
                Some("12.5"),
            ),
            (
                format!("2024-02-03T19:57:08+0000 node1 kernel: {text}"),
                Some("2024-02-03T19:57:08+0000"),
            ),
            (format!("6,1234,8758722811,-;{text}"), Some("8758722811")),
            (format!("<4>[   1.000000] {text}\r"), Some("1.000000")),
            (
                format!("kern  :warn  : [ 8758.722811] {text}"),
                Some("8758.722811"),
            ),
            (
                format!("kern  :warn  : [Thu Aug  1 10:00:00 2024] {text}"),
                Some("Thu Aug  1 10:00:00 2024"),
            ),
            (
                format!("Feb 03 19:57:08.123456 node1 kernel: {text}"),
                Some("Feb 03 19:57:08.123456"),
            ),
            (
                format!("[ 8758.722811] node1 kernel: {text}"),
                Some("8758.722811"),
            ),
            (
                format!("<4>Feb  3 19:57:08 node1 kernel: {text}"),
                Some("Feb  3 19:57:08"),
            ),
            (
                format!("<4>1 2024-02-03T19:57:08.123Z node1 kernel - - - {text}"),
                Some("2024-02-03T19:57:08.123Z"),
            ),
            (text.to_string(), None),
            (format!("               {text}"), None),
            (format!("kernel: {text}"), None),
            (format!("[ 1573.878353] {text}      "), Some("1573.878353")),
        ] {
            let m = strip_prefixes(&line);
            assert_eq!((m.time, m.text), (time, text), "{line:?}");
        }
    }

    #[test]
    fn json_wrapped_lines_give_their_message() {
        let text = "CPU 1/KVM invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0";
        let journal = format!(
            r#"{{"__REALTIME_TIMESTAMP":"1700000000000000","_TRANSPORT":"kernel","MESSAGE":"{text}"}}"#
        );
        assert_eq!(unwrap_json(&journal).as_deref(), Some(text));
        let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
        let journal_bytes = format!(r#"{{"MESSAGE":[{}]}}"#, bytes.join(","));
        assert_eq!(unwrap_json(&journal_bytes).as_deref(), Some(text));
        let container = format!(r#"{{"log":"[ 12.5] {text}\n","stream":"stdout"}}"#);
        assert_eq!(
            unwrap_json(&container).as_deref(),
            Some(format!("[ 12.5] {text}").as_str())
        );
        for not in ["{", "{\"other\":1}", "[1]", text, "{\"MESSAGE\":7}"] {
            assert_eq!(unwrap_json(not), None, "{not}");
        }
    }

    #[test]
    fn brackets_that_are_not_stamps_stay() {
        let m = strip_prefixes("[  24457]   107 24457   440598 virt-launcher-m");
        assert_eq!(m.text, "[  24457]   107 24457   440598 virt-launcher-m");
    }
}
