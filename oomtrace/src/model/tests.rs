//! Table tests of the attribution model: deltas, retirement, the OOM memcg, windows, classes
//! and the post-mortem.
use super::input::ModelInput;
use super::*;
use crate::{decode::OomVictim, kubevirt::cmdline::VmFacts};

fn charge(tid: u32, tgid: u32, memcg: u64, comm: &str, anon: i64) -> Event {
    Event::Charge(Charge {
        ts_ns: 1,
        tid,
        tgid,
        memcg_id: memcg,
        comm: comm.into(),
        totals: ChargeTotals {
            anon,
            ..Default::default()
        },
        shmem_counted: true,
        sock_counted: false,
    })
}

#[test]
fn charge_delta_is_difference_of_cumulative_totals() {
    let mut m = Model::new();
    m.set_process_comm(10, "qemu-system-x86".into());
    let Some(Change::Charge(a)) = m.apply(&charge(11, 10, 5, "CPU 0/KVM", 4096)) else {
        panic!()
    };
    assert_eq!(
        (a.delta, a.total, a.process.as_str()),
        (4096, 4096, "qemu-system-x86")
    );
    let Some(Change::Charge(b)) = m.apply(&charge(11, 10, 5, "CPU 0/KVM", 300_000)) else {
        panic!()
    };
    assert_eq!((b.delta, b.total), (300_000 - 4096, 300_000));
    assert_eq!(
        m.apply(&charge(11, 10, 5, "CPU 0/KVM", 300_000)),
        None,
        "a sweep with no change is silent"
    );
}

#[test]
fn forgotten_threads_keep_their_bytes_in_the_process_summary() {
    let mut m = Model::new();
    m.apply(&charge(11, 10, 5, "CPU 0/KVM", 8192));
    m.apply(&charge(12, 10, 5, "IO iothread1", 4096));
    m.forget_thread(11);
    let s = m.summary();
    assert_eq!(s.threads.len(), 1);
    assert_eq!(s.processes[0].total, 12288);
    assert_eq!(s.processes[0].peak, 12288);
    assert_eq!(m.thread_count(), 1);
}

#[test]
fn oom_memcg_is_deepest_limited_ancestor_that_reached_its_limit() {
    let mut m = Model::new();
    m.set_memcg_path(1, "/kubepods/pod1".into());
    m.set_memcg_path(2, "/kubepods/pod1/ctr".into());
    m.set_usage(
        1,
        UsageLimit {
            usage: 100,
            limit: Some(100 << 20),
            peak: Some(100 << 20),
        },
    );
    m.set_usage(
        2,
        UsageLimit {
            usage: 100,
            limit: Some(400 << 20),
            peak: Some(10 << 20),
        },
    );
    m.apply(&charge(11, 10, 2, "CPU 1/KVM", 4096));
    let v = OomVictim {
        ts_ns: 2,
        invoker_tid: 11,
        invoker_tgid: 10,
        invoker_comm: "CPU 1/KVM".into(),
        victim_pid: 10,
        victim_comm: "qemu-system-x86".into(),
        total_vm_kb: 0,
        anon_rss_kb: 0,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        pgtables_kb: 0,
        uid: 0,
        oom_score_adj: 0,
    };
    let Some(Change::Oom(o)) = m.apply(&Event::OomVictim(v)) else {
        panic!()
    };
    assert_eq!(o.memcg, "/kubepods/pod1");
    assert_eq!(o.victim_charged, 4096);
    assert_eq!(o.invoker_comm, "CPU 1/KVM");
}

#[test]
fn is_ancestor_respects_path_component_boundaries() {
    assert!(is_ancestor("/a/b", "/a/b/c"));
    assert!(is_ancestor("/a/b", "/a/b"));
    assert!(is_ancestor("/", "/x"));
    assert!(!is_ancestor("/a/b", "/a/bc"));
    assert!(!is_ancestor("/a/b/c", "/a/b"));
}

const S: u64 = 1_000_000_000;
const MIB: i64 = 1 << 20;

fn charge_at(ts: u64, tid: u32, tgid: u32, memcg: u64, comm: &str, anon: i64, guest: i64) -> Event {
    Event::Charge(Charge {
        ts_ns: ts,
        tid,
        tgid,
        memcg_id: memcg,
        comm: comm.into(),
        totals: ChargeTotals {
            anon,
            guest,
            ..Default::default()
        },
        shmem_counted: true,
        sock_counted: false,
    })
}

fn qemu_info(watched: bool) -> ProcessInfo {
    ProcessInfo {
        comm: "qemu-system-x86".into(),
        vm: VmFacts {
            namespace: Some("default".into()),
            name: Some("vm1".into()),
            guest_memory: Some(512 << 20),
            vcpus: Some(1),
            iothreads: None,
        },
        guest_ram_watched: watched,
        ..Default::default()
    }
}

fn pod(m: &mut Model, usage: u64) {
    m.set_memcg_path(
        1,
        "/kubepods/burstable/pod0b5e1c2d-3f4a-4b6c-8d7e-9f0a1b2c3d4e".into(),
    );
    m.set_usage(
        1,
        UsageLimit {
            usage,
            limit: Some(768 << 20),
            peak: Some(usage),
        },
    );
}

