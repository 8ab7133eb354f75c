//! Round trips and damage: truncation at every frame boundary and at random offsets, flipped
//! bytes, appended garbage, files that are not captures. Never a panic; what is intact is read.
use std::io::Cursor;

use proptest::prelude::*;

use super::{Header, Reader, Writer, format};
use crate::{
    decode::{Charge, ChargeTotals, Event},
    model::input::ModelInput,
};

fn header() -> Header {
    Header {
        host: "node1".into(),
        kernel: "6.18.44".into(),
        realtime_offset_ns: 1_700_000_000_000_000_000,
        start_mono_ns: 5,
        target: "all".into(),
        hooks: Vec::new(),
        sequence: 0,
    }
}

fn input(i: u64) -> ModelInput {
    if i.is_multiple_of(7) {
        ModelInput::Tick(i * 1000)
    } else {
        ModelInput::Event(Event::Charge(Charge {
            ts_ns: i * 1000,
            tid: 100 + (i % 5) as u32,
            tgid: 100,
            memcg_id: 42,
            comm: if i.is_multiple_of(3) {
                "CPU 0/KVM".into()
            } else {
                String::new()
            },
            totals: ChargeTotals {
                anon: (i * 4096) as i64,
                ..Default::default()
            },
            shmem_counted: true,
            sock_counted: false,
        }))
    }
}

