//! oomtrace: which thread of which process charges memory to which memory cgroup, and who was
//! involved when the memcg OOM killer struck.
//!
//! Data flows one way: kernel (bpf) → ring/maps → decode → model (attribution) → output.
pub mod agent;
pub mod bpf;
pub mod capture;
pub mod cgroupfs;
pub mod clock;
pub mod collector;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod explain;
pub mod kernel_btf;
pub mod killer;
pub mod kubevirt;
pub mod memory_stat;
pub mod model;
pub mod offline;
pub mod output;
pub mod perfetto;
pub mod printer;
pub mod private_file;
pub mod privileges;
pub mod procfs;
pub mod render;
pub mod replay;
pub mod runtime_state;
pub mod scratch_cgroup;
pub mod top;
pub mod tracefs;
pub mod units;
pub mod visible;
pub mod workload;
