//! Where the core threads run: [`Placement`], and the spreading of cores
//! over the CPUs the process may use.
//!
//! `Count(n)` and `AllOnline` take CPUs in the order [`spread`] gives: one
//! CPU per physical core first (the hyperthread siblings of a core come only
//! after every physical core has one), physical packages (sockets)
//! interleaved, so that `n` cores get as many whole physical cores, and as
//! even a share of packages, as the machine allows. The topology comes from
//! `/sys/devices/system/cpu/cpuN/topology/{core_id,physical_package_id}`; a
//! CPU without it counts as a physical core of its own.

use std::collections::BTreeMap;

use crate::error::BuildError;

/// Where the core threads run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One core per listed CPU id, pinned there, in this order.
    Cpus(Vec<usize>),
    /// One core per CPU this process may run on, pinned, in the order of
    /// physical cores first, hyperthread siblings last, packages interleaved.
    AllOnline,
    /// This many cores, pinned to CPUs this process may run on, spread like
    /// [`AllOnline`](Placement::AllOnline): one per physical core before any
    /// sibling, packages interleaved.
    Count(usize),
    /// This many cores, not pinned (tests, or when the scheduler knows best).
    Unpinned(usize),
}

/// Where one CPU sits in the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuTopology {
    pub(crate) cpu: usize,
    pub(crate) package: u32,
    pub(crate) core: u32,
}

impl Placement {
    /// The CPU of each core (`None`: unpinned), checked against the CPUs the
    /// process may use.
    pub(crate) fn resolve(&self) -> Result<Vec<Option<usize>>, BuildError> {
        let cpus = match self {
            Placement::Cpus(list) => {
                let avail = available_cpus();
                for (i, &cpu) in list.iter().enumerate() {
                    if !avail.contains(&cpu) {
                        return Err(BuildError::UnknownCpu {
                            cpu,
                            available: avail,
                        });
                    }
                    if list[..i].contains(&cpu) {
                        return Err(BuildError::DuplicateCpu { cpu });
                    }
                }
                list.iter().copied().map(Some).collect()
            }
            Placement::AllOnline => spread(&topology(&available_cpus()))
                .into_iter()
                .map(Some)
                .collect(),
            Placement::Count(n) => {
                let avail = available_cpus();
                if *n > avail.len() {
                    return Err(BuildError::TooFewCpus {
                        asked: *n,
                        available: avail,
                    });
                }
                spread(&topology(&avail))
                    .into_iter()
                    .take(*n)
                    .map(Some)
                    .collect()
            }
            Placement::Unpinned(n) => vec![None; *n],
        };
        if cpus.is_empty() {
            return Err(BuildError::NoCores);
        }
        Ok(cpus)
    }
}

