//! What the load tool reads from Linux's `/proc`: CPU time of a process or of one thread,
//! memory of a process, and the kernel's UDP drop counters. Every reader returns `None`
//! where the file is missing or unreadable (another OS, a process that ended).

use std::time::Duration;

/// Clock ticks per second of the `utime`/`stime` fields (`USER_HZ`, 100 on every Linux ABI
/// that matters here).
const USER_HZ: f64 = 100.0;

/// Where a CPU time comes from.
#[derive(Debug, Clone)]
pub enum CpuSource {
    /// A whole process: `/proc/<pid>/stat`.
    Process(u32),
    /// One thread of this process: `/proc/self/task/<tid>/stat`.
    Thread(u32),
}

impl CpuSource {
    /// CPU time used so far: the sum of the threads' `schedstat` (nanoseconds; threads that
    /// have ended no longer count, which the long-lived threads of a relay do not), or
    /// `utime + stime` of `stat` (10 ms resolution) where `schedstat` is missing.
    pub fn cpu_time(&self) -> Option<Duration> {
        let (threads, stat) = match self {
            CpuSource::Process(pid) => {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok();
                let sum = tasks.and_then(|dir| {
                    dir.flatten()
                        .map(|task| schedstat_ns(&task.path().join("schedstat")))
                        .sum::<Option<u64>>()
                });
                (sum, format!("/proc/{pid}/stat"))
            }
            CpuSource::Thread(tid) => {
                let task = std::path::PathBuf::from(format!("/proc/self/task/{tid}"));
                (schedstat_ns(&task.join("schedstat")), format!("/proc/self/task/{tid}/stat"))
            }
        };
        match threads {
            Some(ns) => Some(Duration::from_nanos(ns)),
            None => parse_stat_cpu(&std::fs::read_to_string(stat).ok()?),
        }
    }
}

/// The first field of a `schedstat` file: nanoseconds spent on a CPU.
fn schedstat_ns(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// Resident memory of a process, in KiB: now (`VmRSS`) and at its peak (`VmHWM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Memory {
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// The highest resident set size so far, KiB.
    pub peak_kib: u64,
}

/// The memory of `/proc/<pid>/status`; `None` for `pid` means this process.
pub fn memory(pid: Option<u32>) -> Option<Memory> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    parse_status_memory(&std::fs::read_to_string(path).ok()?)
}

/// The kernel's UDP counters of datagrams dropped for a full socket buffer (receive, send),
/// machine-wide (`/proc/net/snmp`): loss on loopback shows up here.
pub fn udp_buffer_errors() -> Option<(u64, u64)> {
    parse_snmp_udp(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// Datagrams dropped so far by the UDP sockets bound to `ports` (the `drops` column of
/// `/proc/net/udp` and `/proc/net/udp6`; a socket's count lives as long as the socket).
pub fn udp_socket_drops(ports: &[u16]) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            *total.get_or_insert(0) += parse_udp_drops(&text, ports);
        }
    }
    total
}

/// `utime + stime` from a `stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory { rss_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
}

fn parse_snmp_udp(snmp: &str) -> Option<(u64, u64)> {
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let value = |name: &str| {
        let at = names.iter().position(|n| *n == name)?;
        values.get(at)?.parse::<u64>().ok()
    };
    Some((value("RcvbufErrors")?, value("SndbufErrors")?))
}

fn parse_udp_drops(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let drops: u64 = fields.last()?.parse().ok()?;
            ports.contains(&port).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_advances_below_a_clock_tick() {
        let me = CpuSource::Process(std::process::id());
        let before = me.cpu_time().unwrap();
        // Spin until 2 ms of CPU are used: `stat` alone (10 ms ticks) could not tell.
        let start = std::time::Instant::now();
        let mut spins = 0u64;
        while me.cpu_time().unwrap() < before + Duration::from_millis(2) {
            spins = std::hint::black_box(spins + 1);
            assert!(start.elapsed() < Duration::from_secs(20), "CPU time did not advance");
        }
        let used = me.cpu_time().unwrap() - before;
        assert!(used < Duration::from_millis(10), "read in 10 ms steps: {used:?}");
    }

    #[test]
    fn stat_cpu_counts_fields_after_the_last_parenthesis() {
        let stat = "4242 (qrelay (serve) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    250 50 0 0 20 0 3 0 100 123456 789 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_memory_reads_rss_and_peak() {
        let status =
            "Name:\tqrelay\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status_memory(status), Some(Memory { rss_kib: 40960, peak_kib: 51200 }));
        assert_eq!(parse_status_memory("Name:\tx\n"), None);
    }

    #[test]
    fn snmp_udp_buffer_errors() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                    Udp: 100 2 3 90 7 1 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_snmp_udp(snmp), Some((7, 1)));
    }

    #[test]
    fn udp_drops_of_chosen_ports() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            7738: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 53854 2 000000002603fdb8 12\n\
            9490: 00000000:9829 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 59797 2 00000000e58903c1 5\n\
            9491: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 59798 2 00000000e58903c2 99\n";
        assert_eq!(parse_udp_drops(table, &[0x1151, 0x9829]), 17);
        assert_eq!(parse_udp_drops(table, &[4433]), 12); // 0x1151
        assert_eq!(parse_udp_drops(table, &[4434]), 0);
    }

    #[test]
    fn this_process_can_be_read() {
        // Linux only; elsewhere these are `None` and the tool reports nothing for them.
        if std::path::Path::new("/proc/self/status").exists() {
            let memory = memory(None).expect("memory");
            assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
            assert!(CpuSource::Process(std::process::id()).cpu_time().is_some());
        }
    }
}
