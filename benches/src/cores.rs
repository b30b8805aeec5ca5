//! Core lists (`--cores`) and thread pinning.
//!
//! `--cores` takes either a comma-separated list of CPU ids (`0,1`) or a
//! count `N`, meaning the first `N` CPUs this process may run on (its
//! affinity mask, so `taskset -c 3 server --cores 1` runs on CPU 3). This is
//! the same convention as ringwire's `echo-node`.

use crate::cli::CliError;

/// A parsed `--cores` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSpec {
    /// These CPU ids, in order.
    List(Vec<usize>),
    /// The first `N` CPUs of the process's affinity mask.
    Count(usize),
}

/// Parses a `--cores` value.
pub fn parse_cores(value: &str) -> Result<CoreSpec, CliError> {
    let bad = |why: &str| CliError(format!("invalid `--cores {value}`: {why}"));
    let value = value.trim();
    if !value.contains(',') {
        let n: usize = value
            .parse()
            .map_err(|_| bad("expected a count N or a list like 0,1"))?;
        if n == 0 {
            return Err(bad(
                "a count must be at least 1 (use a list like 0,1 for CPU ids)",
            ));
        }
        return Ok(CoreSpec::Count(n));
    }
    let mut cores = Vec::new();
    for part in value.split(',').map(str::trim) {
        let id: usize = part.parse().map_err(|_| bad("expected CPU ids like 0,1"))?;
        if cores.contains(&id) {
            return Err(bad("CPU listed twice"));
        }
        cores.push(id);
    }
    Ok(CoreSpec::List(cores))
}

/// CPUs the calling thread may run on.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let ids = core_affinity::get_core_ids().ok_or("cannot read this process's CPU affinity")?;
    Ok(ids.into_iter().map(|c| c.id).collect())
}

impl CoreSpec {
    /// The CPU ids this spec selects, checked against the affinity mask.
    pub fn resolve(&self) -> Result<Vec<usize>, String> {
        let allowed = allowed_cpus()?;
        match self {
            CoreSpec::List(list) => {
                if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                    return Err(format!(
                        "CPU {bad} is not available to this process (allowed: {allowed:?})"
                    ));
                }
                Ok(list.clone())
            }
            CoreSpec::Count(n) => {
                if *n > allowed.len() {
                    return Err(format!(
                        "asked for {n} cores but only {} CPUs are available ({allowed:?})",
                        allowed.len()
                    ));
                }
                Ok(allowed[..*n].to_vec())
            }
        }
    }
}

/// Pins the calling thread to CPU `id`.
///
/// Fails when the CPU is outside the thread's affinity mask or pinning is
/// refused.
pub fn pin_current_thread(id: usize) -> Result<(), String> {
    let allowed = allowed_cpus()?;
    if !allowed.contains(&id) {
        return Err(format!(
            "CPU {id} is not available to this process (allowed: {allowed:?})"
        ));
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id }) {
        Ok(())
    } else {
        Err(format!("pinning to CPU {id} was refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lists() {
        assert_eq!(parse_cores("1").unwrap(), CoreSpec::Count(1));
        assert_eq!(parse_cores("2").unwrap(), CoreSpec::Count(2));
        assert_eq!(parse_cores("0,1").unwrap(), CoreSpec::List(vec![0, 1]));
        assert_eq!(parse_cores("3, 1").unwrap(), CoreSpec::List(vec![3, 1]));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0", "a", "0,0", ",", "1,", "-1"] {
            assert!(parse_cores(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resolves_against_the_affinity_mask() {
        let allowed = allowed_cpus().unwrap();
        assert_eq!(CoreSpec::Count(1).resolve().unwrap(), allowed[..1].to_vec());
        assert!(CoreSpec::Count(allowed.len() + 1).resolve().is_err());
        assert!(CoreSpec::List(vec![usize::MAX]).resolve().is_err());
    }
}