#[test]
fn guest_ram_is_tagged_charges_or_tcg_vcpu_anon_only_when_its_mapping_is_unknown() {
    let mut m = Model::new();
    m.set_process_info(10, qemu_info(true));
    m.set_process_info(
        20,
        ProcessInfo {
            comm: "qemu-system-x86".into(),
            ..qemu_info(false)
        },
    );
    m.apply(&charge_at(S, 11, 10, 1, "CPU 0/TCG", 100 * MIB, 80 * MIB));
    m.apply(&charge_at(S, 21, 20, 1, "CPU 0/TCG", 100 * MIB, 0));
    m.set_process_comm(30, "stress".into());
    m.apply(&charge_at(S, 31, 30, 1, "CPU 0/KVM", 100 * MIB, 60 * MIB));
    let s = m.summary();
    let t = |tid| {
        s.threads
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| (t.class, t.guest))
    };
    assert_eq!(
        t(11),
        Some((ThreadClass::Vcpu, 80 * MIB)),
        "watched: tagged bytes only"
    );
    assert_eq!(
        t(21),
        Some((ThreadClass::Vcpu, 100 * MIB)),
        "unwatched TCG vCPU: all anon"
    );
    assert_eq!(
        t(31),
        Some((ThreadClass::Foreign, 60 * MIB)),
        "a qemu-like thread name outside qemu"
    );
}

#[test]
fn exited_threads_keep_their_bytes_in_class_views_until_the_process_ends() {
    let mut m = Model::new();
    pod(&mut m, 200 << 20);
    m.set_process_comm(40, "memhold".into());
    m.apply(&charge_at(S, 41, 40, 1, "memhold", 96 * MIB, 0));
    m.apply(&Event::ThreadExit(ThreadExit {
        ts_ns: 2 * S,
        tid: 41,
        tgid: 40,
        comm: "memhold".into(),
        group_dead: false,
    }));
    m.forget_thread(41);
    m.tick(3 * S);
    let foreign = |m: &Model| {
        m.memcg_view(1, 3 * S).and_then(|v| {
            v.classes
                .iter()
                .find(|c| c.class == ThreadClass::Foreign)
                .map(|c| c.now)
        })
    };
    assert_eq!(
        foreign(&m),
        Some(96 * MIB),
        "the process still holds its exited thread's pages"
    );
    // The process ends: its last thread uncharged everything.
    m.apply(&charge_at(4 * S, 40, 40, 1, "memhold", -96 * MIB, 0));
    m.apply(&Event::ThreadExit(ThreadExit {
        ts_ns: 4 * S,
        tid: 40,
        tgid: 40,
        comm: "memhold".into(),
        group_dead: true,
    }));
    m.forget_thread(40);
    m.tick(5 * S);
    assert_eq!(
        m.memcg_view(1, 5 * S)
            .map(|v| v.classes.iter().map(|c| c.now).sum::<i64>()),
        Some(0)
    );
}

#[test]
fn windows_measure_growth_over_the_last_10_and_60_seconds() {
    let mut m = Model::new();
    pod(&mut m, 0);
    m.set_process_comm(50, "memhold".into());
    for i in 0..=70u64 {
        m.apply(&charge_at(i * S, 51, 50, 1, "memhold", i as i64 * MIB, 0));
        m.tick(i * S);
    }
    let v = m.memcg_view(1, 70 * S).unwrap();
    let c = &v.classes[0];
    assert_eq!(
        (c.now, c.last_10s, c.last_60s),
        (70 * MIB, 10 * MIB, 60 * MIB)
    );
}

#[test]
fn time_to_limit_follows_the_usage_growth_rate() {
    let mut m = Model::new();
    for i in 0..=10u64 {
        pod(&mut m, (500 << 20) + i * (10 << 20));
        m.tick(i * S);
    }
    let v = m.memcg_view(1, 10 * S).unwrap();
    assert_eq!(v.headroom, Some(168 * MIB));
    let rate = v.rate_10s.unwrap();
    assert!((rate - (10 << 20) as f64).abs() < 1.0, "{rate}");
    let eta = v.time_to_limit_s.unwrap();
    assert!((eta - 16.8).abs() < 0.01, "{eta}");
}

#[test]
fn post_mortem_blames_the_overhead_grower_not_the_guest_filling_its_ram() {
    let mut m = Model::new();
    pod(&mut m, 700 << 20);
    m.set_process_info(10, qemu_info(true));
    m.set_process_comm(40, "memhold".into());
    m.tick(0);
    // The guest fills 500 MiB of its RAM; memhold grows 150 MiB; memhold hits the limit.
    m.apply(&charge_at(S, 11, 10, 1, "CPU 0/TCG", 500 * MIB, 500 * MIB));
    m.apply(&charge_at(2 * S, 41, 40, 1, "memhold", 150 * MIB, 0));
    m.apply(&charge_at(2 * S, 10, 10, 1, "qemu-system-x86", 20 * MIB, 0));
    pod(&mut m, 768 << 20);
    let Some(Change::Oom(o)) = m.apply(&Event::OomVictim(OomVictim {
        ts_ns: 3 * S,
        invoker_tid: 41,
        invoker_tgid: 40,
        invoker_comm: "memhold".into(),
        victim_pid: 10,
        victim_comm: "qemu-system-x86".into(),
        total_vm_kb: 0,
        anon_rss_kb: 520 << 10,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        pgtables_kb: 0,
        uid: 0,
        oom_score_adj: 0,
    })) else {
        panic!()
    };
    assert_eq!(
        (o.invoker_class, o.victim_class),
        (ThreadClass::Foreign, ThreadClass::QemuOther)
    );
    let pm = o.post_mortem.unwrap();
    assert_eq!(
        pm.sentence,
        "memhold (a process foreign to KubeVirt in the pod of VM default/vm1) grew 150.0 MiB in the \
         last 10 s and pushed the pod over its 768.0 MiB limit; qemu-system-x86 (guest RAM 500.0 MiB) was killed."
    );
    assert_eq!(pm.memcg.guest, 500 * MIB);
    assert_eq!(pm.memcg.overhead, 170 * MIB);
    assert_eq!(pm.top[0].comm, "CPU 0/TCG");
    let budget = &pm.memcg.budget;
    let unreserved = budget.iter().find(|b| b.item == "not reserved").unwrap();
    assert!(unreserved.over && unreserved.observed == 150 * MIB);
}

