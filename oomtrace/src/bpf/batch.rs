//! Reading a whole hash map in a few syscalls (BPF_MAP_LOOKUP_BATCH, Linux 5.6+) instead of two
//! per key (get_next_key + lookup): the sweep of the charge map at every tick is most of the
//! collector's cost on an idle node with many threads. aya 0.16 has no batch API, so the
//! syscall is made here; where the kernel refuses it, the caller falls back to iteration.
use std::os::fd::{AsRawFd, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries asked for per call; grown when one hash bucket holds more (ENOSPC).
const FIRST_COUNT: usize = 4096;

pub struct BatchReader<K, V> {
    fd: OwnedFd,
    count: usize,
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: Copy + Default, V: Copy + Default> BatchReader<K, V> {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            count: FIRST_COUNT,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Every (key, value) of the map into `out`, in the kernel's bucket order. Err: the kernel
    /// refused (too old, or the map changed shape), with its errno.
    pub fn read_all(&mut self, out: &mut Vec<(K, V)>) -> std::io::Result<()> {
        out.clear();
        // The batch token of a hash map is a bucket index (u32); u64 leaves room.
        let mut token_in: u64 = 0;
        let mut token_out: u64 = 0;
        let mut first = true;
        loop {
            self.keys.resize(self.count, K::default());
            self.values.resize(self.count, V::default());
            // SAFETY: bpf_attr is a plain C union of integers; all-zero is a valid value.
            let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
            // SAFETY: writing the `batch` member of the zeroed union, the one this command reads.
            let batch = unsafe { &mut attr.batch };
            batch.in_batch = if first { 0 } else { &raw const token_in as u64 };
            batch.out_batch = &raw mut token_out as u64;
            batch.keys = self.keys.as_mut_ptr() as u64;
            batch.values = self.values.as_mut_ptr() as u64;
            batch.count = self.count as u32;
            batch.map_fd = self.fd.as_raw_fd() as u32;
            // SAFETY: the bpf syscall reads `attr` (size given) and writes at most `count` keys
            // and values into buffers of that many elements, and the token into `token_out`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
                    &raw mut attr,
                    size_of::<bpf_attr>() as libc::c_uint,
                )
            };
            let err = (r < 0).then(std::io::Error::last_os_error);
            // SAFETY: reading back the member the kernel wrote.
            let got = (unsafe { attr.batch.count } as usize).min(self.count);
            match err.as_ref().and_then(std::io::Error::raw_os_error) {
                Some(libc::ENOSPC) if got == 0 => {
                    self.count *= 2;
                    continue;
                }
                Some(libc::ENOENT) | None => {}
                Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
            }
            out.extend(
                self.keys[..got]
                    .iter()
                    .copied()
                    .zip(self.values[..got].iter().copied()),
            );
            if err.is_some() {
                // ENOENT: that was the last batch.
                return Ok(());
            }
            token_in = token_out;
            first = false;
        }
    }
}
