//! CPU time of loadgen's own threads against everything else in the process (the spawned
//! switch), so that a run can show that loadgen is not the bottleneck. Linux only: elsewhere
//! the figures are absent.

/// CPU nanoseconds of loadgen's threads (named `loadgen`) and of all other threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub loadgen_ns: u64,
    pub other_ns: u64,
}

impl Split {
    pub fn since(self, earlier: Split) -> Split {
        Split {
            loadgen_ns: self.loadgen_ns.saturating_sub(earlier.loadgen_ns),
            other_ns: self.other_ns.saturating_sub(earlier.other_ns),
        }
    }
}

/// Reads `/proc/self/task/*/{comm,schedstat}`. Threads that ended since an earlier reading
/// are missing from this one, so a split is only meaningful while the runtimes live.
pub fn split() -> Option<Split> {
    let mut out = Split::default();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
            continue;
        };
        let Some(ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        if comm.trim_end().starts_with("loadgen") {
            out.loadgen_ns += ns;
        } else {
            out.other_ns += ns;
        }
    }
    Some(out)
}
