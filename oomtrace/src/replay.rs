//! Replaying captures: every recorded model input, in order, into a fresh model. `report`,
//! `export` and `tail --from` are views over this one loop.
use std::path::PathBuf;

use anyhow::Result;

use crate::{
    capture::{Header, Reader},
    clock::Clock,
    model::{Change, Model, input::ModelInput},
};

pub struct Replayed {
    pub header: Option<Header>,
    pub warnings: Vec<String>,
    pub model: Model,
    /// The newest stamp seen (CLOCK_MONOTONIC ns).
    pub last_ts: u64,
    pub inputs: u64,
}

pub enum Flow {
    Continue,
    Stop,
}

/// The printing clock of a capture: its wall-clock offset and start.
pub fn clock(header: Option<&Header>) -> Clock {
    match header {
        Some(h) => Clock {
            realtime_offset_ns: i128::from(h.realtime_offset_ns),
            start_mono_ns: h.start_mono_ns,
            start_boot_ns: 0,
        },
        None => Clock {
            realtime_offset_ns: 0,
            start_mono_ns: 0,
            start_boot_ns: 0,
        },
    }
}

/// Opens the first file to learn the header (for the clock) before the loop starts.
pub fn header_of(path: &std::path::Path) -> Result<(Option<Header>, Vec<String>)> {
    let r = Reader::open(path)?;
    Ok((r.header.clone(), r.warnings.clone()))
}

/// Feeds `paths` (rotated files oldest first) into a fresh model. `each` sees every input with
/// the model after it and what changed; it may stop the replay. With `charge_rows` false, charges
/// update the model but yield no rows (faster, for views that show none).
pub fn replay(
    paths: &[PathBuf],
    charge_rows: bool,
    mut each: impl FnMut(&Model, &ModelInput, Option<&Change>) -> Result<Flow>,
) -> Result<Replayed> {
    let mut out = Replayed {
        header: None,
        warnings: Vec::new(),
        model: Model::new(),
        last_ts: 0,
        inputs: 0,
    };
    out.model.set_quiet_charges(!charge_rows);
    'files: for path in paths {
        let mut r = Reader::open(path)?;
        if out.header.is_none() {
            out.header = r.header.clone();
        }
        while let Some(input) = r.next_input()? {
            out.inputs += 1;
            if let Some(ts) = input.ts_ns() {
                out.last_ts = out.last_ts.max(ts);
            }
            let change = out.model.feed(&input);
            if let Flow::Stop = each(&out.model, &input, change.as_ref())? {
                out.warnings.append(&mut r.warnings);
                break 'files;
            }
        }
        out.warnings.append(&mut r.warnings);
    }
    Ok(out)
}
