//! A binary built without the `mpi` feature, started as one rank of several (as `mpirun
//! -np 2` or `srun -n 2` would start it), refuses to train or cache instead of running
//! N unrelated copies. The launcher's environment is set by hand, so no MPI is needed.

#![cfg(not(feature = "mpi"))]

use std::process::Command;

fn as_rank_1_of_2(args: &[&str], vars: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn train_and_teacher_cache_refuse_several_ranks_without_mpi() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display().to_string();
    let launchers: [&[(&str, &str)]; 3] = [
        &[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")],
        &[("PMI_RANK", "1"), ("PMI_SIZE", "2")],
        &[("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "2")],
    ];
    for vars in launchers {
        for args in [
            vec!["train", "--data", &d, "--out", &d],
            vec![
                "teacher-cache",
                "--data",
                &d,
                "--teacher",
                &d,
                "--config",
                &d,
                "--epochs",
                "0",
                "--out",
                &d,
            ],
        ] {
            let (ok, err) = as_rank_1_of_2(&args, vars);
            assert!(!ok, "{args:?} under {vars:?} ran");
            assert!(
                err.contains("rank 1 of 2") && err.contains("--features mpi"),
                "{args:?} under {vars:?}: {err}"
            );
        }
    }
    // A world of one is an ordinary single process (the refusal is not about MPI's
    // variables being present): it gets as far as the missing data.
    let (ok, err) = as_rank_1_of_2(
        &["train", "--data", &d, "--out", &d],
        &[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "1")],
    );
    assert!(!ok);
    assert!(!err.contains("without MPI"), "{err}");
}