#[test]
fn a_thread_renamed_after_its_last_record_takes_the_name_it_exits_with() {
    let mut m = Model::new();
    m.set_process_comm(10, "qemu-system-x86".into());
    // Its first page (the stack) was charged before the thread named itself.
    m.apply(&charge(11, 10, 5, "qemu-system-x86", 4096));
    let sweep = Charge {
        ts_ns: 2,
        tid: 11,
        tgid: 10,
        memcg_id: 5,
        comm: String::new(),
        totals: ChargeTotals {
            anon: 819_200,
            ..Default::default()
        },
        shmem_counted: true,
        sock_counted: false,
    };
    assert!(
        m.may_be_renamed(&sweep),
        "named like its process, totals moved"
    );
    m.apply(&Event::ThreadExit(ThreadExit {
        ts_ns: 3,
        tid: 11,
        tgid: 10,
        comm: "CPU 0/KVM".into(),
        group_dead: false,
    }));
    let t = m.summary().threads;
    let t = t.iter().find(|t| t.tid == 11).expect("thread 11");
    assert_eq!((t.comm.as_str(), t.class), ("CPU 0/KVM", ThreadClass::Vcpu));
}

fn kill(ts: u64, invoker: (u32, u32, &str), invoker_memcg: u64, victim: u32) -> Event {
    Event::OomKill(crate::decode::OomKill {
        victim: OomVictim {
            ts_ns: ts,
            invoker_tid: invoker.0,
            invoker_tgid: invoker.1,
            invoker_comm: invoker.2.into(),
            victim_pid: victim,
            victim_comm: "qemu-system-x86".into(),
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            uid: 0,
            oom_score_adj: 0,
        },
        invoker_memcg_id: invoker_memcg,
        oom_memcg_id: 0,
        group_memcg_id: 0,
        oom_start_ns: 0,
    })
}

/// `kill`, with the memory.oom.group memcg the kernel kills the victim with.
fn group_kill(
    ts: u64,
    invoker: (u32, u32, &str),
    oom_memcg: u64,
    victim: u32,
    group: u64,
) -> Event {
    match kill(ts, invoker, oom_memcg, victim) {
        Event::OomKill(k) => Event::OomKill(crate::decode::OomKill {
            oom_memcg_id: oom_memcg,
            group_memcg_id: group,
            ..k
        }),
        e => e,
    }
}

#[test]
fn a_group_kill_is_one_oom_with_every_victim_and_separate_kills_stay_apart() {
    let mut m = Model::new();
    m.set_memcg_path(1, "/kubepods/pod1".into());
    m.set_memcg_path(2, "/kubepods/pod1/ctr".into());
    // The kernel kills the chosen victim, then the group's other tasks in the same loop.
    let Some(Change::Oom(o)) = m.apply(&group_kill(5 * S, (40, 40, "worker"), 1, 10, 2)) else {
        panic!("the first victim opens the OOM")
    };
    assert_eq!(o.group.as_deref(), Some("/kubepods/pod1/ctr"));
    for (i, pid) in [11, 12].into_iter().enumerate() {
        let Some(Change::OomGroupVictim(g)) = m.apply(&group_kill(
            5 * S + (i as u64 + 1) * 1000,
            (40, 40, "worker"),
            1,
            pid,
            2,
        )) else {
            panic!("pid {pid} joins the group kill")
        };
        assert_eq!((g.oom_ts_ns, g.victim.pid), (5 * S, pid));
    }
    let rows = m.oom_rows();
    assert_eq!(rows.len(), 1, "one OOM");
    let pids: Vec<u32> = rows[0].group_victims.iter().map(|g| g.pid).collect();
    assert_eq!(pids, vec![11, 12]);
    // Kills without a group, even by the same invoker moments later, are OOMs of their own.
    for (ts, pid) in [(5 * S + 5000, 13), (5 * S + 6000, 14)] {
        assert!(matches!(
            m.apply(&kill(ts, (40, 40, "worker"), 1, pid)),
            Some(Change::Oom(_))
        ));
    }
    // The same group much later is another OOM.
    assert!(matches!(
        m.apply(&group_kill(9 * S, (40, 40, "worker"), 1, 15, 2)),
        Some(Change::Oom(_))
    ));
    assert!(matches!(
        m.apply(&group_kill(9 * S + 1000, (40, 40, "worker"), 1, 16, 2)),
        Some(Change::OomGroupVictim(_))
    ));
    // A group above the OOM's memcg is not the kernel's: it stops its walk at the OOM's memcg.
    m.set_memcg_path(3, "/kubepods".into());
    let Some(Change::Oom(o)) = m.apply(&group_kill(20 * S, (41, 41, "x"), 1, 17, 3)) else {
        panic!()
    };
    assert_eq!(o.group, None);
    assert_eq!(m.oom_rows().len(), 5);
    // Where mark_victim cannot read the group (before 6.8) but the memcg OOM call is seen
    // (kernel-function tier): kills of one call are one OOM, kills of two calls two.
    let in_call = |ts: u64, pid: u32, start: u64| match kill(ts, (50, 50, "w"), 1, pid) {
        Event::OomKill(k) => Event::OomKill(crate::decode::OomKill {
            oom_start_ns: start,
            ..k
        }),
        e => e,
    };
    assert!(matches!(
        m.apply(&in_call(30 * S, 20, 29 * S)),
        Some(Change::Oom(_))
    ));
    let Some(Change::OomGroupVictim(g)) = m.apply(&in_call(30 * S + 10, 21, 29 * S)) else {
        panic!("a second kill of the same OOM call joins it")
    };
    assert_eq!(g.group, crate::model::oom::GROUP_UNNAMED);
    assert!(matches!(
        m.apply(&in_call(31 * S, 22, 31 * S - 5)),
        Some(Change::Oom(_))
    ));
    assert_eq!(m.oom_rows().len(), 7);
    // The kernel walks the group's threads: a thread of the chosen victim (6.1 marks it under
    // its own id) is the same process, not one more victim.
    m.apply(&charge(23, 22, 1, "toucher", 4096));
    assert!(m.apply(&in_call(31 * S + 10, 23, 31 * S - 5)).is_none());
    assert!(m.oom_rows()[6].group_victims.is_empty());
}