/// A capture of `n` inputs, a frame every `per_block`; returns its bytes and the frame ends.
fn capture(n: u64, per_block: u64) -> (Vec<u8>, Vec<usize>) {
    let dir = std::env::temp_dir().join(format!(
        "oomtrace-cap-{}-{n}-{per_block}",
        std::process::id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("t.otr");
    let mut w = Writer::create(&path, header(), None, 0).unwrap();
    let mut ends = vec![w.file_bytes() as usize];
    for i in 0..n {
        w.push(&input(i)).unwrap();
        if (i + 1) % per_block == 0 {
            w.tick(Vec::new).unwrap();
            ends.push(w.file_bytes() as usize);
        }
    }
    w.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    if *ends.last().unwrap() != bytes.len() {
        ends.push(bytes.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
    (bytes, ends)
}

fn read_all(bytes: Vec<u8>) -> anyhow::Result<(Vec<ModelInput>, Vec<String>)> {
    let mut r = Reader::from_reader(Box::new(Cursor::new(bytes)), "test")?;
    let mut out = Vec::new();
    while let Some(i) = r.next_input()? {
        out.push(i);
    }
    Ok((out, r.warnings))
}

#[test]
fn what_is_written_reads_back_identically() {
    let (bytes, _) = capture(1000, 64);
    let (inputs, warnings) = read_all(bytes).unwrap();
    assert_eq!(inputs, (0..1000).map(input).collect::<Vec<_>>());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn truncation_at_every_frame_boundary_keeps_every_whole_block_silently() {
    let (bytes, ends) = capture(300, 50);
    for (k, end) in ends.iter().enumerate().skip(1) {
        let (inputs, warnings) = read_all(bytes[..*end].to_vec()).unwrap();
        let whole = (k as u64 * 50).min(300) as usize;
        assert_eq!(inputs.len(), whole, "cut at frame end {end}");
        assert!(warnings.is_empty(), "cut at {end}: {warnings:?}");
    }
}

#[test]
fn truncation_inside_a_frame_keeps_the_blocks_before_it_and_warns() {
    let (bytes, ends) = capture(300, 50);
    for w in ends.windows(2).skip(1) {
        let cut = (w[0] + w[1]) / 2;
        let (inputs, warnings) = read_all(bytes[..cut].to_vec()).unwrap();
        assert_eq!(
            inputs,
            (0..inputs.len() as u64).map(input).collect::<Vec<_>>()
        );
        assert!(
            warnings.iter().any(|w| w.contains("torn")),
            "cut at {cut}: {warnings:?}"
        );
    }
}

#[test]
fn a_flipped_byte_costs_one_block_and_is_reported() {
    let (bytes, ends) = capture(300, 50);
    // Inside the third frame.
    let mut bad = bytes.clone();
    let at = (ends[2] + ends[3]) / 2;
    bad[at] ^= 0xff;
    let (inputs, warnings) = read_all(bad).unwrap();
    assert_eq!(inputs.len(), 250, "one block of 50 lost");
    assert!(
        warnings.iter().any(|w| w.contains("corrupt")),
        "{warnings:?}"
    );
}

#[test]
fn appended_garbage_is_skipped_with_a_warning() {
    let (mut bytes, _) = capture(100, 30);
    bytes.extend_from_slice(b"\x00garbage OTFR\x01\x02 more garbage");
    let (inputs, warnings) = read_all(bytes).unwrap();
    assert_eq!(inputs.len(), 100);
    assert!(!warnings.is_empty());
}

#[test]
fn not_a_capture_empty_and_newer_versions_are_one_clear_error() {
    let e = |b: &[u8]| {
        Reader::from_reader(Box::new(Cursor::new(b.to_vec())), "f")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(e(b"").contains("is empty"));
    assert!(e(b"hello, this is a text file").contains("not an oomtrace capture"));
    let mut newer = format::file_head().to_vec();
    newer[8] = 99;
    assert!(e(&newer).contains("newer oomtrace"));
}

#[test]
fn a_missing_header_is_a_warning_not_an_error() {
    let (bytes, ends) = capture(100, 50);
    let mut b = format::file_head().to_vec();
    b.extend_from_slice(&bytes[ends[0]..]);
    let (inputs, warnings) = read_all(b).unwrap();
    assert_eq!(inputs.len(), 100);
    assert!(warnings.iter().any(|w| w.contains("header")));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any damage: cut anywhere, flip any bytes, splice in garbage. Never a panic, and every input
    /// read is one that was written, in order.
    #[test]
    fn damaged_captures_never_panic_and_yield_only_written_inputs(
        cut in 0usize..20_000,
        flips in proptest::collection::vec((0usize..20_000, any::<u8>()), 0..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        at in 0usize..20_000,
    ) {
        let (bytes, _) = capture(400, 40);
        let mut b = bytes[..cut.min(bytes.len())].to_vec();
        for (i, x) in flips {
            if !b.is_empty() {
                let n = b.len();
                b[i % n] ^= x;
            }
        }
        let pos = at.min(b.len());
        b.splice(pos..pos, garbage);
        if let Ok((inputs, _)) = read_all(b) {
            let written: Vec<ModelInput> = (0..400).map(input).collect();
            let mut j = 0;
            for i in &inputs {
                match written[j..].iter().position(|w| w == i) {
                    Some(p) => j += p + 1,
                    None => prop_assert!(false, "an input that was never written: {i:?}"),
                }
            }
        }
    }
}

#[test]
fn rotation_keeps_n_files_each_readable_on_its_own() {
    let dir = std::env::temp_dir().join(format!("oomtrace-rot-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("r.otr");
    let mut w = Writer::create(&path, header(), Some(2048), 2).unwrap();
    for i in 0..3000 {
        w.push(&input(i)).unwrap();
        if i % 100 == 99 {
            let facts = || {
                vec![ModelInput::MemcgPath {
                    id: 42,
                    path: "/pod".into(),
                }]
            };
            w.tick(facts).unwrap();
        }
    }
    let stats = w.finish().unwrap();
    assert!(stats.files > 3, "rotated {} times", stats.files);
    let name = |n: usize| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        std::path::PathBuf::from(s)
    };
    assert!(
        name(1).exists() && name(2).exists() && !name(3).exists(),
        "keeps 2 older files"
    );
    for p in [name(2), name(1), path.clone()] {
        let mut r = Reader::open(&p).unwrap();
        let h = r.header.clone().unwrap();
        assert!(h.sequence > 0 || p == name(2) && h.sequence == 0 || h.sequence > 0);
        let first = r.next_input().unwrap();
        if h.sequence > 0 {
            assert_eq!(
                first,
                Some(ModelInput::MemcgPath {
                    id: 42,
                    path: "/pod".into()
                }),
                "a rotated file starts with the facts"
            );
        }
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
