//! The lr schedule against timm's CosineLRScheduler driven as DeiT's main.py drives it
//! (fixture from tools/make_optim_fixtures.py).

use std::path::PathBuf;

use trainer::schedule::{scaled_lr, CosineLrSchedule};

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim/schedule.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("schedule.json")).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-14 * b.abs()
}

#[test]
fn per_epoch_lr_matches_deit_main_py() {
    let fx = fixture();
    for run in fx["runs"].as_array().unwrap() {
        let epochs = run["epochs"].as_u64().unwrap() as usize;
        let batch =
            (run["batch_size"].as_u64().unwrap() * run["world_size"].as_u64().unwrap()) as usize;
        let lr = scaled_lr(5e-4, batch);
        assert!(
            close(lr, run["scaled_lr"].as_f64().unwrap()),
            "scaled lr {lr}"
        );
        let sched = CosineLrSchedule {
            warmup_epochs: run["warmup_epochs"].as_u64().unwrap() as usize,
            ..CosineLrSchedule::deit(lr, epochs)
        };
        assert_eq!(sched.min_lr, run["min_lr"].as_f64().unwrap());
        assert_eq!(sched.warmup_lr, run["warmup_lr"].as_f64().unwrap());
        sched.validate().unwrap();
        let used = run["lr_per_epoch"].as_array().unwrap();
        assert_eq!(used.len(), epochs);
        for (e, want) in used.iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = sched.lr_for_epoch(e);
            assert!(
                close(got, want),
                "{epochs} epochs, epoch {e}: {got} vs {want}"
            );
        }
        for (t, want) in run["get_lr"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = sched.lr_at(t);
            assert!(
                close(got, want),
                "{epochs} epochs, get_lr({t}): {got} vs {want}"
            );
        }
        // cooldown only changes the count create_scheduler returns, which main.py ignores
        assert_eq!(
            run["num_epochs_returned"].as_u64().unwrap() as usize,
            epochs + 10
        );
    }
}

#[test]
fn deit_schedule_shape() {
    let s = CosineLrSchedule::deit(scaled_lr(5e-4, 1024), 300);
    assert_eq!(s.lr, 1e-3);
    // epochs 0 and 1 both train at the warmup lr: the scheduler is stepped at epoch end
    assert_eq!(s.lr_for_epoch(0), 1e-6);
    assert_eq!(s.lr_for_epoch(1), 1e-6);
    // the peak is reached at epoch warmup + 1, then the cosine decays towards min_lr
    assert_eq!(s.lr_for_epoch(6), s.lr_at(5));
    assert!(close(
        s.lr_at(5),
        1e-5 + 0.5 * (1e-3 - 1e-5) * (1.0 + (std::f64::consts::PI * 5.0 / 300.0).cos())
    ));
    let mut prev = f64::MAX;
    for e in 6..300 {
        let lr = s.lr_for_epoch(e);
        assert!(lr < prev && lr > 1e-5, "epoch {e}: {lr}");
        prev = lr;
    }
    // past the cycle the lr stays at min_lr
    assert_eq!(s.lr_at(300), 1e-5);
    assert_eq!(s.lr_at(1000), 1e-5);
    // no warmup: the optimizer starts at the peak lr
    let flat = CosineLrSchedule {
        warmup_epochs: 0,
        ..s
    };
    assert_eq!(flat.lr_for_epoch(0), 1e-3);
    assert_eq!(flat.lr_for_epoch(1), 1e-3);
    assert!(CosineLrSchedule { epochs: 0, ..s }.validate().is_err());
    assert!(CosineLrSchedule { lr: f64::NAN, ..s }.validate().is_err());
}