/// The seed's scenario as `kubectl exec` makes it: a shell charges in the runtime's memcg (9),
/// moves itself into the pod (1), execs memhold, and memhold grows until qemu is killed.
fn exec_into_pod(m: &mut Model, with_exec_event: bool) {
    m.set_memcg_path(9, "/system.slice/containerd.service".into());
    m.set_usage(
        9,
        UsageLimit {
            usage: 1 << 30,
            limit: None,
            peak: None,
        },
    );
    pod(m, 700 << 20);
    m.set_process_info(10, qemu_info(true));
    m.apply(&charge_at(S, 11, 10, 1, "CPU 0/TCG", 500 * MIB, 500 * MIB));
    m.set_process_comm(40, "sh".into());
    // Later than anything in the pod: hash order or "latest" must not pick it.
    m.apply(&charge_at(2 * S, 40, 40, 9, "sh", 8 * MIB, 0));
    m.apply(&charge_at(2 * S, 40, 40, 1, "sh", 64 << 10, 0));
    if with_exec_event {
        m.apply(&Event::Exec(crate::decode::Exec {
            ts_ns: 2 * S + 1,
            tid: 40,
            tgid: 40,
            old_tid: 40,
            memcg_id: 1,
            comm: "memhold".into(),
        }));
    }
    m.apply(&charge_at(3 * S, 40, 40, 1, "memhold", 200 * MIB, 0));
    // The pair in the runtime's memcg is touched last (the shell's freed pages come back).
    m.apply(&charge_at(4 * S, 40, 40, 9, "memhold", 0, 0));
    pod(m, 768 << 20);
}

#[test]
fn an_exec_renames_every_pair_of_the_thread_and_resets_the_process_facts() {
    let mut m = Model::new();
    m.set_process_info(
        40,
        ProcessInfo {
            comm: "sh".into(),
            exe: Some("/bin/sh".into()),
            rss_at_start: Some((1 << 20, 0)),
            ..Default::default()
        },
    );
    exec_into_pod(&mut m, true);
    let s = m.summary();
    let names: Vec<(&str, &str)> = s
        .threads
        .iter()
        .filter(|t| t.tid == 40)
        .map(|t| (t.memcg.as_str(), t.comm.as_str()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|(_, c)| *c == "memhold"), "{names:?}");
    let p = s
        .processes
        .iter()
        .find(|p| p.pid == 40)
        .expect("process 40");
    assert_eq!(p.process, "memhold");
    assert_eq!(m.process_comm(40), Some("memhold"));
}

