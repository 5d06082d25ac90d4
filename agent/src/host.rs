//! The name of the machine the agent runs on, as the kernel has it: the ring's default
//! instance ID (`ring/lifecycler.rs`) and `host_filter` (`scrape/host_filter.rs`) both start
//! from it.

/// The kernel's host name, `None` when it cannot be read or is empty.
pub fn kernel_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
