//! Lines from any reader with a bound on line length: a 1 GiB file without a newline, or binary
//! garbage, costs at most `max` bytes of memory.
use std::io::{self, BufRead};

pub struct Line {
    pub text: String,
    /// The line was longer than the bound; the rest was skipped.
    pub cut: bool,
    /// Bytes that are not UTF-8 were replaced.
    pub lossy: bool,
}

pub struct BoundedLines<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> BoundedLines<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            buf: Vec::new(),
        }
    }

    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        self.buf.clear();
        let mut cut = false;
        let mut any = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                break;
            }
            any = true;
            let (take, newline) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            let room = self.max.saturating_sub(self.buf.len());
            if take > room {
                cut = true;
            }
            self.buf.extend_from_slice(&avail[..take.min(room)]);
            self.inner.consume(take + usize::from(newline));
            if newline {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        let (text, lossy) = match String::from_utf8(std::mem::take(&mut self.buf)) {
            Ok(s) => (s, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        Ok(Some(Line { text, cut, lossy }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<(String, bool, bool)> {
        let mut l = BoundedLines::new(io::BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        while let Ok(Some(line)) = l.next_line() {
            out.push((line.text, line.cut, line.lossy));
        }
        out
    }

    #[test]
    fn long_lines_are_cut_at_the_bound_and_the_next_line_survives() {
        let v = all(b"abcdefghijklmnop\nxy\nlast", 5);
        assert_eq!(
            v,
            vec![
                ("abcde".into(), true, false),
                ("xy".into(), false, false),
                ("last".into(), false, false)
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let v = all(b"a\xffb\n", 100);
        assert_eq!(v, vec![("a\u{fffd}b".into(), false, true)]);
    }

    #[test]
    fn empty_input_has_no_lines_and_empty_lines_are_kept() {
        assert!(all(b"", 10).is_empty());
        assert_eq!(all(b"\n\n", 10).len(), 2);
    }
}
