//! [`RandAugmentConfig`]: the knobs of timm's `rand_augment_transform`, their DeiT defaults,
//! and the timm config-string syntax (`rand-m9-mstd0.5-inc1`).

use serde::{Deserialize, Serialize};

/// Errors from parsing or validating a RandAugment configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RandAugmentError {
    /// The string does not start with the `rand` section.
    #[error(
        "RandAugment string {input:?}: must start with \"rand\" (e.g. \"rand-m9-mstd0.5-inc1\")"
    )]
    NotRand {
        /// The whole config string.
        input: String,
    },
    /// A section that timm would reject or that deit-pipe does not support.
    #[error("RandAugment string {input:?}: section {section:?}: {reason}")]
    BadSection {
        /// The whole config string.
        input: String,
        /// The offending `-`-separated section.
        section: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A field holds a value outside its domain.
    #[error("RandAugment config: field `{field}` = {value}: {reason}")]
    BadValue {
        /// Field name as in [`RandAugmentConfig`].
        field: &'static str,
        /// The value, formatted.
        value: String,
        /// The allowed domain.
        reason: &'static str,
    },
}

/// Configuration of timm's RandAugment (`timm.data.auto_augment.rand_augment_transform`).
///
/// [`Default`] is DeiT's `rand-m9-mstd0.5-inc1` with timm's DeiT hparams (bicubic
/// resampling, fill = ImageNet mean * 255 rounded = (124, 116, 104)).
/// Resampling is always bicubic: DeiT passes `interpolation='bicubic'`, which fixes it in
/// timm (timm only picks bilinear/bicubic at random when no interpolation is given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandAugmentConfig {
    /// Ops drawn per image, with replacement (timm `n`, default 2).
    pub num_ops: usize,
    /// Mean magnitude on timm's 0..10 scale (timm `m`).
    pub magnitude: f32,
    /// Std of the Gaussian magnitude noise (timm `mstd`); 0 = none; > 100 = uniform in
    /// `[0, magnitude)` as timm does for `mstd` > 100 (infinity).
    pub magnitude_std: f32,
    /// Upper clip of the noisy magnitude (timm `mmax`, default 10). The lower clip is 0.
    pub magnitude_max: f32,
    /// Probability that each drawn op is applied (timm `p`, default 0.5).
    pub prob: f32,
    /// Use timm's increasing op set (`inc1`, DeiT) instead of the original set.
    pub increasing: bool,
    /// RGB fill of the areas that geometric ops move into the frame (timm `img_mean`).
    pub fill: [u8; 3],
}

impl Default for RandAugmentConfig {
    fn default() -> Self {
        Self {
            num_ops: 2,
            magnitude: 9.0,
            magnitude_std: 0.5,
            magnitude_max: 10.0,
            prob: 0.5,
            increasing: true,
            fill: [124, 116, 104],
        }
    }
}

/// Magnitude std values above this mean "uniform in `[0, magnitude)`" (timm's rule).
pub const UNIFORM_MSTD_THRESHOLD: f32 = 100.0;

/// Most ops per image that [`RandAugmentConfig::validate`] accepts.
pub const MAX_NUM_OPS: usize = 64;

