//! A real-mode KVM guest that writes one byte to each of N fresh guest pages and halts. Its
//! vCPU thread is named "CPU 0/KVM", like qemu's: with nested paging, each first write is a
//! guest page fault served by kvm_mmu_page_fault in that thread, which charges the page to the
//! memcg. Used by the kernel matrix (tests/tests/vm_matrix.rs) inside a nested-KVM guest.
//!
//! Usage: tiny_kvm PAGES [HOLD_SECONDS]. Prints "tiny_kvm: wrote PAGES pages" on success.
use std::{ffi::CString, thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Guest memory: 1 MiB, real mode's reach. Code at 0x1000, data pages from 0x10000.
const MEM_SIZE: usize = 1 << 20;
const CODE_AT: u64 = 0x1000;
const MAX_PAGES: usize = (MEM_SIZE - 0x10000) / 4096;

/// mov cx, N; mov bx, 0x1000; loop: mov ds, bx; mov byte [0], 1; add bx, 0x100; dec cx;
/// jnz loop; hlt. (Segment 0x1000 is 0x10000; +0x100 per round is the next 4 KiB page.)
fn code(pages: u16) -> Vec<u8> {
    let [lo, hi] = pages.to_le_bytes();
    vec![
        0xB9, lo, hi, // mov cx, pages
        0xBB, 0x00, 0x10, // mov bx, 0x1000
        0x8E, 0xDB, // mov ds, bx
        0xC6, 0x06, 0x00, 0x00, 0x01, // mov byte [0], 1
        0x81, 0xC3, 0x00, 0x01, // add bx, 0x100
        0x49, // dec cx
        0x75, 0xF2, // jnz -14 (back to mov ds, bx)
        0xF4, // hlt
    ]
}

fn name_thread(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pages: usize = args
        .next()
        .context("usage: tiny_kvm PAGES [HOLD_SECONDS]")?
        .parse()
        .context("PAGES must be a number")?;
    let hold: f64 = args.next().map_or(Ok(1.0), |s| s.parse())?;
    if pages == 0 || pages > MAX_PAGES {
        bail!("PAGES must be 1..={MAX_PAGES}");
    }
    let kvm = Kvm::new().context("cannot open /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    // SAFETY: anonymous private mapping, no fd; checked before use. Not populated: every page
    // the guest writes first is faulted in (and charged) while KVM serves its guest fault.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        bail!("mmap of guest memory failed");
    }
    let code = code(pages as u16);
    // SAFETY: `mem` is a fresh MEM_SIZE mapping and the code fits below MEM_SIZE.
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            (mem as *mut u8).add(CODE_AT as usize),
            code.len(),
        )
    };
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region points at our live MEM_SIZE mapping, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    let vcpu_thread = thread::Builder::new().spawn(move || -> Result<usize> {
        name_thread("CPU 0/KVM");
        let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.base = 0;
        sregs.ds.selector = 0;
        vcpu.set_sregs(&sregs)?;
        let mut regs = vcpu.get_regs()?;
        regs.rip = CODE_AT;
        regs.rflags = 2;
        vcpu.set_regs(&regs)?;
        let mut exits = 0;
        loop {
            exits += 1;
            match vcpu.run().context("KVM_RUN")? {
                VcpuExit::Hlt => {
                    println!("tiny_kvm: wrote {pages} pages ({exits} KVM_RUN calls)");
                    // A vCPU thread lives as long as its VM, as qemu's do.
                    thread::sleep(Duration::from_secs_f64(hold));
                    return Ok(exits);
                }
                VcpuExit::IoOut(..)
                | VcpuExit::IoIn(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..) => {}
                other => bail!("unexpected vCPU exit: {other:?}"),
            }
            if exits > 1000 {
                bail!("the guest did not halt");
            }
        }
    })?;
    vcpu_thread
        .join()
        .map_err(|_| anyhow::anyhow!("vCPU thread panicked"))??;
    Ok(())
}