/// The CPUs this process may run on, ascending.
fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Reads the topology of `cpus` from sysfs (a CPU without it is its own
/// physical core in package 0).
fn topology(cpus: &[usize]) -> Vec<CpuTopology> {
    let read = |cpu: usize, what: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    cpus.iter()
        .map(
            |&cpu| match (read(cpu, "physical_package_id"), read(cpu, "core_id")) {
                (Some(package), Some(core)) => CpuTopology { cpu, package, core },
                _ => CpuTopology::unknown(cpu),
            },
        )
        .collect()
}

impl CpuTopology {
    /// A CPU whose topology is unknown: a physical core of its own in
    /// package 0, numbered past any real core id, in CPU order.
    fn unknown(cpu: usize) -> CpuTopology {
        CpuTopology {
            cpu,
            package: 0,
            core: 0x8000_0000 | (cpu as u32 & 0x7fff_ffff),
        }
    }
}

/// Orders `cpus` for placement: the first CPU of every physical core
/// (lowest CPU id of the core) before any second sibling, and so on; within
/// each such round, physical cores in order with packages interleaved
/// (package 0's first core, package 1's first core, ..., package 0's second
/// core, ...).
pub(crate) fn spread(cpus: &[CpuTopology]) -> Vec<usize> {
    // package -> core id -> CPUs of that physical core, ascending.
    let mut packages: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
    for t in cpus {
        packages
            .entry(t.package)
            .or_default()
            .entry(t.core)
            .or_default()
            .push(t.cpu);
    }
    for cores in packages.values_mut() {
        for siblings in cores.values_mut() {
            siblings.sort_unstable();
            siblings.dedup();
        }
    }
    // Physical cores of each package, in core order.
    let per_package: Vec<Vec<&Vec<usize>>> = packages
        .values()
        .map(|cores| cores.values().collect())
        .collect();
    let max_siblings = per_package
        .iter()
        .flatten()
        .map(|s| s.len())
        .max()
        .unwrap_or(0);
    let max_cores = per_package.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(cpus.len());
    for sibling in 0..max_siblings {
        for core in 0..max_cores {
            for package in &per_package {
                if let Some(cpu) = package.get(core).and_then(|s| s.get(sibling)) {
                    out.push(*cpu);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(list: &[(usize, u32, u32)]) -> Vec<CpuTopology> {
        list.iter()
            .map(|&(cpu, package, core)| CpuTopology { cpu, package, core })
            .collect()
    }

    #[test]
    fn siblings_numbered_apart_come_last() {
        // One package, two physical cores, siblings (0,2) and (1,3) (the
        // usual Intel numbering).
        let t = topo(&[(0, 0, 0), (1, 0, 1), (2, 0, 0), (3, 0, 1)]);
        assert_eq!(spread(&t), vec![0, 1, 2, 3]);
    }

    #[test]
    fn siblings_numbered_together_are_split() {
        // Siblings (0,1) and (2,3) (adjacent numbering): two cores take
        // CPUs 0 and 2, whole physical cores.
        let t = topo(&[(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)]);
        assert_eq!(spread(&t), vec![0, 2, 1, 3]);
    }

    #[test]
    fn packages_are_interleaved() {
        // Two packages of two cores with two threads each; package 1's CPUs
        // are 4..8, siblings adjacent.
        let t = topo(&[
            (0, 0, 0),
            (1, 0, 0),
            (2, 0, 1),
            (3, 0, 1),
            (4, 1, 0),
            (5, 1, 0),
            (6, 1, 1),
            (7, 1, 1),
        ]);
        assert_eq!(spread(&t), vec![0, 4, 2, 6, 1, 5, 3, 7]);
    }

    #[test]
    fn a_restricted_cpu_set_uses_only_its_cpus() {
        // The process may use CPUs 1, 2 and 3 of the Intel-numbered machine
        // above: 1 and 2 are on different physical cores, 3 is 1's sibling.
        let t = topo(&[(1, 0, 1), (2, 0, 0), (3, 0, 1)]);
        assert_eq!(spread(&t), vec![2, 1, 3]);
    }

    #[test]
    fn uneven_packages_and_core_counts() {
        // Package 0 has three cores, package 1 one; no hyperthreads.
        let t = topo(&[(0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0)]);
        assert_eq!(spread(&t), vec![0, 3, 1, 2]);
    }

    #[test]
    fn no_topology_keeps_cpu_order() {
        let t = topology(&[]);
        assert!(spread(&t).is_empty());
        // CPUs without sysfs topology are cores of their own, in CPU order,
        // after the CPUs whose topology is known.
        let mut t: Vec<CpuTopology> = [2, 0, 1].map(CpuTopology::unknown).to_vec();
        t.push(CpuTopology {
            cpu: 5,
            package: 0,
            core: 3,
        });
        assert_eq!(spread(&t), vec![5, 0, 1, 2]);
    }

    #[test]
    fn this_machine_spreads_every_available_cpu_once() {
        let avail = available_cpus();
        let mut got = spread(&topology(&avail));
        got.sort_unstable();
        assert_eq!(got, avail);
    }
}
