//! `train` from flags alone (no `--config`) follows main.py's defaults (issue 23): batch
//! per rank, no accumulation, the learning rate scaled as main.py
//! (`lr * batch_size * world_size / 512`), epochs of `floor(N / 256) * 256` samples with
//! repeated augmentation (RASampler) and of every image without it (DistributedSampler,
//! last partial batch dropped), EMA on. The logged lr and the optimizer steps of an epoch
//! are checked against main.py's formulas.

mod common;

use common::{bin, run_ok, synth_shards};
use std::path::Path;

/// The epoch record of `metrics.jsonl` for epoch 0.
fn epoch0(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "epoch" && r["epoch"] == 0)
        .expect("an epoch record")
}

#[test]
fn flags_alone_follow_main_py() {
    let tmp = tempfile::tempdir().unwrap();
    // 2 x 170 = 340 train images: floor(340 / 256) * 256 = 256 samples with RASampler.
    let data = synth_shards(
        tmp.path(),
        &[
            "--classes",
            "2",
            "--train-per-class",
            "170",
            "--val-per-class",
            "2",
        ],
    );
    let n = 340usize;
    let (batch, lr) = (32usize, 4e-3f64);
    for (repeated, samples) in [(true, n / 256 * 256), (false, n)] {
        let run = tmp.path().join(format!("run_{repeated}"));
        let mut c = bin();
        c.arg("train")
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--batch-size", &batch.to_string(), "--lr", &lr.to_string()])
            .args(["--epochs", "1", "--warmup-epochs", "0"])
            // A small model at 32 px, to keep the test fast; the recipe is the default.
            .args(["--input-size", "32", "--aa", "none"])
            .args(["--set", "model.name=deit", "--set", "model.patch_size=16"])
            .args(["--set", "model.embed_dim=32", "--set", "model.depth=1"])
            .args([
                "--set",
                "model.num_heads=1",
                "--set",
                "model.distilled=true",
            ]);
        if !repeated {
            c.arg("--no-repeated-aug");
        }
        run_ok(&mut c);
        let e = epoch0(&run);
        // main.py: linear_scaled_lr = lr * batch_size * world_size / 512 (world 1); with
        // no warmup, epoch 0 of the cosine runs at it.
        let want_lr = lr * batch as f64 / 512.0;
        let got_lr = e["lr"].as_f64().unwrap();
        assert!(
            (got_lr - want_lr).abs() <= 1e-12 * want_lr,
            "lr {got_lr} vs main.py's {want_lr} (repeated aug {repeated})"
        );
        // Batches of `batch` images, the last partial one dropped, one optimizer step each.
        assert_eq!(
            e["step"].as_u64(),
            Some((samples / batch) as u64),
            "optimizer steps in epoch 0 (repeated aug {repeated}): {e}"
        );
        let cfg: toml::Value =
            toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
        assert_eq!(cfg["data"]["accum_steps"].as_integer(), Some(1));
        assert_eq!(cfg["ema"]["enabled"].as_bool(), Some(true));
        // --input-size 32 with no crop stated: main.py's CIFAR rule, and config.toml says
        // so, eval crop included (the whole image, main.py's small-image eval).
        let aug = &cfg["augment"];
        assert_eq!(aug["crop"]["mode"].as_str(), Some("random_crop_pad"));
        assert_eq!(aug["eval_crop_pct"].as_float(), Some(1.0));
        assert!(e.get("val_ema").is_some(), "EMA is evaluated: {e}");
        let multiple = if repeated { 256 } else { 1 };
        assert_eq!(
            cfg["plan"]["num_samples_multiple"].as_integer(),
            Some(multiple)
        );
    }
}
