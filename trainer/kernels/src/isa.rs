//! Which instruction set the kernels run on this host, chosen once at run time.
//!
//! One binary serves every x86-64 host: the build targets baseline x86-64 and each
//! kernel family carries variants compiled for wider instruction sets
//! (`#[target_feature]`), picked here by what the CPU reports (`is_x86_feature_detected!`,
//! which also checks that the OS saves the wider registers). The levels, lowest first:
//!
//! | level | needs | GEMM kernel | element-wise kernels |
//! |---|---|---|---|
//! | `scalar` | any CPU | the `gemm` crate (its own dispatch) | built for baseline x86-64 |
//! | `avx2` | AVX2 + FMA | ours, 6x16 tile, 256-bit | compiled for AVX2 |
//! | `avx512` | AVX-512 F/BW/VL/DQ + FMA | ours, 12x32 tile, 512-bit | compiled for AVX-512 |
//! | `avx512bf16` | `avx512` + AVX512-BF16 | as `avx512`; bf16 products on `vdpbf16ps` | as `avx512` |
//!
//! `DEIT_PIPE_ISA=scalar|avx2|avx512|avx512bf16` caps the level (a lower path is forced; a level the
//! CPU lacks is never taken), so CI and a user can run and compare every path the machine
//! has. [`host`] names the CPU and its SIMD flags, for benchmark lines, a run's
//! `config.toml` and its metrics, so figures from different hosts are not compared
//! blindly.
//!
//! At `avx512bf16` the products of bf16 mixed precision run on a kernel that packs the
//! operands as bf16 pairs and multiplies them with `vdpbf16ps` (twice the multiply-adds
//! of an f32 FMA per instruction, half the bytes); below it they run on bf16-rounded
//! operands through the f32 kernels (see [`crate::precision`]), exact for the products
//! and as fast as f32. AMX is reported by [`host`] but no kernel takes it yet.

use std::sync::OnceLock;

/// Defines `fn $name(args)` that runs `$body(args)` compiled for AVX-512 or AVX2 when
/// [`crate::isa::active`] says so (the build targets baseline x86-64, so these kernels'
/// vectorized loops would otherwise be 4 floats wide), else as built. `$body` must be
/// `#[inline(always)]`, so each variant gets its own copy. The results are the same bits
/// at every level: Rust never contracts `a * b + c` into an FMA, the reductions have a
/// fixed order (the fused kernels' `lanes8`), and the element-wise maths is the same IEEE
/// operations at any vector width. Exported for the other crates' element-wise loops (the
/// trainer's AdamW step).
#[macro_export]
macro_rules! simd_variant {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::isa::{active, Isa};
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2")]
                unsafe fn variant512($($a: $t),*) {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn variant($($a: $t),*) {
                    $body($($a),*)
                }
                match active() {
                    // SAFETY: the CPU supports AVX-512 F/BW/VL/DQ (`active` never exceeds
                    // what it detected).
                    Isa::Avx512 | Isa::Avx512Bf16 => return unsafe { variant512($($a),*) },
                    // SAFETY: the CPU supports AVX2, as above.
                    Isa::Avx2 => return unsafe { variant($($a),*) },
                    Isa::Scalar => {}
                }
            }
            $body($($a),*)
        }
    };
}

/// The environment variable that caps the instruction-set level.
pub const ISA_ENV: &str = "DEIT_PIPE_ISA";

/// An instruction-set level of the kernels, ordered: a higher level needs everything a
/// lower one does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Baseline x86-64 (or another architecture): no hand-vectorized kernel.
    Scalar,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, VL, DQ with FMA (x86-64-v4).
    Avx512,
    /// [`Isa::Avx512`] plus AVX512-BF16 (`vdpbf16ps`: Intel since Cooper Lake, AMD since
    /// Zen 4).
    Avx512Bf16,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    /// The name used by [`ISA_ENV`] and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    /// The level named `name` (as [`Isa::name`] spells it).
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name.trim())
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The highest level this CPU (and OS) supports.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
                if has!("avx512bf16") {
                    return Isa::Avx512Bf16;
                }
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// The cap [`ISA_ENV`] sets: `Ok(None)` when unset or empty, an error naming the variable
/// and the accepted values when it names no level.
pub fn env_cap() -> Result<Option<Isa>, String> {
    match std::env::var(ISA_ENV) {
        Err(_) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Isa::parse(&v).map(Some).ok_or_else(|| {
            format!(
                "{ISA_ENV}={v:?} names no instruction-set level (use one of: {})",
                Isa::ALL.map(Isa::name).join(", ")
            )
        }),
    }
}

