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
    // "Feb 03 19:57:08 host kernel: ", "2024-02-03T19:57:08.123+0000 host kernel: "
    Regex::new(
        r"^(?P<t>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S*) \S+ kernel: ",
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
    Some((c.name("t").map(|t| t.as_str().trim()), &s[whole.end()..]))
}

pub fn strip_prefixes(line: &str) -> Message<'_> {
    let mut s = line.trim_end_matches(['\r', '\n']);
    let mut time = None;
    if let Some((t, rest)) = strip(&SYSLOG, s) {
        time = t;
        s = rest;
    } else if let Some((t, rest)) = strip(&KMSG, s) {
        time = t;
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
            (text.to_string(), None),
            (format!("               {text}"), None),
        ] {
            let m = strip_prefixes(&line);
            assert_eq!((m.time, m.text), (time, text), "{line:?}");
        }
    }

    #[test]
    fn brackets_that_are_not_stamps_stay() {
        let m = strip_prefixes("[  24457]   107 24457   440598 virt-launcher-m");
        assert_eq!(m.text, "[  24457]   107 24457   440598 virt-launcher-m");
    }
}