#[test]
fn the_oom_row_takes_the_kernels_invoker_name_and_memcg_not_a_remembered_pair() {
    for with_exec_event in [true, false] {
        let mut m = Model::new();
        exec_into_pod(&mut m, with_exec_event);
        let Some(Change::Oom(o)) = m.apply(&kill(5 * S, (40, 40, "memhold"), 1, 10)) else {
            panic!()
        };
        assert_eq!(o.invoker_comm, "memhold");
        assert_eq!(o.invoker_process, "memhold");
        assert_eq!(o.memcg_id, 1, "the pod, not the runtime's memcg");
        assert_eq!(o.memcg_source, "invoker");
        let pm = o.post_mortem.expect("post-mortem");
        assert_eq!(pm.memcg.vm.as_deref(), Some("default/vm1"));
        assert!(
            pm.sentence
                .starts_with("memhold (a process foreign to KubeVirt"),
            "{}",
            pm.sentence
        );
        assert_eq!(pm.victim_guest, 500 * MIB);
    }
    // Without the kernel's memcg (older captures): the pair charged last decides, and says so.
    let mut m = Model::new();
    exec_into_pod(&mut m, true);
    let Some(Change::Oom(o)) = m.apply(&kill(5 * S, (40, 40, "memhold"), 0, 10)) else {
        panic!()
    };
    assert_eq!(o.memcg_source, "charges");
    // The kernel-function tier names the OOM's memcg itself.
    let mut m = Model::new();
    exec_into_pod(&mut m, true);
    let Some(Change::Oom(o)) = m.apply(&Event::OomKill(crate::decode::OomKill {
        oom_memcg_id: 1,
        ..match kill(5 * S, (40, 40, "memhold"), 9, 10) {
            Event::OomKill(k) => k,
            _ => unreachable!(),
        }
    })) else {
        panic!()
    };
    assert_eq!((o.memcg_id, o.memcg_source), (1, "kernel"));
}

#[test]
fn guest_ram_found_at_discovery_moves_from_overhead_to_the_vcpus_first() {
    let mut m = Model::new();
    pod(&mut m, 300 << 20);
    // Before the mapping is known: a TCG vCPU and the main thread charged untagged.
    m.set_process_info(10, qemu_info(false));
    m.apply(&charge_at(S, 11, 10, 1, "CPU 0/TCG", 90 * MIB, 0));
    m.apply(&charge_at(S, 10, 10, 1, "qemu-system-x86", 20 * MIB, 0));
    m.apply(&charge_at(S, 12, 10, 1, "IO iothread1", 8 * MIB, 0));
    m.set_process_info(10, qemu_info(true));
    // smaps: 100 MiB resident in guest RAM, of which nothing is tagged yet.
    assert_eq!(m.guest_found_at_discovery(10, 100 * MIB), 100 * MIB);
    m.feed(&ModelInput::GuestFound {
        tgid: 10,
        bytes: 100 * MIB,
    });
    // The same fact again (a facts block after rotation) moves nothing more.
    m.feed(&ModelInput::GuestFound {
        tgid: 10,
        bytes: 100 * MIB,
    });
    // From now on the fault hook tags; the vCPU adds 50 MiB of guest RAM.
    m.apply(&charge_at(
        2 * S,
        11,
        10,
        1,
        "CPU 0/TCG",
        140 * MIB,
        50 * MIB,
    ));
    m.tick(3 * S);
    let s = m.summary();
    let guest = |tid| s.threads.iter().find(|t| t.tid == tid).map(|t| t.guest);
    assert_eq!(guest(11), Some(140 * MIB), "vCPU: 90 found + 50 tagged");
    assert_eq!(
        guest(10),
        Some(10 * MIB),
        "main thread: the rest of what was found"
    );
    assert_eq!(guest(12), Some(0), "iothread: nothing left");
    let v = m.memcg_view(1, 3 * S).expect("pod view");
    assert_eq!(v.guest, 150 * MIB);
    // A replay of a rotated capture: the fact comes before the threads do.
    let mut r = Model::new();
    for input in m.facts() {
        r.feed(&input);
    }
    r.apply(&charge_at(
        4 * S,
        11,
        10,
        1,
        "CPU 0/TCG",
        140 * MIB,
        50 * MIB,
    ));
    r.apply(&charge_at(4 * S, 10, 10, 1, "qemu-system-x86", 20 * MIB, 0));
    let s = r.summary();
    let total: i64 = s.threads.iter().map(|t| t.guest).sum();
    assert_eq!(total, 150 * MIB);
}

