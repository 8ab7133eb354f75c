//! Kernel-function tier of the charge hook: try_charge_memcg(memcg, gfp_mask, nr_pages), entered
//! for every charge request (most are served from the per-CPU stock inside it), by fentry or
//! kprobe. The request is exact; its kind comes from __mem_cgroup_charge (folio charges: page
//! cache when the page is already in a file's mapping, as 5.10 and older put it before charging
//! it for the writer's mm, or when charged for no mm; anon otherwise); anything else (slab, page
//! tables, kernel stacks) is kernel memory. Frees of folios are seen at uncharge_batch (memcg,
//! pages, kernel pages), attributed to the freeing thread like the tracepoint tier's.
use aya_ebpf::{
    EbpfContext,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use crate::{
    charge::{Kind, account},
    globals::{self as g, get},
    maps::{CHARGE_KIND, current_ids, read_kernel_u64 as read},
};

const KIND_ANON: u32 = 1;
const KIND_FILE: u32 = 2;

/// memcg → css.cgroup → kn → id: the id the memcg tracepoints and cgroupfs (inode) use.
#[inline(always)]
pub fn memcg_id(memcg: u64) -> Option<u64> {
    if memcg == 0 {
        return None;
    }
    let cgroup = read(memcg + get(&g::OFF_MEMCG_CGROUP))?;
    let kn = read(cgroup + get(&g::OFF_CGROUP_KN))?;
    read(kn + get(&g::OFF_KN_ID))
}

#[inline(always)]
fn charge_request<C: EbpfContext>(ctx: &C, memcg: u64, nr_pages: u64) {
    let (tid, _) = current_ids();
    let kind = match CHARGE_KIND.get_ptr(&tid) {
        Some(k) => {
            // SAFETY: pointer from a successful lookup, read at once.
            let k = unsafe { *k };
            let _ = CHARGE_KIND.remove(&tid);
            match k {
                KIND_ANON => Kind::Anon,
                KIND_FILE => Kind::File,
                _ => Kind::Kernel,
            }
        }
        None => Kind::Kernel,
    };
    let Some(id) = memcg_id(memcg) else {
        return;
    };
    let _ = account::<_, false>(ctx, kind, (nr_pages as i64) * get(&g::PAGE_SIZE), id);
}

/// page->mapping's low bit: the page is anonymous (an anon_vma, not an address_space).
const PAGE_MAPPING_ANON: u64 = 1;

#[inline(always)]
fn folio_charge(page: u64, mm: u64) {
    let (tid, _) = current_ids();
    let off = get(&g::OFF_PAGE_MAPPING);
    let mapping = if off >= 0 && page != 0 {
        read(page + off as u64).unwrap_or(0)
    } else {
        0
    };
    let in_file = mapping != 0 && mapping & PAGE_MAPPING_ANON == 0;
    let kind = if mm != 0 && !in_file {
        KIND_ANON
    } else {
        KIND_FILE
    };
    let _ = CHARGE_KIND.insert(&tid, &kind, 0);
}

#[fentry(function = "try_charge_memcg")]
pub fn charge_fentry(ctx: FEntryContext) -> u32 {
    let memcg: u64 = ctx.arg(0);
    let nr_pages: u64 = ctx.arg(2);
    charge_request(&ctx, memcg, nr_pages & 0xffff_ffff);
    0
}

#[kprobe]
pub fn charge_kprobe(ctx: ProbeContext) -> u32 {
    let memcg: u64 = ctx.arg(0).unwrap_or(0);
    let nr_pages: u64 = ctx.arg(2).unwrap_or(0);
    charge_request(&ctx, memcg, nr_pages & 0xffff_ffff);
    0
}

/// uncharge_batch(const struct uncharge_gather *ug): folios freed from one memcg, in one go.
#[inline(always)]
fn uncharge(ctx: &impl EbpfContext, ug: u64) {
    if ug == 0 {
        return;
    }
    let (Some(memcg), Some(pages)) = (
        read(ug + get(&g::OFF_UG_MEMCG)),
        read(ug + get(&g::OFF_UG_NR_MEMORY)),
    ) else {
        return;
    };
    let kmem_off = get(&g::OFF_UG_NR_KMEM);
    let kmem = if kmem_off >= 0 {
        read(ug + kmem_off as u64).unwrap_or(0)
    } else {
        0
    };
    if pages == 0 {
        return;
    }
    let Some(id) = memcg_id(memcg) else {
        return;
    };
    let page = get(&g::PAGE_SIZE);
    let _ = account::<_, false>(
        ctx,
        Kind::Freed((kmem.min(pages) as i64) * page),
        (pages as i64) * page,
        id,
    );
}

#[fentry(function = "uncharge_batch")]
pub fn uncharge_fentry(ctx: FEntryContext) -> u32 {
    uncharge(&ctx, ctx.arg(0));
    0
}

#[kprobe]
pub fn uncharge_kprobe(ctx: ProbeContext) -> u32 {
    uncharge(&ctx, ctx.arg(0).unwrap_or(0));
    0
}

/// __mem_cgroup_charge(folio, mm, gfp): says what the next try_charge_memcg is for.
#[fentry(function = "__mem_cgroup_charge")]
pub fn folio_charge_fentry(ctx: FEntryContext) -> u32 {
    folio_charge(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe]
pub fn folio_charge_kprobe(ctx: ProbeContext) -> u32 {
    folio_charge(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}
