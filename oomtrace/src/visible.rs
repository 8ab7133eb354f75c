//! Text that other tenants control (thread and process names, cgroup paths, command-line facts,
//! quoted log lines) on its way to a terminal: control characters, and the Unicode controls that
//! reorder or hide text, are shown as escapes (`\x1b`, `\n`, `\u{202e}`), so a name can neither
//! drive the operator's terminal nor forge a line. The one place that does it; every text view
//! uses it. JSON output is exact instead (JSON escaping).
use std::{borrow::Cow, fmt};

/// Bidirectional overrides and isolates, and invisible separators: text that displays other
/// than it reads.
fn is_deceptive(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_deceptive(c)
}

/// `s` with every control character escaped visibly; borrowed when there is none.
pub fn visible(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A block of text lines built from untrusted fields (an explained log report): escaped as
/// `visible`, but its own line ends kept (its fields come from single log lines).
pub fn visible_lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let escaped = |c: char| needs_escape(c) && !(keep_newlines && c == '\n');
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// `visible` as a Display that keeps width and alignment (`{:<16}`).
pub struct Visible<'a>(pub &'a str);

impl fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&visible(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_reordering_characters_are_shown_as_escapes_and_plain_text_is_untouched() {
        assert!(matches!(visible("CPU 0/KVM"), Cow::Borrowed(_)));
        // systemd's own escapes in cgroup names stay as they are.
        assert_eq!(visible(r"serial\x2dgetty.slice"), r"serial\x2dgetty.slice");
        assert_eq!(visible("\x1b[31mEVIL\x1b[0m\n"), r"\x1b[31mEVIL\x1b[0m\n");
        assert_eq!(visible("a\rb\tc\x7f\u{9b}"), r"a\rb\tc\x7f\x9b");
        assert_eq!(visible("abc\u{202e}fdp.exe"), r"abc\u{202e}fdp.exe");
        assert_eq!(visible("müller ☃"), "müller ☃");
        assert_eq!(format!("[{:<6}]", Visible("a\nb")), r"[a\nb  ]");
        assert_eq!(visible_lines("a\x1b[2J\nb\n"), "a\\x1b[2J\nb\n");
    }
}
