//! Losses against fixtures from timm / DeiT's losses.py (tools/make_optim_fixtures.py):
//! values and gradients with respect to both heads' logits.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use trainer::loss::{
    argmax_rows, cross_entropy, label_smoothing_cross_entropy, mixup_targets, soft_distillation,
    soft_target_cross_entropy, BaseCriterion, DistillationKind, DistillationLoss, Targets, Teacher,
    TopKTeacher,
};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim")
}

struct Fx {
    t: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

impl Fx {
    fn load() -> Self {
        let dir = fixture_dir();
        let t = candle_core::safetensors::load(dir.join("loss.safetensors"), &Device::Cpu)
            .expect("loss fixture");
        let meta = serde_json::from_str(
            &std::fs::read_to_string(dir.join("loss.json")).expect("loss.json"),
        )
        .expect("loss.json parses");
        Self { t, meta }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
    }

    fn labels(&self, name: &str) -> Tensor {
        self.get(name).to_dtype(DType::U32).unwrap()
    }

    fn scalar(&self, name: &str) -> f32 {
        self.get(name).to_scalar::<f32>().unwrap()
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Asserts |a - b| <= atol + rtol * |b| element-wise; returns the largest |a - b|.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (flat(got), flat(want));
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        worst = worst.max(d);
        assert!(
            d <= atol + rtol * b.abs(),
            "{what}[{i}]: got {a}, want {b} (diff {d})"
        );
    }
    worst
}

/// Runs `f` on fresh variables holding `heads`, backpropagates, returns (loss, grads).
fn loss_and_grads(
    heads: &[&Tensor],
    f: impl Fn(&[Tensor]) -> anyhow::Result<Tensor>,
) -> (f32, Vec<Tensor>) {
    let vars: Vec<Var> = heads.iter().map(|h| Var::from_tensor(h).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = f(&ts).unwrap();
    let grads = loss.backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .cloned()
                .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), gs)
}

fn check_case(fx: &Fx, case: &str, loss: f32, grads: &[Tensor]) {
    let want = fx.scalar(&format!("{case}.loss"));
    assert!(
        (loss - want).abs() <= 2e-6 * want.abs().max(1.0),
        "{case}: loss {loss}, want {want}"
    );
    for (i, g) in grads.iter().enumerate() {
        let want = fx.get(&format!("{case}.grad{i}"));
        assert_close(&format!("{case} grad{i}"), g, want, 1e-7, 1e-5);
    }
}

fn mixed_from_labels(fx: &Fx, labels: &str, lam: f64, c: usize) -> Tensor {
    let l = fx.labels(labels).to_vec1::<u32>().unwrap();
    let rev: Vec<u32> = l.iter().rev().copied().collect();
    mixup_targets(&l, &rev, &vec![lam; l.len()], c, 0.1, &Device::Cpu).unwrap()
}

#[test]
fn mixup_targets_equal_timm_mixup_target() {
    let fx = Fx::load();
    let lam = fx.meta["lam"].as_f64().unwrap();
    let ours = mixed_from_labels(&fx, "labels", lam, 10);
    assert_close("mixed target", &ours, fx.get("mixed_target"), 0.0, 0.0);
    let ours = mixed_from_labels(&fx, "topk.labels", 0.4, 20);
    assert_close(
        "mixed target 2",
        &ours,
        fx.get("topk.mixed_target"),
        0.0,
        0.0,
    );
}

#[test]
fn base_criteria_match_timm() {
    let fx = Fx::load();
    let cls = fx.get("cls");
    let labels = fx.labels("labels");
    let mixed = fx.get("mixed_target");

    let (l, g) = loss_and_grads(&[cls], |x| soft_target_cross_entropy(&x[0], mixed));
    check_case(&fx, "soft_target_ce", l, &g);
    let (l, g) = loss_and_grads(&[cls], |x| {
        label_smoothing_cross_entropy(&x[0], &labels, 0.1)
    });
    check_case(&fx, "label_smoothing_ce", l, &g);
    let (l, g) = loss_and_grads(&[cls], |x| cross_entropy(&x[0], &labels));
    check_case(&fx, "cross_entropy", l, &g);

    // BaseCriterion dispatches to the same functions.
    let (l, g) = loss_and_grads(&[cls], |x| {
        BaseCriterion::for_recipe(false, 0.1).loss(&x[0], &Targets::Labels(&labels))
    });
    check_case(&fx, "label_smoothing_ce", l, &g);
    let (l, g) = loss_and_grads(&[cls], |x| {
        BaseCriterion::for_recipe(true, 0.1).loss(&x[0], &Targets::Dense(mixed))
    });
    check_case(&fx, "soft_target_ce", l, &g);
    assert_eq!(
        BaseCriterion::for_recipe(false, 0.0),
        BaseCriterion::CrossEntropy
    );
}

fn distill(kind: DistillationKind, base: BaseCriterion, alpha: f64, tau: f64) -> DistillationLoss {
    DistillationLoss {
        base,
        kind,
        alpha,
        tau,
    }
}

