//! Weight files through the trainer: a hostile checkpoint's ignored entries reach the
//! load report, the safetensors files the trainer writes (model, EMA, optimizer) carry
//! the Hugging Face format tag, and `main.py` checkpoints go through the same bounded
//! reader. The readers themselves are tested in `formats/tests/weights_hostile.rs`.

#[path = "../../formats/tests/weights_util/mod.rs"]
mod weights_util;

use std::collections::BTreeMap;
use trainer::weights::read_weights;
use weights_util::*;

#[test]
fn foreign_globals_are_never_called_and_are_reported() {
    // {'w': tensor, 'evil': posix.system('touch PWNED')} and a top-level builtins.eval
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("PWNED");
    let cmd = format!("touch {}", marker.display());
    let mut p = Pickle::new(2);
    p.op(b"}").mark().str("model");
    p.state_dict(|p| {
        p.str("w").tensor(&TensorSpec::f32("0", &[2, 3]), false);
        p.str("evil")
            .global("posix", "system")
            .mark()
            .str(&cmd)
            .op(b"tR");
    });
    p.str("x")
        .global("builtins", "eval")
        .mark()
        .str("1+1")
        .op(b"tR");
    p.op(b"u");
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    let path = dir.path().join("evil.pth");
    std::fs::write(&path, &b).unwrap();
    let w = read_weights(&path).unwrap();
    assert!(!marker.exists(), "a pickle call was executed");
    assert_eq!(w.tensors.keys().collect::<Vec<_>>(), ["w"]);
    let joined = w.ignored.join("\n");
    assert!(
        joined.contains("entry \"evil\"") && joined.contains("posix.system, never executed"),
        "{joined}"
    );
    assert!(joined.contains("builtins.eval"), "{joined}");
    assert!(joined.contains(&path.display().to_string()), "{joined}");

    // and through the model loader, the report carries them
    let spec = trainer::models::ModelSpec::parse("resnet_small").unwrap();
    let (vm, _m, _r) = trainer::weights::build_model(
        &spec,
        None,
        &Default::default(),
        &candle_core::Device::Cpu,
        0,
    )
    .unwrap();
    let opts = trainer::weights::LoadOptions { partial: true };
    let report = trainer::weights::load_into(&vm, &spec, &path, &opts).unwrap();
    assert!(
        report
            .ignored_entries
            .iter()
            .any(|l| l.contains("posix.system")),
        "{:?}",
        report.ignored_entries
    );
    assert!(!marker.exists());
}

