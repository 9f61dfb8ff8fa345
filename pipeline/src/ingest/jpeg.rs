//! JPEG records through libjpeg-turbo (the system's libjpeg 6.2 API, linked statically):
//! decoding of a rectangle of the image (`csrc/jpeg_region.c`). All of
//! the crate's `unsafe` FFI lives in this module.
//!
//! Pixels are those of Pillow (libjpeg-turbo, ISLOW IDCT, fancy upsampling), and a
//! region's pixels equal the same rectangle of a full decode, byte for byte.

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ulong, CStr};

use crate::transforms::crop::CropRect;

const JR_OK: c_int = 0;
const JR_UNSUPPORTED: c_int = 2;
const JR_BAD_ARGS: c_int = 3;
/// Room for libjpeg's messages (JMSG_LENGTH_MAX is 200).
const MSG_CAP: usize = 256;

extern "C" {
    fn jr_decode_region(
        data: *const c_uchar,
        len: c_ulong,
        exp_w: c_uint,
        exp_h: c_uint,
        x: c_uint,
        y: c_uint,
        w: c_uint,
        h: c_uint,
        out: *mut c_uchar,
        out_cap: c_ulong,
        wide: c_int,
        out_x: *mut c_uint,
        out_w: *mut c_uint,
        img_w: *mut c_uint,
        img_h: *mut c_uint,
        msg: *mut c_char,
        msg_cap: usize,
    ) -> c_int;
    fn jr_add_restart_markers(
        data: *const c_uchar,
        len: c_ulong,
        target_mcus: c_uint,
        out: *mut *mut c_uchar,
        out_len: *mut c_ulong,
        interval: *mut c_uint,
        msg: *mut c_char,
        msg_cap: usize,
    ) -> c_int;
    fn jr_free(p: *mut c_uchar);
}

