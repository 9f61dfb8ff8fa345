//! JPEG records decode to Pillow's pixels: fixtures made by `tools/make_jpeg_fixtures.py`
//! (Pillow 11.3.0, its bundled libjpeg-turbo) hold JPEGs of every chroma layout, CMYK
//! included, and Pillow's own decode of each (`convert("RGB")`). Our full decode and every region of it must equal them
//! byte for byte.

use std::path::Path;

use formats::shard::{Encoding, RecordRef};
use pipeline::ingest::{decode_record, decode_record_region};
use pipeline::transforms::crop::CropRect;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixtures() -> Vec<(String, Vec<u8>, image::RgbImage)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let jpg = std::fs::read(dir.join(format!("{name}.jpg"))).unwrap();
            let png = image::open(dir.join(format!("{name}.png")))
                .unwrap()
                .into_rgb8();
            assert_eq!(
                (u64::from(png.width()), u64::from(png.height())),
                (c["width"].as_u64().unwrap(), c["height"].as_u64().unwrap())
            );
            (name, jpg, png)
        })
        .collect()
}

#[test]
fn jpeg_records_decode_to_pillows_pixels() {
    let cases = fixtures();
    assert_eq!(cases.len(), 8);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (name, jpg, pillow) in cases {
        let (w, h) = pillow.dimensions();
        let rec = RecordRef {
            label: 0,
            orig_width: w,
            orig_height: h,
            width: w,
            height: h,
            encoding: Encoding::Jpeg,
            bytes: &jpg,
        };
        let ours = decode_record(&rec).unwrap();
        assert!(ours == pillow, "{name}: full decode differs from Pillow's");
        for _ in 0..50 {
            let (cw, ch) = (rng.random_range(1..=w), rng.random_range(1..=h));
            let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
            let rect = CropRect {
                left: x,
                top: y,
                width: cw,
                height: ch,
            };
            let want = image::imageops::crop_imm(&pillow, x, y, cw, ch).to_image();
            assert!(
                decode_record_region(&rec, rect).unwrap() == want,
                "{name}: region {rect:?} differs from Pillow's"
            );
        }
    }
}
