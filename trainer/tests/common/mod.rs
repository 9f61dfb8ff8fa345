//! Test support shared by the model test binaries: where the PyTorch/timm fixtures live
//! and the specs of the small fixture models (made by `tools/make_model_fixtures.py`).

use std::path::{Path, PathBuf};
use trainer::models::{Arch, ModelSpec, ResNetBlock, ResNetConfig};

/// The model fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A small 10-class ResNet as the fixtures build it (64-wide stem; `small` = the 3x3
/// stride-1 CIFAR stem without max pool).
pub fn small_resnet(
    block: ResNetBlock,
    layers: [usize; 4],
    channels: [usize; 4],
    small: bool,
) -> ModelSpec {
    ModelSpec {
        name: "resnet_test".into(),
        arch: Arch::ResNet(ResNetConfig {
            block,
            layers,
            channels,
            stem_width: 64,
            small_stem: small,
        }),
        num_classes: 10,
        drop_path: 0.0,
    }
}
