//! CPU time of loadgen's own threads against everything else in the process (the spawned
//! switch), so that a run can show that loadgen is not the bottleneck, and, per thread name,
//! where the other threads' time goes: on the CPU, waiting for one, and how often each was
//! scheduled. Linux only: elsewhere the figures are absent.

use std::collections::BTreeMap;

/// One thread name's (or group's) counters from `/proc/self/task/*/schedstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sched {
    /// Time on a CPU.
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU (the scheduler's delay).
    pub wait_ns: u64,
    /// Times put on a CPU: each wake-up from a sleep is one, as is each preemption.
    pub slices: u64,
}

impl Sched {
    fn since(self, earlier: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            slices: self.slices.saturating_sub(earlier.slices),
        }
    }

    fn add(&mut self, other: Sched) {
        self.run_ns = self.run_ns.saturating_add(other.run_ns);
        self.wait_ns = self.wait_ns.saturating_add(other.wait_ns);
        self.slices = self.slices.saturating_add(other.slices);
    }

    /// Parses a `schedstat` line: run time, wait time (nanoseconds), slices.
    fn parse(line: &str) -> Option<Sched> {
        let mut fields = line.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(Sched {
            run_ns: fields.next()??,
            wait_ns: fields.next()??,
            slices: fields.next()??,
        })
    }
}

/// CPU nanoseconds of loadgen's threads (named `loadgen…`), and the other threads' counters
/// by name (threads of one name, such as a runtime's workers, summed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub loadgen_ns: u64,
    pub others: BTreeMap<String, Sched>,
}

impl Split {
    /// CPU nanoseconds of all threads but loadgen's.
    pub fn other_ns(&self) -> u64 {
        self.others
            .values()
            .fold(0u64, |sum, s| sum.saturating_add(s.run_ns))
    }

    /// What was spent between `earlier` and this reading. A name missing from `earlier`
    /// counts from zero; one missing now (its threads ended) is left out.
    pub fn since(&self, earlier: &Split) -> Split {
        Split {
            loadgen_ns: self.loadgen_ns.saturating_sub(earlier.loadgen_ns),
            others: self
                .others
                .iter()
                .map(|(name, now)| {
                    let before = earlier.others.get(name).copied().unwrap_or_default();
                    (name.clone(), now.since(before))
                })
                .collect(),
        }
    }

    fn add(&mut self, comm: &str, sched: Sched) {
        if comm.starts_with("loadgen") {
            self.loadgen_ns = self.loadgen_ns.saturating_add(sched.run_ns);
        } else {
            self.others.entry(comm.to_owned()).or_default().add(sched);
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
        let Some(sched) = Sched::parse(&schedstat) else {
            continue;
        };
        out.add(comm.trim_end(), sched);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(run_ns: u64, wait_ns: u64, slices: u64) -> Sched {
        Sched {
            run_ns,
            wait_ns,
            slices,
        }
    }

    #[test]
    fn schedstat_lines_parse_and_bad_ones_do_not() {
        assert_eq!(Sched::parse("1500 20 7\n"), Some(sched(1500, 20, 7)));
        assert_eq!(Sched::parse("1500 20"), None);
        assert_eq!(Sched::parse("1500 x 7"), None);
        assert_eq!(Sched::parse(""), None);
    }

    #[test]
    fn threads_of_one_name_are_summed_and_loadgen_kept_apart() {
        let mut a = Split::default();
        a.add("switch-io", sched(100, 10, 1));
        a.add("switch-io", sched(50, 5, 2));
        a.add("wal-writer", sched(30, 0, 4));
        a.add("loadgen-pacer", sched(7, 1, 1));
        a.add("loadgen", sched(3, 1, 1));
        assert_eq!(a.loadgen_ns, 10);
        assert_eq!(a.other_ns(), 180);
        assert_eq!(a.others["switch-io"], sched(150, 15, 3));
        assert_eq!(a.others["wal-writer"], sched(30, 0, 4));
        assert!(!a.others.keys().any(|k| k.starts_with("loadgen")));
    }

    #[test]
    fn since_subtracts_by_name_and_counts_new_names_from_zero() {
        let mut a = Split::default();
        a.add("ledger-stage", sched(100, 10, 5));
        a.add("wal-writer", sched(40, 4, 2));
        let mut b = Split::default();
        b.add("ledger-stage", sched(160, 25, 9));
        b.add("snapshot", sched(20, 2, 1));
        b.add("loadgen", sched(9, 0, 1));
        let d = b.since(&a);
        assert_eq!(d.loadgen_ns, 9);
        assert_eq!(d.other_ns(), 80, "the sum of the names still there");
        assert_eq!(d.others["ledger-stage"], sched(60, 15, 4));
        assert_eq!(d.others["snapshot"], sched(20, 2, 1));
        assert!(
            !d.others.contains_key("wal-writer"),
            "ended threads are left out"
        );
    }
}
