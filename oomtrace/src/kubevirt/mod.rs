//! What oomtrace knows about KubeVirt VM pods, from names and paths alone (pure, no I/O):
//! thread classes, pod identity of a memcg, the VM behind it, and KubeVirt's overhead budget.
pub mod budget;
pub mod class;
pub mod cmdline;
pub mod identity;

pub use class::{ThreadClass, ThreadNames, classify, classify_process, classify_thread_comm};