#[test]
fn weights_we_write_carry_the_hugging_face_format_tag() {
    let spec = trainer::models::ModelSpec::parse("resnet_small").unwrap();
    let (vm, _m, _r) = trainer::weights::build_model(
        &spec,
        None,
        &Default::default(),
        &candle_core::Device::Cpu,
        0,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    trainer::weights::save_safetensors(&vm, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    // and it reads back through our checked reader
    let w = read_weights(&path).unwrap();
    assert!(w.tensors.contains_key("fc.weight"));

    // the EMA file too, and an EMA file of the earlier layout still loads
    let mut ema = trainer::ema::ModelEma::from_varmap(0.9, &vm).unwrap();
    let ema_path = dir.path().join("ema.safetensors");
    ema.save(&ema_path).unwrap();
    let bytes = std::fs::read(&ema_path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    let back = trainer::ema::ModelEma::load(&ema_path, &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.decay(), 0.9);
    let (tensors, _) = trainer::tensor_file::read(&ema_path, &candle_core::Device::Cpu).unwrap();
    let old = dir.path().join("old_ema.safetensors");
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "deit-pipe model ema v1".to_string());
    meta.insert("decay".to_string(), "0.5".to_string());
    let tensors: BTreeMap<_, _> = tensors.into_iter().collect();
    trainer::tensor_file::write_atomic(&old, &tensors, meta).unwrap();
    assert_eq!(
        trainer::ema::ModelEma::load(&old, &candle_core::Device::Cpu)
            .unwrap()
            .decay(),
        0.5
    );
    ema.update_from_varmap(&vm).unwrap();

    // the optimizer state too; it still loads back
    let cfg = trainer::optim::AdamWConfig::default();
    let opt = trainer::optim::AdamW::from_varmap(&vm, cfg).unwrap();
    let opt_path = dir.path().join("optimizer.safetensors");
    opt.save(&opt_path).unwrap();
    let bytes = std::fs::read(&opt_path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .unwrap()
            .get("format")
            .map(String::as_str),
        Some("pt")
    );
    let mut back = trainer::optim::AdamW::from_varmap(&vm, cfg).unwrap();
    back.load(&opt_path).unwrap();
}

#[test]
fn main_py_checkpoints_go_through_the_same_bounded_reader() {
    use trainer::train::mainpy::MainPyCheckpoint;
    // {'model': {'w': tensor}, 'optimizer': {'state': {0: {'exp_avg': a 2^33-element
    // tensor}}, 'param_groups': []}, 'epoch': 3}: the optimizer's storage is checked
    // against the file before anything is allocated, as the weights' are.
    let w = TensorSpec::f32("0", &[2]);
    let mut huge = TensorSpec::f32("1", &[1 << 33]);
    huge.numel = 1 << 33;
    let mut p = Pickle::new(2);
    p.op(b"}").mark();
    p.str("model").state_dict(|p| {
        p.str("w").tensor(&w, false);
    });
    p.str("optimizer").op(b"}").mark();
    p.str("state").op(b"}").mark();
    p.int(0).op(b"}").mark();
    p.str("exp_avg").tensor(&huge, false);
    p.op(b"u").op(b"u");
    p.str("param_groups").op(b"]");
    p.op(b"u");
    p.str("epoch").int(3);
    p.op(b"u");
    let pkl = p.stop();
    let b = zip_checkpoint(
        "ck",
        &pkl,
        &[("0", f32_bytes(&[1., 2.])), ("1", f32_bytes(&[0.; 4]))],
    );
    assert!(b.len() < 2000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.pth");
    std::fs::write(&path, &b).unwrap();
    let err = format!("{:#}", MainPyCheckpoint::read(&path).unwrap_err());
    assert!(
        err.contains("storage \"1\" declares 8589934592 elements")
            && err.contains("holds 16 bytes"),
        "{err}"
    );

    // A rebuild call of 2 arguments in the optimizer state (candle's reader indexed
    // past the end of such a tuple and panicked): a clean error naming the entry.
    let mut p = Pickle::new(2);
    p.op(b"}").mark();
    p.str("model").state_dict(|p| {
        p.str("w").tensor(&w, false);
    });
    p.str("optimizer").op(b"}").mark();
    p.str("state").op(b"}").mark();
    p.int(0).op(b"}").mark();
    p.str("exp_avg")
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .storage("FloatStorage", "1", 2, false)
        .int(0)
        .op(b"tR");
    p.op(b"u").op(b"u"); // the state entry, the state
    p.op(b"u").op(b"u"); // the optimizer, the checkpoint
    let pkl = p.stop();
    let b = zip_checkpoint(
        "ck",
        &pkl,
        &[("0", f32_bytes(&[1., 2.])), ("1", f32_bytes(&[0.; 2]))],
    );
    std::fs::write(&path, &b).unwrap();
    let err = format!("{:#}", MainPyCheckpoint::read(&path).unwrap_err());
    assert!(
        err.contains("exp_avg") && err.contains("the file gives 2"),
        "{err}"
    );

    // The same file with a sane optimizer tensor reads: weights, state and epoch.
    let mut m = TensorSpec::f32("1", &[2]);
    m.numel = 2;
    let mut p = Pickle::new(2);
    p.op(b"}").mark();
    p.str("model").state_dict(|p| {
        p.str("w").tensor(&w, false);
    });
    p.str("optimizer").op(b"}").mark();
    p.str("state").op(b"}").mark();
    p.int(0).op(b"}").mark();
    p.str("exp_avg").tensor(&m, false);
    p.str("exp_avg_sq").tensor(&m, false);
    p.str("step").int(5);
    p.op(b"u").op(b"u");
    p.str("param_groups").op(b"]");
    p.op(b"u");
    p.str("epoch").int(3);
    p.op(b"u");
    let pkl = p.stop();
    let b = zip_checkpoint(
        "ck",
        &pkl,
        &[("0", f32_bytes(&[1., 2.])), ("1", f32_bytes(&[3., 4.]))],
    );
    std::fs::write(&path, &b).unwrap();
    // No param_groups: refused after everything was read (a clean error, not a crash).
    let err = format!("{:#}", MainPyCheckpoint::read(&path).unwrap_err());
    assert!(err.contains("has no param_groups"), "{err}");
}