fn message(buf: &[u8; MSG_CAP]) -> String {
    CStr::from_bytes_until_nul(buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn c_len(bytes: &[u8]) -> Result<c_ulong, String> {
    c_ulong::try_from(bytes.len()).map_err(|_| "JPEG too large".to_string())
}

/// Decodes the rectangle `rect` of a JPEG whose size must be `width` x `height` to packed
/// RGB (`rect.width * rect.height * 3` bytes). CMYK and YCCK files convert to RGB as
/// Pillow's `convert("RGB")` does. `Ok(None)`: a colour space this decoder leaves to the
/// `image` crate (none of grayscale, YCbCr, RGB, CMYK, YCCK). `Err` holds a reason
/// (libjpeg's message, a size that differs from the expected one, or a rectangle outside
/// the image).
pub fn decode_region(
    bytes: &[u8],
    size: (u32, u32),
    rect: CropRect,
) -> Result<Option<Vec<u8>>, String> {
    Ok(decode(bytes, size, rect, false)?.map(|(px, _)| px))
}

/// [`decode_region`] that may return more columns than `rect`: the band libjpeg decodes
/// anyway (iMCU-aligned, with the upsampler's margin), packed at its own width, which saves
/// copying the wanted columns out. Returns the pixels and the band they cover (the rows of
/// `rect`, columns containing `rect`'s). Over `rect` the pixels are exactly the full
/// decode's; the band's extra columns are what the decoder gave, and its outermost column
/// on a side where the image was cropped can differ from a full decode (the upsampler
/// replicates the edge there), so readers must stay inside `rect`.
pub fn decode_region_wide(
    bytes: &[u8],
    size: (u32, u32),
    rect: CropRect,
) -> Result<Option<(Vec<u8>, CropRect)>, String> {
    decode(bytes, size, rect, true)
}

/// Columns a widened band can add: the upsampler's margin (at most 4 pixels) each side
/// and the left edge rounded down to an iMCU (at most 31 pixels).
const WIDE_SLACK: usize = 64;

fn decode(
    bytes: &[u8],
    (width, height): (u32, u32),
    rect: CropRect,
    wide: bool,
) -> Result<Option<(Vec<u8>, CropRect)>, String> {
    let CropRect {
        left: x,
        top: y,
        width: w,
        height: h,
    } = rect;
    if !rect.fits_in(width, height) {
        return Err(format!(
            "region {w}x{h} at ({x}, {y}) is not inside the {width}x{height} image"
        ));
    }
    let cols = w as usize + if wide { WIDE_SLACK } else { 0 };
    let cap = cols
        .checked_mul(h as usize)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(|| format!("region {w}x{h} too large"))?;
    let mut out: Vec<u8> = Vec::with_capacity(cap);
    let (mut iw, mut ih) = (0 as c_uint, 0 as c_uint);
    let (mut ox, mut ow) = (0 as c_uint, 0 as c_uint);
    let mut msg = [0u8; MSG_CAP];
    let len = c_len(bytes)?;
    // SAFETY: `bytes` is a live slice of `len` bytes that libjpeg only reads. `out` has
    // `cap` bytes of capacity; the C side checks cap >= w * h * 3 and writes h rows packed
    // at the width it reports in `ow` (w, or a wider band only when ow * h * 3 <= cap),
    // after checking the header's size equals (width, height) and the rectangle lies
    // inside it (checked above too). The out parameters are locals of type c_uint; `msg`
    // has MSG_CAP writable bytes, written NUL-terminated within `msg_cap`. Errors return
    // through longjmp inside C.
    let rc = unsafe {
        jr_decode_region(
            bytes.as_ptr(),
            len,
            width,
            height,
            x,
            y,
            w,
            h,
            out.as_mut_ptr(),
            cap as c_ulong,
            c_int::from(wide),
            &mut ox,
            &mut ow,
            &mut iw,
            &mut ih,
            msg.as_mut_ptr().cast::<c_char>(),
            MSG_CAP,
        )
    };
    match rc {
        JR_OK => {
            let n = ow as usize * h as usize * 3;
            if n > cap || ox > x || ox + ow < x + w {
                return Err(format!("decoder reported columns {ox}+{ow} for {x}+{w}"));
            }
            // SAFETY: on JR_OK the C side wrote all h rows of ow * 3 bytes, packed, at the
            // start of `out` (n <= cap checked just above).
            unsafe { out.set_len(n) };
            let got = CropRect {
                left: ox,
                width: ow,
                ..rect
            };
            Ok(Some((out, got)))
        }
        JR_UNSUPPORTED => Ok(None),
        JR_BAD_ARGS if (iw, ih) != (width, height) => Err(format!(
            "JPEG header says {iw}x{ih}, the index says {width}x{height}"
        )),
        _ => Err(message(&msg)),
    }
}

/// Re-writes a JPEG losslessly (same DCT coefficients, so the same pixels from any
/// decoder) as a sequential JPEG with the standard Huffman tables and a restart marker every
/// R MCUs, R the largest divisor of the MCUs per row that is at most `target_mcus`, so its
/// restart intervals tile every MCU row ([`super::jpeg_tiles`]). APPn/COM segments other
/// than the colour-space marker are dropped. Returns the bytes and R.
pub fn add_restart_markers(bytes: &[u8], target_mcus: u32) -> Result<(Vec<u8>, u32), String> {
    let len = c_len(bytes)?;
    let mut out: *mut c_uchar = std::ptr::null_mut();
    let mut out_len: c_ulong = 0;
    let mut interval: c_uint = 0;
    let mut msg = [0u8; MSG_CAP];
    // SAFETY: `bytes` is a live slice of `len` bytes that libjpeg only reads; the out
    // pointers are locals of the declared C types; `msg` has MSG_CAP writable bytes. On
    // success `out` is a malloc'd buffer of `out_len` bytes that we copy and then free
    // with the C side's `free` (jr_free); on failure it is left null.
    let rc = unsafe {
        jr_add_restart_markers(
            bytes.as_ptr(),
            len,
            target_mcus,
            &mut out,
            &mut out_len,
            &mut interval,
            msg.as_mut_ptr().cast::<c_char>(),
            MSG_CAP,
        )
    };
    if rc != JR_OK || out.is_null() {
        return Err(message(&msg));
    }
    // SAFETY: on JR_OK `out` points to `out_len` initialized bytes owned by us.
    let v = unsafe { std::slice::from_raw_parts(out, out_len as usize) }.to_vec();
    // SAFETY: `out` came from jr_add_restart_markers and is freed once, here.
    unsafe { jr_free(out) };
    Ok((v, interval))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Noisy pixels with hard colour edges: any difference in upsampling or IDCT shows.
    fn pixels(w: u32, h: u32, channels: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v = Vec::with_capacity(w as usize * h as usize * channels);
        for y in 0..h {
            for x in 0..w {
                for c in 0..channels {
                    let base = if (x / 5 + y / 3 + c as u32).is_multiple_of(2) {
                        40
                    } else {
                        200
                    };
                    v.push((base + rng.random_range(0..50u32) + x % 7) as u8);
                }
            }
        }
        v
    }

    /// (name, bytes, width, height) of JPEGs of every layout the decoder meets.
    pub(crate) fn variants(w: u32, h: u32, seed: u64) -> Vec<(String, Vec<u8>)> {
        let rgb = pixels(w, h, 3, seed);
        let gray = pixels(w, h, 1, seed + 1);
        let mut out = Vec::new();
        let kinds: [(&str, SamplingFactor, bool, u16, bool); 8] = [
            ("4:2:0", SamplingFactor::R_4_2_0, false, 0, false),
            ("4:2:2", SamplingFactor::R_4_2_2, false, 0, false),
            ("4:4:4", SamplingFactor::R_4_4_4, false, 0, false),
            ("4:4:0", SamplingFactor::R_4_4_0, false, 0, false),
            ("4:2:0 progressive", SamplingFactor::R_4_2_0, true, 0, false),
            ("4:2:0 restart 3", SamplingFactor::R_4_2_0, false, 3, false),
            ("gray", SamplingFactor::R_4_4_4, false, 0, true),
            ("gray progressive", SamplingFactor::R_4_4_4, true, 0, true),
        ];
        for (name, sampling, progressive, restart, is_gray) in kinds {
            let mut bytes = Vec::new();
            let mut enc = Encoder::new(&mut bytes, 90);
            enc.set_sampling_factor(sampling);
            enc.set_progressive(progressive);
            if restart > 0 {
                enc.set_restart_interval(restart);
            }
            let (data, ct) = if is_gray {
                (&gray, ColorType::Luma)
            } else {
                (&rgb, ColorType::Rgb)
            };
            enc.encode(data, w as u16, h as u16, ct).unwrap();
            out.push((format!("{name} {w}x{h}"), bytes));
        }
        out
    }

    fn rr((left, top, width, height): (u32, u32, u32, u32)) -> CropRect {
        CropRect {
            left,
            top,
            width,
            height,
        }
    }

    /// The packed RGB rectangle `(x, y, cw, ch)` of a `w`-wide packed RGB image.
    pub(crate) fn crop(full: &[u8], w: u32, (x, y, cw, ch): (u32, u32, u32, u32)) -> Vec<u8> {
        let mut v = Vec::with_capacity((cw * ch * 3) as usize);
        for row in y..y + ch {
            let at = ((row * w + x) * 3) as usize;
            v.extend_from_slice(&full[at..at + (cw * 3) as usize]);
        }
        v
    }

    fn rects(w: u32, h: u32, rng: &mut ChaCha8Rng) -> Vec<(u32, u32, u32, u32)> {
        let mut r = vec![
            (0, 0, w, h),
            (0, 0, 1, 1),
            (w - 1, h - 1, 1, 1),
            (w - 1, 0, 1, h),
            (0, h - 1, w, 1),
            (w / 2, h / 2, w - w / 2, h - h / 2),
        ];
        if w > 2 && h > 2 {
            r.push((1, 1, w - 2, h - 2));
        }
        for _ in 0..120 {
            let cw = rng.random_range(1..=w);
            let ch = rng.random_range(1..=h);
            r.push((
                rng.random_range(0..=w - cw),
                rng.random_range(0..=h - ch),
                cw,
                ch,
            ));
        }
        r
    }

    #[test]
    fn region_decode_equals_full_decode_cropped() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut checked = 0;
        for (w, h) in [
            (37, 23),
            (200, 150),
            (97, 61),
            (16, 16),
            (33, 17),
            (1, 1),
            (130, 257),
        ] {
            for (name, bytes) in variants(w, h, u64::from(w * 1000 + h)) {
                let full = decode_region(&bytes, (w, h), rr((0, 0, w, h)))
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                    .unwrap();
                for rect in rects(w, h, &mut rng) {
                    let got = decode_region(&bytes, (w, h), rr(rect)).unwrap().unwrap();
                    assert!(
                        got == crop(&full, w, rect),
                        "{name}: region {rect:?} differs from the full decode"
                    );
                    // The widened band: a rectangle holding `rect`'s rows and columns,
                    // inside the image, with the full decode's pixels over `rect`.
                    let (px, band) = decode_region_wide(&bytes, (w, h), rr(rect))
                        .unwrap()
                        .unwrap();
                    let r = rr(rect);
                    assert_eq!((band.top, band.height), (r.top, r.height), "{name}");
                    assert!(band.left <= r.left && band.left + band.width >= r.left + r.width);
                    assert!(band.fits_in(w, h), "{name}: {band:?}");
                    let inner = (r.left - band.left, 0, r.width, r.height);
                    assert!(
                        crop(&px, band.width, inner) == crop(&full, w, rect),
                        "{name}: {rect:?} in band {band:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 6000);
    }

    #[test]
    fn full_decode_is_close_to_the_image_crate() {
        for (name, bytes) in variants(97, 61, 3) {
            let gray = name.starts_with("gray");
            let ours = decode_region(&bytes, (97, 61), rr((0, 0, 97, 61)))
                .unwrap()
                .unwrap();
            let zune = image::load_from_memory(&bytes).unwrap().into_rgb8();
            let diff: u64 = ours
                .iter()
                .zip(zune.as_raw())
                .map(|(&a, &b)| u64::from(a.abs_diff(b)))
                .sum();
            let mean = diff as f64 / ours.len() as f64;
            assert!(mean < 1.5, "{name}: mean |libjpeg - zune| = {mean}");
            if gray {
                assert!(ours.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
            }
        }
    }

    #[test]
    fn cmyk_and_ycck_decode_and_bad_input_is_an_error() {
        // Pillow's pixels for CMYK are checked by the fixtures (tests/jpeg_reference.rs);
        // here: both 4-component kinds decode, and regions equal the full decode cropped.
        for ct in [ColorType::Cmyk, ColorType::CmykAsYcck] {
            let cmyk = pixels(20, 10, 4, 1);
            let mut bytes = Vec::new();
            Encoder::new(&mut bytes, 90)
                .encode(&cmyk, 20, 10, ct)
                .unwrap();
            let full = decode_region(&bytes, (20, 10), rr((0, 0, 20, 10)))
                .unwrap()
                .expect("4-component JPEGs decode here");
            let part = decode_region(&bytes, (20, 10), rr((3, 2, 9, 7)))
                .unwrap()
                .unwrap();
            let want: Vec<u8> = (2..9)
                .flat_map(|y| full[(y * 20 + 3) * 3..(y * 20 + 12) * 3].to_vec())
                .collect();
            assert_eq!(part, want, "{ct:?}");
        }

        let (_, good) = variants(40, 30, 1).swap_remove(0);
        let e = decode_region(&good, (41, 30), rr((0, 0, 40, 30))).unwrap_err();
        assert!(e.contains("header says 40x30, the index says 41x30"), "{e}");
        let e = decode_region(&good, (40, 30), rr((30, 0, 11, 30))).unwrap_err();
        assert!(e.contains("not inside"), "{e}");
        let e = decode_region(
            b"\xFF\xD8\xFF\xE0 not a jpeg at all",
            (40, 30),
            rr((0, 0, 1, 1)),
        )
        .unwrap_err();
        assert!(!e.is_empty());
        let e = decode_region(b"hello", (40, 30), rr((0, 0, 1, 1))).unwrap_err();
        assert!(e.contains("Not a JPEG"), "{e}");
    }
}
