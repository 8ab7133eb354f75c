//! Byte counts as people read them, in one place for the model's sentences, the views, the
//! text output and explain. A leaf: imports nothing of ours.

/// Human-readable byte count: 1.5 MiB, -256.0 KiB, 4096 B.
pub fn bytes(v: i64) -> String {
    let a = v.unsigned_abs() as f64;
    let sign = if v < 0 { "-" } else { "" };
    if a >= (1u64 << 30) as f64 {
        format!("{sign}{:.2} GiB", a / (1u64 << 30) as f64)
    } else if a >= (1u64 << 20) as f64 {
        format!("{sign}{:.1} MiB", a / (1u64 << 20) as f64)
    } else if a >= 1024.0 {
        format!("{sign}{:.1} KiB", a / 1024.0)
    } else {
        format!("{sign}{a} B")
    }
}

/// `bytes` of an unsigned count (saturating at i64::MAX, beyond any memory).
pub fn bytes_u64(v: u64) -> String {
    bytes(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `bytes` of a count in KiB, as the kernel's OOM report prints them.
pub fn kib(v: u64) -> String {
    bytes_u64(v.saturating_mul(1024))
}

/// `bytes` with a "+" on growth.
pub fn signed(v: i64) -> String {
    if v > 0 {
        format!("+{}", bytes(v))
    } else {
        bytes(v)
    }
}

/// `bytes` of a value that may be absent (a limit not set, a figure not read): `none` then.
pub fn bytes_or(v: Option<u64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), bytes_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(-(256 << 10)), "-256.0 KiB");
        assert_eq!(bytes(3 << 29), "1.50 GiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(signed(1 << 20), "+1.0 MiB");
        assert_eq!(kib(2), "2.0 KiB");
        assert_eq!(bytes_or(None, "unlimited"), "unlimited");
        assert_eq!(bytes_u64(u64::MAX), bytes(i64::MAX));
    }
}