#[test]
fn distillation_losses_match_deit() {
    let fx = Fx::load();
    let (cls, dist, teacher) = (fx.get("cls"), fx.get("dist"), fx.get("teacher"));
    let mixed = fx.get("mixed_target");
    let labels = fx.labels("labels");
    let alpha = |c: &str| fx.meta["alpha"][c].as_f64().unwrap();
    let tau = |c: &str| fx.meta["tau"][c].as_f64().unwrap();

    let cases: Vec<(&str, DistillationLoss, Targets<'_>)> = vec![
        (
            "distill_none",
            distill(DistillationKind::None, BaseCriterion::SoftTarget, 0.5, 1.0),
            Targets::Dense(mixed),
        ),
        (
            "distill_hard",
            distill(
                DistillationKind::Hard,
                BaseCriterion::SoftTarget,
                alpha("distill_hard"),
                1.0,
            ),
            Targets::Dense(mixed),
        ),
        (
            "distill_hard_ls",
            distill(
                DistillationKind::Hard,
                BaseCriterion::LabelSmoothing(0.1),
                alpha("distill_hard_ls"),
                1.0,
            ),
            Targets::Labels(&labels),
        ),
        (
            "distill_soft_tau1",
            distill(
                DistillationKind::Soft,
                BaseCriterion::SoftTarget,
                alpha("distill_soft_tau1"),
                tau("distill_soft_tau1"),
            ),
            Targets::Dense(mixed),
        ),
        (
            "distill_soft_tau3",
            distill(
                DistillationKind::Soft,
                BaseCriterion::SoftTarget,
                alpha("distill_soft_tau3"),
                tau("distill_soft_tau3"),
            ),
            Targets::Dense(mixed),
        ),
    ];
    for (case, loss, targets) in cases {
        let (l, g) = loss_and_grads(&[cls, dist], |x| {
            Ok(loss
                .compute(
                    &x[0],
                    Some(&x[1]),
                    &targets,
                    Some(&Teacher::Logits(teacher)),
                )?
                .total)
        });
        check_case(&fx, case, l, &g);
        if loss.kind == DistillationKind::None {
            // the distillation head gets no gradient at all
            assert!(flat(&g[1]).iter().all(|&v| v == 0.0), "{case}: dist grad");
        } else {
            assert!(
                flat(&g[1]).iter().any(|&v| v != 0.0),
                "{case}: dist grad is zero"
            );
        }
        assert!(
            flat(&g[0]).iter().any(|&v| v != 0.0),
            "{case}: cls grad is zero"
        );
    }
}

fn topk_teacher(fx: &Fx) -> TopKTeacher {
    let idx = fx.get("topk.indices");
    let (b, k) = idx.dims2().unwrap();
    TopKTeacher::new(
        b,
        k,
        flat(&idx.to_dtype(DType::F32).unwrap())
            .iter()
            .map(|&v| v as u32)
            .collect(),
        flat(fx.get("topk.logits")),
        flat(fx.get("topk.lse")),
    )
    .unwrap()
}

#[test]
fn soft_distillation_from_topk_matches_reference_approximation() {
    let fx = Fx::load();
    let (cls, dist) = (fx.get("topk.cls"), fx.get("topk.dist"));
    let mixed = fx.get("topk.mixed_target");
    let teacher = topk_teacher(&fx);
    for case in ["distill_soft_topk_tau1", "distill_soft_topk_tau3"] {
        let m = &fx.meta["cases"][case];
        let loss = distill(
            DistillationKind::Soft,
            BaseCriterion::SoftTarget,
            m["alpha"].as_f64().unwrap(),
            m["tau"].as_f64().unwrap(),
        );
        let (l, g) = loss_and_grads(&[cls, dist], |x| {
            Ok(loss
                .compute(
                    &x[0],
                    Some(&x[1]),
                    &Targets::Dense(mixed),
                    Some(&Teacher::TopK(&teacher)),
                )?
                .total)
        });
        check_case(&fx, case, l, &g);
    }
}