/// The level the kernels run at: [`detected`], capped by [`ISA_ENV`] (an unparsable value
/// caps nothing here; the binary refuses it at start, see [`env_cap`]). Read once.
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let cap = env_cap().ok().flatten().unwrap_or(Isa::Avx512Bf16);
        detected().min(cap)
    })
}

/// The CPU and what the kernels make of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The CPU's brand string (CPUID), e.g. `AMD EPYC 9R14 96-Core Processor`.
    pub cpu: String,
    /// The SIMD features that matter to the kernels and that the CPU reports, in a fixed
    /// order (`avx2 fma avx512f avx512bw avx512vl avx512dq avx512vnni avx512bf16
    /// avx512fp16 amx-tile amx-bf16`).
    pub flags: Vec<&'static str>,
    /// [`detected`].
    pub detected: Isa,
    /// [`active`].
    pub active: Isa,
}

impl Host {
    /// One line: `<cpu> [<flags>] isa <active>` plus `(capped from <detected> by
    /// DEIT_PIPE_ISA)` when capped.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} [{}] isa {}",
            self.cpu,
            self.flags.join(" "),
            self.active
        );
        if self.active != self.detected {
            s.push_str(&format!(" (capped from {} by {ISA_ENV})", self.detected));
        }
        s
    }
}

/// This host's CPU, flags and levels.
pub fn host() -> Host {
    Host {
        cpu: cpu_brand(),
        flags: cpu_flags(),
        detected: detected(),
        active: active(),
    }
}

/// The CPUID brand string, or the architecture's name where there is none.
fn cpu_brand() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let max = __cpuid(0x8000_0000).eax;
        if max >= 0x8000_0004 {
            let mut bytes = Vec::with_capacity(48);
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                let r = __cpuid(leaf);
                for word in [r.eax, r.ebx, r.ecx, r.edx] {
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let brand = text.trim_matches(char::from(0)).trim();
            if !brand.is_empty() {
                return brand.split_whitespace().collect::<Vec<_>>().join(" ");
            }
        }
    }
    format!("unknown {} CPU", std::env::consts::ARCH)
}

/// The kernel-relevant SIMD features the CPU reports.
fn cpu_flags() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let named = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512dq", has!("avx512dq")),
            ("avx512vnni", has!("avx512vnni")),
            ("avx512bf16", has!("avx512bf16")),
            ("avx512fp16", has!("avx512fp16")),
        ];
        flags.extend(named.iter().filter(|(_, on)| *on).map(|(n, _)| *n));
        // AMX: CPUID leaf 7 EDX bits 24 (tiles) and 22 (bf16). Reported, not used: the
        // tiles also need the OS's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf7.edx & (1 << 24) != 0 {
            flags.push("amx-tile");
        }
        if leaf7.edx & (1 << 22) != 0 {
            flags.push("amx-bf16");
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_levels_are_ordered() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse(" avx2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx1024"), None);
        assert!(Isa::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn active_never_exceeds_detected_or_the_cap() {
        assert!(active() <= detected());
        if let Ok(Some(cap)) = env_cap() {
            assert!(active() <= cap);
        }
        let h = host();
        assert_eq!(h.active, active());
        assert!(!h.cpu.is_empty());
        assert!(h.line().contains(&format!("isa {}", active())));
        #[cfg(target_arch = "x86_64")]
        if detected() >= Isa::Avx2 {
            assert!(h.flags.contains(&"avx2") && h.flags.contains(&"fma"));
        }
        if detected() >= Isa::Avx512 {
            assert!(h.flags.contains(&"avx512f"));
        }
        if detected() == Isa::Avx512Bf16 {
            assert!(h.flags.contains(&"avx512bf16"));
        }
    }
}
