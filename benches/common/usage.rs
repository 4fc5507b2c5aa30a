//! What a child process cost, from the kernel's rusage: shared by the
//! benchmarks (`#[path]`-included; not a benchmark of its own).

#![allow(dead_code)]

use std::time::Duration;

/// CPU time and peak RSS of a finished child, from the kernel's rusage.
pub struct Usage {
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub exit: i32,
}

/// Waits for the child `pid` (reaping it) and returns what it cost.
pub fn wait_with_usage(pid: u32) -> Usage {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4 failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        exit: if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 },
    }
}

/// What one child process cost for one case.
#[derive(Clone, Copy)]
pub struct Measure {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

impl Measure {
    pub fn pages_per_s(&self, urls: usize) -> f64 {
        urls as f64 / self.wall.as_secs_f64()
    }
    pub fn cpu_per_1000(&self, urls: usize) -> f64 {
        self.cpu.as_secs_f64() * 1000.0 / urls as f64
    }
    pub fn rss_mib(&self) -> f64 {
        self.max_rss_kib as f64 / 1024.0
    }
}