impl RandAugmentConfig {
    /// Parses a timm RandAugment string such as `rand-m9-mstd0.5-inc1` or `rand-m7-n3-mstd0.5`.
    ///
    /// Sections follow timm 1.0.31: `m` (magnitude), `n` (ops per image), `p` (op
    /// probability), `mstd` (magnitude std; > 100 = uniform), `mmax` (magnitude clip;
    /// 0 = default 10), `inc` (0/1). Sections absent from the string take *timm's* defaults
    /// (m10, n2, p0.5, mstd0, mmax10, inc0), not DeiT's. As in timm, the first `mstd` and
    /// `mmax` win and later `m`, `n`, `p`, `inc` override earlier ones. `fill` keeps DeiT's
    /// (124, 116, 104): it is not part of timm's string.
    ///
    /// Differences from timm, all stricter or a superset: timm silently ignores sections
    /// without a digit (here an error); `t<name>` transform sets and weighted choice are not
    /// supported (error); `m` and `mmax` also accept decimals (timm: integers only).
    pub fn parse_timm(s: &str) -> Result<Self, RandAugmentError> {
        let mut parts = s.split('-');
        if parts.next() != Some("rand") {
            return Err(RandAugmentError::NotRand {
                input: s.to_string(),
            });
        }
        let bad = |section: &str, reason: String| RandAugmentError::BadSection {
            input: s.to_string(),
            section: section.to_string(),
            reason,
        };
        let mut cfg = Self {
            num_ops: 2,
            magnitude: 10.0,
            magnitude_std: 0.0,
            magnitude_max: 10.0,
            prob: 0.5,
            increasing: false,
            ..Self::default()
        };
        let (mut seen_mstd, mut seen_mmax) = (false, false);
        for section in parts {
            if section.starts_with('t') {
                return Err(bad(
                    section,
                    "transform-set selection (`t<name>`) is not supported; deit-pipe has the standard and the increasing (`inc1`) sets".into(),
                ));
            }
            let Some(split) = section.find(|c: char| c.is_ascii_digit()) else {
                return Err(bad(
                    section,
                    "expected <key><number>, e.g. m9, n2, mstd0.5, inc1".into(),
                ));
            };
            let (key, val) = section.split_at(split);
            let float = |what: &str| -> Result<f32, RandAugmentError> {
                val.parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad(section, format!("{what} {val:?} is not a number")))
            };
            let int = |what: &str| -> Result<u64, RandAugmentError> {
                val.parse::<u64>().map_err(|_| {
                    bad(
                        section,
                        format!("{what} {val:?} is not a non-negative integer"),
                    )
                })
            };
            match key {
                "m" => cfg.magnitude = float("magnitude")?,
                "n" => {
                    cfg.num_ops = usize::try_from(int("op count")?)
                        .map_err(|_| bad(section, "op count too large".into()))?
                }
                "p" => cfg.prob = float("probability")?,
                "mstd" if !seen_mstd => {
                    seen_mstd = true;
                    cfg.magnitude_std = float("magnitude std")?;
                }
                "mstd" => {
                    float("magnitude std")?;
                }
                "mmax" if !seen_mmax => {
                    seen_mmax = true;
                    let v = float("magnitude max")?;
                    // timm: `magnitude_max or 10`, so mmax0 means the default.
                    cfg.magnitude_max = if v == 0.0 { 10.0 } else { v };
                }
                "mmax" => {
                    float("magnitude max")?;
                }
                "inc" => cfg.increasing = int("inc flag")? != 0,
                "w" => {
                    return Err(bad(section, "weighted op choice is not supported".into()));
                }
                _ => {
                    return Err(bad(
                        section,
                        format!("unknown key {key:?} (known: m, n, p, mstd, mmax, inc)"),
                    ))
                }
            }
        }
        cfg.validate().map_err(|e| bad(s, e.to_string()))?;
        Ok(cfg)
    }

    /// The timm string of this config; [`Self::parse_timm`] reads it back to an equal
    /// config (except `fill`, which timm strings do not carry). Sections equal to timm's
    /// defaults are left out, so the DeiT default gives `rand-m9-mstd0.5-inc1`. A
    /// non-integer magnitude is written as a decimal, which timm itself would reject.
    pub fn to_timm_string(&self) -> String {
        let mut s = format!("rand-m{}", self.magnitude);
        if self.num_ops != 2 {
            s += &format!("-n{}", self.num_ops);
        }
        if self.magnitude_std != 0.0 {
            if self.magnitude_std.is_finite() {
                s += &format!("-mstd{}", self.magnitude_std);
            } else {
                s += "-mstd101";
            }
        }
        if self.magnitude_max != 10.0 {
            s += &format!("-mmax{}", self.magnitude_max);
        }
        if self.prob != 0.5 {
            s += &format!("-p{}", self.prob);
        }
        if self.increasing {
            s += "-inc1";
        }
        s
    }

    /// Checks every field's domain: finite magnitude >= 0, magnitude std >= 0 (infinity
    /// allowed: uniform sampling), finite magnitude max > 0, prob in [0, 1], at most
    /// [`MAX_NUM_OPS`] ops. [`Self::apply`] never panics on an invalid config (it clamps),
    /// but configs from users should pass through here.
    pub fn validate(&self) -> Result<(), RandAugmentError> {
        let bad = |field, value: String, reason| {
            Err(RandAugmentError::BadValue {
                field,
                value,
                reason,
            })
        };
        if !(self.magnitude.is_finite() && self.magnitude >= 0.0) {
            return bad(
                "magnitude",
                self.magnitude.to_string(),
                "must be finite and >= 0",
            );
        }
        if self.magnitude_std.is_nan() || self.magnitude_std < 0.0 {
            return bad(
                "magnitude_std",
                self.magnitude_std.to_string(),
                "must be >= 0",
            );
        }
        if !(self.magnitude_max.is_finite() && self.magnitude_max > 0.0) {
            return bad(
                "magnitude_max",
                self.magnitude_max.to_string(),
                "must be finite and > 0",
            );
        }
        if !(0.0..=1.0).contains(&self.prob) {
            return bad("prob", self.prob.to_string(), "must be in [0, 1]");
        }
        if self.num_ops > MAX_NUM_OPS {
            return bad("num_ops", self.num_ops.to_string(), "must be <= 64");
        }
        Ok(())
    }

    /// Whether magnitudes are drawn uniformly from `[0, magnitude)` (timm's `mstd` > 100).
    pub fn uniform_magnitude(&self) -> bool {
        self.magnitude_std > UNIFORM_MSTD_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deit_default_round_trips() {
        let d = RandAugmentConfig::default();
        assert_eq!(d.to_timm_string(), "rand-m9-mstd0.5-inc1");
        assert_eq!(
            RandAugmentConfig::parse_timm("rand-m9-mstd0.5-inc1").unwrap(),
            d
        );
    }

    #[test]
    fn timm_defaults_and_precedence() {
        let c = RandAugmentConfig::parse_timm("rand-m7-n3-mstd0.5").unwrap();
        assert_eq!(
            (c.magnitude, c.num_ops, c.magnitude_std, c.increasing),
            (7.0, 3, 0.5, false)
        );
        let c = RandAugmentConfig::parse_timm("rand").unwrap();
        assert_eq!(
            (c.magnitude, c.num_ops, c.magnitude_std, c.prob),
            (10.0, 2, 0.0, 0.5)
        );
        // first mstd wins (timm uses hparams.setdefault), last m wins
        let c = RandAugmentConfig::parse_timm("rand-mstd1-m3-mstd2-m4-inc0").unwrap();
        assert_eq!(
            (c.magnitude_std, c.magnitude, c.increasing),
            (1.0, 4.0, false)
        );
        let c = RandAugmentConfig::parse_timm("rand-m9-mstd101-inc1").unwrap();
        assert!(c.uniform_magnitude());
        assert_eq!(c.to_timm_string(), "rand-m9-mstd101-inc1");
        let c = RandAugmentConfig::parse_timm("rand-m9-mmax0").unwrap();
        assert_eq!(c.magnitude_max, 10.0);
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = RandAugmentConfig::parse_timm("rand-m9-q3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"q3\"") && e.contains("unknown key"), "{e}");
        let e = RandAugmentConfig::parse_timm("rand-mx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"mx\""), "{e}");
        let e = RandAugmentConfig::parse_timm("rand-m9x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"m9x\"") && e.contains("not a number"), "{e}");
        let e = RandAugmentConfig::parse_timm("rand-n2.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"n2.5\""), "{e}");
        let e = RandAugmentConfig::parse_timm("augmix-m9")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with \"rand\""), "{e}");
        let e = RandAugmentConfig::parse_timm("rand-p2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prob"), "{e}");
        assert!(RandAugmentConfig::parse_timm("rand-tweights").is_err());
        assert!(RandAugmentConfig::parse_timm("rand-w0").is_err());
    }

    #[test]
    fn round_trip_non_defaults() {
        let c = RandAugmentConfig {
            num_ops: 3,
            magnitude: 9.5,
            magnitude_std: f32::INFINITY,
            magnitude_max: 15.0,
            prob: 0.25,
            increasing: true,
            fill: [124, 116, 104],
        };
        let s = c.to_timm_string();
        assert_eq!(s, "rand-m9.5-n3-mstd101-mmax15-p0.25-inc1");
        let back = RandAugmentConfig::parse_timm(&s).unwrap();
        assert!(back.uniform_magnitude());
        assert_eq!(
            RandAugmentConfig {
                magnitude_std: 101.0,
                ..c
            },
            back
        );
    }

    #[test]
    fn serde_defaults() {
        let c: RandAugmentConfig = serde_json::from_str("{\"num_ops\": 3}").unwrap();
        assert_eq!(
            c,
            RandAugmentConfig {
                num_ops: 3,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<RandAugmentConfig>("{\"nops\": 3}").is_err());
    }
}
