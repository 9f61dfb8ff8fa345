//! Reading the rank and world size an MPI launcher put in this process's environment.
//!
//! Each launcher names them differently: Open MPI's `mpirun` sets
//! `OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK`; MPICH's Hydra and Intel MPI (and Slurm's PMI-2)
//! set `PMI_RANK/SIZE`; a Slurm job step (`srun`, with PMIx or PMI-2) sets
//! `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` and `SLURM_LOCALID`. The environment is only
//! read here; MPI itself, when built in, is asked again at start and must agree.

use anyhow::{bail, Context, Result};

/// What the launcher said about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank.
    pub rank: usize,
    /// Number of processes in the job.
    pub world: usize,
    /// Rank among the job's processes on this machine, when the launcher says.
    pub local_rank: Option<usize>,
    /// The variables it came from, for messages.
    pub source: &'static str,
}

/// The launch described by this process's environment, or `None` when no launcher
/// started it.
pub fn detect() -> Result<Option<Launch>> {
    detect_from(&|k| std::env::var(k).ok())
}

/// [`detect`] over any variable lookup (tests).
pub fn detect_from(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let schemes: [(&str, &str, Option<&str>, &'static str); 3] = [
        (
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            Some("OMPI_COMM_WORLD_LOCAL_RANK"),
            "Open MPI: OMPI_COMM_WORLD_RANK/SIZE",
        ),
        ("PMI_RANK", "PMI_SIZE", None, "PMI: PMI_RANK/PMI_SIZE"),
        (
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            Some("SLURM_LOCALID"),
            "Slurm job step: SLURM_PROCID/SLURM_STEP_NUM_TASKS",
        ),
    ];
    for (rank_key, size_key, local_key, source) in schemes {
        let (Some(rank), Some(world)) = (var(rank_key), var(size_key)) else {
            continue;
        };
        let parse = |key: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("environment variable {key}={v:?} is not a number"))
        };
        let rank = parse(rank_key, &rank)?;
        let world = parse(size_key, &world)?;
        if world == 0 || rank >= world {
            bail!("{source}: rank {rank} is not inside a world of {world}");
        }
        let local_rank = match local_key.and_then(|k| var(k).map(|v| (k, v))) {
            Some((k, v)) => Some(parse(k, &v)?),
            None => None,
        };
        return Ok(Some(Launch {
            rank,
            world,
            local_rank,
            source,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_launcher_is_none() {
        assert_eq!(detect_from(&env(&[("HOME", "/root")])).unwrap(), None);
        // sbatch's batch step alone sets SLURM_PROCID but no step task count
        assert_eq!(detect_from(&env(&[("SLURM_PROCID", "0")])).unwrap(), None);
    }

    #[test]
    fn open_mpi_wins_and_gives_the_local_rank() {
        let l = detect_from(&env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (3, 4, Some(1)));
    }

    #[test]
    fn pmi_and_slurm_are_read() {
        let l = detect_from(&env(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]))
            .unwrap()
            .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (1, 2, None));
        let l = detect_from(&env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (5, 8, Some(1)));
    }

    #[test]
    fn nonsense_is_an_error_naming_the_variable() {
        let e = detect_from(&env(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PMI_RANK"), "{e}");
        let e = detect_from(&env(&[("PMI_RANK", "2"), ("PMI_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 2"), "{e}");
    }
}
