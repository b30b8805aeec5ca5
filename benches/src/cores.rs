//! Core lists (`--cores`) and thread pinning.
//!
//! A core list is either a comma-separated list of core ids (`0,1`, or `1,`
//! for core 1 alone) or a bare count `N`, meaning cores `0..N`. A bare `0`
//! cannot be a count, so it means "core 0 alone": `--cores 0` and
//! `--cores 1` both select core 0.

use crate::cli::CliError;

/// Parses a `--cores` value into a list of distinct core ids.
pub fn parse_cores(value: &str) -> Result<Vec<usize>, CliError> {
    let bad = |why: &str| CliError(format!("invalid `--cores {value}`: {why}"));
    let value = value.trim();
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if !value.contains(',') {
        let n: usize = value
            .parse()
            .map_err(|_| bad("expected a count N or a list like 0,1"))?;
        return Ok(if n == 0 { vec![0] } else { (0..n).collect() });
    }
    let mut cores = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: usize = part.parse().map_err(|_| bad("expected core ids"))?;
        if cores.contains(&id) {
            return Err(bad("core listed twice"));
        }
        cores.push(id);
    }
    if cores.is_empty() {
        return Err(bad("no core listed"));
    }
    Ok(cores)
}

/// Pins the calling thread to core `id`.
///
/// Fails when the core does not exist or pinning is refused.
pub fn pin_current_thread(id: usize) -> Result<(), String> {
    let ids = core_affinity::get_core_ids().ok_or("cannot list the machine's cores")?;
    let core = ids
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| format!("core {id} does not exist on this machine"))?;
    if core_affinity::set_for_current(core) {
        Ok(())
    } else {
        Err(format!("pinning to core {id} was refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lists() {
        assert_eq!(parse_cores("0").unwrap(), vec![0]);
        assert_eq!(parse_cores("1").unwrap(), vec![0]);
        assert_eq!(parse_cores("2").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("1,").unwrap(), vec![1]);
        assert_eq!(parse_cores("3, 1").unwrap(), vec![3, 1]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_cores("").is_err());
        assert!(parse_cores("a").is_err());
        assert!(parse_cores("0,0").is_err());
        assert!(parse_cores(",").is_err());
        assert!(parse_cores("-1").is_err());
    }
}
