//! The memory cgroup a task is in, read from the task itself at the event: what the kernel
//! charges to and what its OOM report names, whatever memcgs the thread charged before it
//! moved. task_struct.cgroups → css_set.subsys[memory_cgrp_id] → css.cgroup → kn → id, offsets
//! from BTF (TASK_MEMCG_ON is 0 when this kernel's BTF lacks one of them).
use crate::{
    globals::{self as g, get},
    maps::read_kernel_u64,
};

/// The memcg id (cgroup inode number) of the memory controller's cgroup of `task`.
#[inline(always)]
pub fn task_memcg_id(task: u64) -> Option<u64> {
    task_memcg(task).map(|(id, _)| id)
}

/// The memcg id of `task` and its memory css (the memcg's own address, less css's offset).
#[inline(always)]
pub fn task_memcg(task: u64) -> Option<(u64, u64)> {
    if get(&g::TASK_MEMCG_ON) == 0 || task == 0 {
        return None;
    }
    let cgroups = read_kernel_u64(task + get(&g::OFF_TASK_CGROUPS))?;
    let css = read_kernel_u64(cgroups + get(&g::OFF_CSS_SET_MEMORY))?;
    if css == 0 {
        return None;
    }
    Some((css_id(css)?, css))
}

/// The id (cgroup inode number) of a memory css's cgroup.
#[inline(always)]
fn css_id(css: u64) -> Option<u64> {
    let cgroup = read_kernel_u64(css + get(&g::OFF_CSS_CGROUP))?;
    let kn = read_kernel_u64(cgroup + get(&g::OFF_CGROUP_KN))?;
    read_kernel_u64(kn + get(&g::OFF_KN_ID))
}

/// Levels walked up from a memcg: deeper than any kubepods hierarchy (root, kubepods, QoS,
/// pod, container, and a few nested runtimes).
const MAX_DEPTH: u32 = 12;

/// memory.oom.group as the kernel's mem_cgroup_get_oom_group reads it for `task`: the highest
/// memcg from the task's own up with oom_group set (the root memcg has none). 0: none. The
/// kernel stops at the OOM's memcg, which this program does not know: userspace drops a group
/// above the OOM's memcg.
#[inline(always)]
pub fn task_oom_group(task: u64) -> u64 {
    if get(&g::OOM_GROUP_ON) == 0 {
        return 0;
    }
    let Some((_, mut css)) = task_memcg(task) else {
        return 0;
    };
    let mut group = 0;
    for _ in 0..MAX_DEPTH {
        if css == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_kernel checks the address; the offset is from this kernel's BTF.
        let flag = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel(
                (css + get(&g::OFF_CSS_OOM_GROUP)) as *const u8,
            )
        };
        if flag.is_ok_and(|f| f != 0)
            && let Some(id) = css_id(css)
        {
            group = id;
        }
        css = read_kernel_u64(css + get(&g::OFF_CSS_PARENT)).unwrap_or(0);
    }
    group
}

/// The running thread's memcg id.
#[inline(always)]
pub fn current_memcg_id() -> Option<u64> {
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only read through
    // bpf_probe_read_kernel, which checks every address.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    task_memcg_id(task)
}