#[test]
fn views_do_not_depend_on_the_order_things_were_first_seen() {
    // The same facts and charges fed in two orders give the same summary and post-mortem.
    let run = |reverse: bool| {
        let mut m = Model::new();
        pod(&mut m, 768 << 20);
        let mut inputs = vec![
            ModelInput::Process {
                tgid: 10,
                info: qemu_info(true),
            },
            ModelInput::Process {
                tgid: 20,
                info: ProcessInfo {
                    comm: "virt-launcher".into(),
                    vm: VmFacts {
                        namespace: Some("other".into()),
                        name: Some("stale".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
        ];
        for (tid, tgid, memcg) in [(11, 10, 1), (21, 20, 1), (41, 40, 9), (41, 40, 1)] {
            inputs.push(ModelInput::Event(charge_at(
                S, tid, tgid, memcg, "t", MIB, 0,
            )));
        }
        if reverse {
            inputs.reverse();
        }
        for i in &inputs {
            m.feed(i);
        }
        let Some(Change::Oom(o)) = m.apply(&kill(2 * S, (41, 40, "memhold"), 1, 10)) else {
            panic!()
        };
        let pm = o.post_mortem.expect("post-mortem");
        assert_eq!(
            pm.memcg.vm.as_deref(),
            Some("default/vm1"),
            "qemu's own name"
        );
        format!("{:?}", m.summary())
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn the_vm_budget_belongs_to_the_pod_never_to_its_ancestors() {
    let mut m = Model::new();
    pod(&mut m, 600 << 20);
    for (id, path) in [(2, "/kubepods/burstable"), (3, "/kubepods"), (4, "/")] {
        m.set_memcg_path(id, path.into());
    }
    // The host's own tree, outside Kubernetes: a limited memcg holding a qemu, below another.
    for (id, path, limit) in [
        (5, "/host/vms", Some(900u64 << 20)),
        (6, "/host", Some(8u64 << 30)),
        (7, "/host/vms/vm2", None),
    ] {
        m.set_memcg_path(id, path.into());
        m.set_usage(
            id,
            UsageLimit {
                usage: 1 << 20,
                limit,
                peak: None,
            },
        );
    }
    m.set_process_info(10, qemu_info(true));
    m.set_process_info(
        20,
        ProcessInfo {
            memcg: Some("/host/vms/vm2".into()),
            ..qemu_info(true)
        },
    );
    m.apply(&charge_at(S, 11, 10, 1, "CPU 0/KVM", 100 * MIB, 100 * MIB));
    m.apply(&charge_at(S, 21, 20, 7, "CPU 0/KVM", 100 * MIB, 100 * MIB));
    let has_budget = |id| !m.memcg_view(id, 2 * S).unwrap().budget.is_empty();
    assert!(has_budget(1), "the pod");
    for id in [2, 3, 4] {
        assert!(!has_budget(id), "memcg {id}: an ancestor of the pod");
    }
    assert!(
        has_budget(5),
        "outside Kubernetes: the deepest limited memcg holding qemu"
    );
    assert!(!has_budget(6) && !has_budget(7));
}

#[test]
fn pressure_is_the_kernels_counters_and_their_growth_over_the_window() {
    use crate::cgroupfs::Pressure;
    let mut m = Model::new();
    pod(&mut m, 600 << 20);
    let p = |hits, some_s: u64| Pressure {
        limit_hits: hits,
        oom_kills: Some(0),
        some_us: Some(some_s * 1_000_000),
        full_us: Some(some_s * 500_000),
        ..Pressure::default()
    };
    m.feed(&ModelInput::Pressure {
        id: 1,
        pressure: p(10, 0),
    });
    m.tick(0);
    m.feed(&ModelInput::Pressure {
        id: 1,
        pressure: p(46, 4),
    });
    m.tick(10 * S);
    let v = m.memcg_view(1, 10 * S).unwrap().pressure.unwrap();
    assert_eq!((v.limit_hits, v.limit_hits_60s), (46, 36));
    assert_eq!(v.stalled_some_60s, Some(0.4));
    assert_eq!(v.stalled_full_60s, Some(0.2));
    assert_eq!(v.window_s, 10.0);
    // v1: no PSI, so no stall share, never a 0 presented as measured.
    m.feed(&ModelInput::Pressure {
        id: 1,
        pressure: Pressure {
            some_us: None,
            full_us: None,
            ..p(50, 0)
        },
    });
    let v = m.memcg_view(1, 10 * S).unwrap().pressure.unwrap();
    assert_eq!(v.stalled_some_60s, None);
    // A memcg whose pressure was never read has none.
    m.set_memcg_path(9, "/other".into());
    m.set_usage(
        9,
        UsageLimit {
            usage: 1,
            limit: None,
            peak: None,
        },
    );
    assert!(m.memcg_view(9, 10 * S).unwrap().pressure.is_none());
}

/// A charge of page cache only (charge_at's, with its anon moved to file).
fn file_charge(ts: u64, tid: u32, tgid: u32, comm: &str, file: i64) -> Event {
    match charge_at(ts, tid, tgid, 1, comm, 0, 0) {
        Event::Charge(mut c) => {
            c.totals.file = file;
            Event::Charge(c)
        }
        other => other,
    }
}

#[test]
fn clean_page_cache_does_not_break_the_budget_dirty_page_cache_does() {
    use crate::memory_stat::MemoryStat;
    let mut m = Model::new();
    pod(&mut m, 600 << 20);
    m.set_process_info(10, qemu_info(true));
    let stat = |dirty: u64, writeback: u64| MemoryStat {
        anon: 10 * MIB as u64,
        file: 300 * MIB as u64,
        file_lru: 300 * MIB as u64,
        file_dirty: dirty,
        file_writeback: writeback,
        ..MemoryStat::default()
    };
    m.feed(&ModelInput::MemoryStat {
        id: 1,
        stat: MemoryStat {
            file: 0,
            file_lru: 0,
            ..stat(0, 0)
        },
    });
    m.tick(0);
    // qemu's thread-pool workers write the guest's disk through the host page cache.
    m.apply(&file_charge(S, 12, 10, "worker", 300 * MIB));
    let qemu_row = |m: &Model| {
        let v = m.memcg_view(1, 10 * S).unwrap();
        v.budget
            .into_iter()
            .find(|b| b.item == "qemu overhead")
            .unwrap()
    };
    // All of it written back: clean, reclaimable, within the reservation.
    m.feed(&ModelInput::MemoryStat {
        id: 1,
        stat: stat(0, 0),
    });
    m.tick(10 * S);
    let b = qemu_row(&m);
    assert_eq!(
        (b.observed, b.reclaimable, b.over),
        (300 * MIB, 300 * MIB, false)
    );
    let k = m.memcg_view(1, 10 * S).unwrap().kinds.unwrap();
    assert_eq!(k.bytes("page_cache"), Some(300 << 20));
    assert_eq!(k.reclaimable, 300 << 20);
    assert_eq!(k.grew_most, Some(("page_cache", 300 * MIB)));
    assert_eq!(k.bytes("sock"), None, "not counted: null, not 0");
    // Still dirty or under writeback: not reclaimable, over the reservation.
    m.feed(&ModelInput::MemoryStat {
        id: 1,
        stat: stat(200 * MIB as u64, 50 * MIB as u64),
    });
    let b = qemu_row(&m);
    assert_eq!((b.reclaimable, b.over), (50 * MIB, true));
    // The post-mortem says what the pod held and that page cache grew.
    pod(&mut m, 768 << 20);
    let Some(Change::Oom(o)) = m.apply(&Event::OomVictim(OomVictim {
        ts_ns: 11 * S,
        invoker_tid: 12,
        invoker_tgid: 10,
        invoker_comm: "worker".into(),
        victim_pid: 10,
        victim_comm: "qemu-system-x86".into(),
        total_vm_kb: 0,
        anon_rss_kb: 10 << 10,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        pgtables_kb: 0,
        uid: 0,
        oom_score_adj: 0,
    })) else {
        panic!()
    };
    let s = o.post_mortem.unwrap().sentence;
    assert!(
        s.contains(
            "At the kill the pod held anon 10.0 MiB, page cache 300.0 MiB (dirty 200.0 MiB, under \
             writeback 50.0 MiB); 50.0 MiB of it was clean page cache (reclaimable). Page cache \
             grew most in the last 11 s (+300.0 MiB, dirty +200.0 MiB)."
        ),
        "{s}"
    );
}

#[test]
fn page_cache_outlives_the_process_that_wrote_it() {
    let mut m = Model::new();
    pod(&mut m, 0);
    m.set_process_comm(60, "dd".into());
    m.set_process_comm(70, "memhold".into());
    // dd writes 100 MiB through the page cache with a 1 MiB buffer, then exits (freeing the
    // buffer); memhold allocates and frees 50 MiB, then exits.
    let mut dd = charge_at(S, 60, 60, 1, "dd", MIB, 0);
    if let Event::Charge(c) = &mut dd {
        c.totals.file = 100 * MIB;
    }
    m.apply(&dd);
    m.apply(&charge_at(S, 70, 70, 1, "memhold", 50 * MIB, 0));
    m.apply(&charge_at(2 * S, 70, 70, 1, "memhold", 0, 0));
    if let Event::Charge(c) = &mut dd {
        c.ts_ns = 2 * S;
        c.totals.anon = 0;
    }
    m.apply(&dd);
    for (tid, comm) in [(60, "dd"), (70, "memhold")] {
        m.apply(&Event::ThreadExit(ThreadExit {
            ts_ns: 2 * S,
            tid,
            tgid: tid,
            comm: comm.into(),
            group_dead: true,
        }));
        m.forget_thread(tid);
    }
    m.tick(3 * S);
    let classes = |m: &Model| {
        m.memcg_view(1, 3 * S)
            .map(|v| {
                v.classes
                    .iter()
                    .map(|c| (c.class, c.now))
                    .filter(|c| c.1 != 0)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let left = classes(&m);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1, 100 * MIB, "{left:?}");
    // A capture's facts carry it: a replay cut after the exit shows the same.
    let mut replay = Model::new();
    for f in m.facts() {
        replay.feed(&f);
    }
    replay.tick(3 * S);
    assert_eq!(classes(&replay), left);
}

/// Shmem is page cache the kernel cannot drop (swap-backed): where the charge hook tells it, a
/// class's shmem is never reclaimable, and the memcg's clean share is of its other page cache.
#[test]
fn shmem_a_class_charged_is_not_reclaimable_page_cache() {
    use crate::memory_stat::MemoryStat;
    let mut m = Model::new();
    pod(&mut m, 600 << 20);
    m.set_process_info(10, qemu_info(true));
    // qemu's main loop fills 200 MiB of a memfd; a foreign process reads 100 MiB of files.
    let shmem_charge = match file_charge(S, 11, 10, "qemu-system-x86", 200 * MIB) {
        Event::Charge(mut c) => {
            c.totals.shmem = 200 * MIB;
            Event::Charge(c)
        }
        other => other,
    };
    m.apply(&shmem_charge);
    m.apply(&file_charge(S, 21, 20, "reader", 100 * MIB));
    m.feed(&ModelInput::MemoryStat {
        id: 1,
        stat: MemoryStat {
            anon: 10 * MIB as u64,
            file: 300 * MIB as u64,
            shmem: 200 * MIB as u64,
            file_lru: 100 * MIB as u64,
            ..MemoryStat::default()
        },
    });
    m.tick(10 * S);
    let v = m.memcg_view(1, 10 * S).unwrap();
    let b = v.budget.iter().find(|b| b.item == "qemu overhead").unwrap();
    // Before shmem was told apart, a third of qemu's 200 MiB read as clean page cache.
    assert_eq!((b.observed, b.reclaimable), (200 * MIB, 0), "{b:?}");
    let s = m.summary();
    let t = s.threads.iter().find(|t| t.tid == 11).unwrap();
    assert_eq!((t.file, t.shmem), (200 * MIB, Some(200 * MIB)));
    // A charge from a hook that cannot tell shmem: no view shows a shmem figure any more.
    let untold = match file_charge(2 * S, 31, 30, "other", MIB) {
        Event::Charge(mut c) => {
            c.shmem_counted = false;
            Event::Charge(c)
        }
        other => other,
    };
    m.apply(&untold);
    let s = m.summary();
    assert!(s.threads.iter().all(|t| t.shmem.is_none()));
    assert!(s.processes.iter().all(|p| p.shmem.is_none()));
}

/// Socket buffers are part of a thread's total where counted; the memcg's interrupt row (tid 0)
/// is kernel work, not a tenant's thread; where a charge did not count them, no view shows them.
#[test]
fn socket_buffers_count_in_the_total_and_interrupt_charges_are_the_kernels() {
    let sock_charge = |tid: u32, comm: &str, sock: i64, counted: bool| match charge_at(
        S, tid, tid, 1, comm, 0, 0,
    ) {
        Event::Charge(mut c) => {
            c.totals.sock = sock;
            c.sock_counted = counted;
            Event::Charge(c)
        }
        other => other,
    };
    let mut m = Model::new();
    let Some(Change::Charge(r)) = m.apply(&sock_charge(40, "passt", 3 * MIB, true)) else {
        panic!("a row")
    };
    assert_eq!((r.total, r.sock), (3 * MIB, Some(3 * MIB)));
    m.apply(&sock_charge(0, "[interrupt]", 5 * MIB, true));
    let s = m.summary();
    let irq = s.threads.iter().find(|t| t.tid == 0).unwrap();
    assert_eq!((irq.class, irq.sock), (ThreadClass::Kernel, Some(5 * MIB)));
    // No task: the housekeeping never looks for it in /proc, so it is never forgotten.
    assert!(m.live_threads().all(|(tid, _)| tid != 0));
    assert!(m.live_threads().any(|(tid, _)| tid == 40));
    m.apply(&sock_charge(41, "other", 0, false));
    assert!(m.summary().threads.iter().all(|t| t.sock.is_none()));
}

/// Every split shows kinds: a class's, a process's and a thread's bytes by kind add up to their
/// total, a forgotten thread's kinds stay in its class until its process ends, and a kind a
/// charge could not tell is null in every view.
#[test]
fn class_process_and_thread_views_split_their_bytes_by_kind() {
    let with = |ts: u64, tid: u32, comm: &str, f: &dyn Fn(&mut ChargeTotals)| match charge_at(
        ts, tid, 10, 1, comm, 0, 0,
    ) {
        Event::Charge(mut c) => {
            f(&mut c.totals);
            c.sock_counted = true;
            Event::Charge(c)
        }
        other => other,
    };
    let mut m = Model::new();
    pod(&mut m, 600 << 20);
    m.set_process_info(10, qemu_info(true));
    m.apply(&with(S, 11, "worker", &|t| t.file = 64 * MIB));
    m.apply(&with(S, 12, "qemu-system-x86", &|t| {
        t.file = 8 * MIB;
        t.shmem = 8 * MIB;
        t.sock = 2 * MIB;
        t.kernel = MIB;
    }));
    m.apply(&with(S, 13, "CPU 0/KVM", &|t| {
        t.anon = 100 * MIB;
        t.guest = 100 * MIB;
    }));
    // The worker ends; its page cache stays with qemu's class views.
    m.forget_thread(11);
    m.tick(2 * S);
    let v = m.memcg_view(1, 2 * S).unwrap();
    let class = |c: ThreadClass| v.classes.iter().find(|v| v.class == c).cloned().unwrap();
    let worker = class(ThreadClass::QemuWorker);
    assert_eq!(
        (worker.now, worker.page_cache, worker.anon),
        (64 * MIB, 64 * MIB, 0)
    );
    let main = class(ThreadClass::QemuOther);
    assert_eq!(
        (
            main.now,
            main.page_cache,
            main.shmem,
            main.sock,
            main.kernel
        ),
        (11 * MIB, 0, Some(8 * MIB), Some(2 * MIB), MIB)
    );
    let vcpu = class(ThreadClass::Vcpu);
    assert_eq!(
        (vcpu.anon, vcpu.guest, vcpu.shmem),
        (100 * MIB, 100 * MIB, Some(0))
    );
    let snap = m.snapshot(2 * S);
    let p = snap.processes.iter().find(|p| p.pid == 10).unwrap();
    assert_eq!(
        (p.now, p.anon, p.page_cache, p.shmem, p.sock, p.kernel),
        (
            175 * MIB,
            100 * MIB,
            64 * MIB,
            Some(8 * MIB),
            Some(2 * MIB),
            MIB
        )
    );
    let t = snap.threads.iter().find(|t| t.tid == 12).unwrap();
    assert_eq!(
        (t.page_cache, t.shmem, t.sock),
        (0, Some(8 * MIB), Some(2 * MIB))
    );
    // A charge from a hook that counts no sockets: sock is null in every view, shmem still told.
    m.apply(&charge(14, 10, 1, "IO iothread1", MIB));
    m.tick(3 * S);
    let snap = m.snapshot(3 * S);
    assert!(
        snap.memcgs[0]
            .classes
            .iter()
            .all(|c| c.sock.is_none() && c.shmem.is_some())
    );
    assert!(snap.processes.iter().all(|p| p.sock.is_none()));
    assert!(snap.threads.iter().all(|t| t.sock.is_none()));
}
