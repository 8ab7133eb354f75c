//! Capture files: what the collector fed the model, saved so that `report`, `export` and
//! `tail --from` replay it through the same attribution code, without BPF or root.
pub mod format;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod tests;

pub use format::Header;
pub use reader::Reader;
pub use writer::{Writer, WriterStats};
