//! CPU selection and thread pinning for the peer servers.
//!
//! The servers take the example nodes' `--cpus LIST` / `--cores N`
//! ([`CoreArgs`]): `--cpus` (or a list after `--cores`, as in `--cores 0,1`)
//! names CPU ids; `--cores N` means the first `N` CPUs this process may run
//! on (its affinity mask, so `taskset -c 3 server --cores 1` runs on CPU 3).

use ringwire::runtime::Placement;

use crate::cli::CoreArgs;

/// The CPUs a server was asked to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSpec {
    /// These CPU ids, in order.
    List(Vec<usize>),
    /// The first `N` CPUs of the process's affinity mask.
    Count(usize),
}

impl CoreSpec {
    /// What `args` ask for; the first `default` CPUs when they ask nothing.
    pub fn from_args(args: &CoreArgs, default: usize) -> CoreSpec {
        match args.placement() {
            Placement::Cpus(cpus) => CoreSpec::List(cpus),
            Placement::Count(n) | Placement::Unpinned(n) => CoreSpec::Count(n),
            Placement::AllOnline => CoreSpec::Count(default),
        }
    }
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
    use clap::Parser;

    #[derive(Parser)]
    struct Server {
        #[command(flatten)]
        cores: CoreArgs,
    }

    fn spec(args: &[&str]) -> Result<CoreSpec, clap::Error> {
        Server::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
            .map(|s| CoreSpec::from_args(&s.cores, 1))
    }

    #[test]
    fn counts_and_lists() {
        assert_eq!(spec(&[]).unwrap(), CoreSpec::Count(1));
        assert_eq!(spec(&["--cores", "1"]).unwrap(), CoreSpec::Count(1));
        assert_eq!(spec(&["--cores", "2"]).unwrap(), CoreSpec::Count(2));
        assert_eq!(
            spec(&["--cores", "0,1"]).unwrap(),
            CoreSpec::List(vec![0, 1])
        );
        assert_eq!(
            spec(&["--cores", "3, 1"]).unwrap(),
            CoreSpec::List(vec![3, 1])
        );
        assert_eq!(
            spec(&["--cpus", "0-2"]).unwrap(),
            CoreSpec::List(vec![0, 1, 2])
        );
        assert_eq!(spec(&["--cpus", "1"]).unwrap(), CoreSpec::List(vec![1]));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0", "a", "0,0", ",", "-1"] {
            assert!(spec(&["--cores", bad]).is_err(), "{bad:?} accepted");
        }
        assert!(spec(&["--cpus", "0", "--cores", "1"]).is_err());
    }

    #[test]
    fn resolves_against_the_affinity_mask() {
        let allowed = allowed_cpus().unwrap();
        assert_eq!(CoreSpec::Count(1).resolve().unwrap(), allowed[..1].to_vec());
        assert!(CoreSpec::Count(allowed.len() + 1).resolve().is_err());
        assert!(CoreSpec::List(vec![usize::MAX]).resolve().is_err());
    }
}
