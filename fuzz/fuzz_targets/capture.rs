//! A capture file → frames → model inputs → the model (replay), its views and summary.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oomtrace::{capture::reader::Reader, model::Model};

/// Inputs fed per case: a small file can decompress to many.
const MAX_INPUTS: usize = 20_000;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::from_reader(Box::new(std::io::Cursor::new(data.to_vec())), "fuzz")
    else {
        return;
    };
    let mut model = Model::new();
    for _ in 0..MAX_INPUTS {
        match reader.next_input() {
            Ok(Some(input)) => {
                let _ = model.feed(&input);
            }
            _ => break,
        }
    }
    let _ = model.snapshot(u64::MAX / 2);
    let _ = model.summary();
});