#[test]
fn topk_with_all_classes_equals_full_teacher() {
    let fx = Fx::load();
    let full = fx.get("topk.teacher_full");
    let (b, c) = full.dims2().unwrap();
    let rows = full.to_vec2::<f32>().unwrap();
    let mut idx = Vec::new();
    let mut logits = Vec::new();
    let mut lse = Vec::new();
    for row in &rows {
        // any order of the K = C entries works
        for (j, &v) in row.iter().enumerate().rev() {
            idx.push(j as u32);
            logits.push(v);
        }
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        lse.push((m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()) as f32);
    }
    let teacher = TopKTeacher::new(b, c, idx, logits, lse).unwrap();
    let rebuilt = teacher.full_logits_tensor(c, &Device::Cpu).unwrap();
    assert_close("rebuilt logits", &rebuilt, full, 0.0, 0.0);
    let s = fx.get("topk.dist");
    for tau in [1.0, 3.0] {
        let a = soft_distillation(s, full, tau)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = soft_distillation(s, &rebuilt, tau)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn topk_tail_mass_is_spread_uniformly() {
    // 4 classes, K = 1: p(top) = 0.7 exactly at tau 1, the other 3 get 0.1 each.
    let lse = 2.0f32;
    let top = (0.7f64.ln() + lse as f64) as f32;
    let t = TopKTeacher::new(1, 1, vec![2], vec![top], vec![lse]).unwrap();
    let logits = t.full_logits(4).unwrap();
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let z: f64 = logits.iter().map(|&v| (v as f64 - m).exp()).sum();
    let p: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp() / z).collect();
    for (j, &pj) in p.iter().enumerate() {
        let want = if j == 2 { 0.7 } else { 0.1 };
        assert!((pj - want).abs() < 1e-6, "class {j}: {pj}");
    }
    assert_eq!(t.hard_labels(), vec![2]);
    // invalid caches are errors, not panics
    assert!(
        TopKTeacher::new(1, 2, vec![1, 1], vec![0.0, 0.0], vec![1.0])
            .unwrap()
            .full_logits(4)
            .is_err()
    );
    assert!(TopKTeacher::new(1, 1, vec![9], vec![0.0], vec![1.0])
        .unwrap()
        .full_logits(4)
        .is_err());
    assert!(TopKTeacher::new(2, 1, vec![0], vec![0.0], vec![1.0]).is_err());
}

#[test]
fn hard_distillation_from_labels_equals_from_logits() {
    let fx = Fx::load();
    let (cls, dist, teacher) = (fx.get("cls"), fx.get("dist"), fx.get("teacher"));
    let mixed = fx.get("mixed_target");
    let loss = distill(DistillationKind::Hard, BaseCriterion::SoftTarget, 0.5, 1.0);
    let stored = Tensor::new(argmax_rows(teacher).unwrap(), &Device::Cpu).unwrap();
    let run = |t: Teacher<'_>| {
        loss_and_grads(&[cls, dist], |x| {
            Ok(loss
                .compute(&x[0], Some(&x[1]), &Targets::Dense(mixed), Some(&t))?
                .total)
        })
    };
    let (l_full, g_full) = run(Teacher::Logits(teacher));
    let (l_lab, g_lab) = run(Teacher::Labels(&stored));
    assert_eq!(l_full, l_lab);
    for (a, b) in g_full.iter().zip(&g_lab) {
        assert_eq!(flat(a), flat(b));
    }
    // and from a top-K cache of the same teacher
    let rows = teacher.to_vec2::<f32>().unwrap();
    let k = 3;
    let (mut idx, mut logits, mut lse) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &j in &order[..k] {
            idx.push(j as u32);
            logits.push(row[j]);
        }
        lse.push(10.0);
    }
    let topk = TopKTeacher::new(rows.len(), k, idx, logits, lse).unwrap();
    let (l_topk, g_topk) = run(Teacher::TopK(&topk));
    assert_eq!(l_full, l_topk);
    for (a, b) in g_full.iter().zip(&g_topk) {
        assert_eq!(flat(a), flat(b));
    }
}

#[test]
fn bad_inputs_are_errors() {
    let fx = Fx::load();
    let cls = fx.get("cls");
    let bad = Tensor::new(&[0u32, 1, 2, 3, 4, 10], &Device::Cpu).unwrap();
    let err = cross_entropy(cls, &bad).unwrap_err().to_string();
    assert!(err.contains("label 10 of sample 5"), "{err}");
    let short = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    assert!(label_smoothing_cross_entropy(cls, &short, 0.1).is_err());
    let labels = fx.labels("labels");
    let soft = distill(
        DistillationKind::Soft,
        BaseCriterion::CrossEntropy,
        0.5,
        1.0,
    );
    assert!(soft
        .compute(
            cls,
            Some(fx.get("dist")),
            &Targets::Labels(&labels),
            Some(&Teacher::Labels(&labels))
        )
        .is_err());
    // soft-target CE with labels, label smoothing with dense targets
    assert!(BaseCriterion::SoftTarget
        .loss(cls, &Targets::Labels(&labels))
        .is_err());
    assert!(BaseCriterion::LabelSmoothing(0.1)
        .loss(cls, &Targets::Dense(fx.get("mixed_target")))
        .is_err());
    // distillation without the distillation head or teacher
    let hard = distill(
        DistillationKind::Hard,
        BaseCriterion::CrossEntropy,
        0.5,
        1.0,
    );
    assert!(hard
        .compute(
            cls,
            None,
            &Targets::Labels(&labels),
            Some(&Teacher::Labels(&labels))
        )
        .is_err());
    assert!(hard
        .compute(cls, Some(cls), &Targets::Labels(&labels), None)
        .is_err());
    assert!("medium".parse::<DistillationKind>().is_err());
    assert_eq!(
        "hard".parse::<DistillationKind>().unwrap(),
        DistillationKind::Hard
    );
}
