//! Images per second for CLIP's eval preprocessing (decode, resize, centre crop, normalise) of
//! a 500×375 JPEG, on one thread and on all cores. Compare with
//! `scripts/bench_preprocess_pil.py` (PIL + torchvision on the same file).
//!
//! `CARGO_TARGET_DIR=... cargo bench -p clipstock-data --bench preprocess [-- SECONDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use clipstock_data::preprocess::{
    DecodeLimits, EvalTransform, TrainTransform, Transform, decode_bytes, resize_to,
};
use clipstock_data::randaugment::RandAugment;
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;

/// The Kafka photo resized to 500×375 (the typical ImageNet size), JPEG quality 90; written to
/// `target/preprocess_bench_500x375.jpg` so the PIL script can read the same bytes.
fn bench_jpeg() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess");
    let src = std::fs::read(dir.join("franz-kafka.jpg")).expect("read kafka fixture");
    let img = decode_bytes(&src, Path::new("franz-kafka.jpg"), &DecodeLimits::default())
        .expect("decode kafka");
    // Kafka is portrait; ImageNet's usual 500×375 is landscape, so rotate first.
    let img = image::imageops::rotate90(&img);
    let img = resize_to(&img, 500, 375);
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .expect("encode jpeg");
    bytes
}

/// CPU time this thread has run, from Linux's schedstat (ns); the VM is shared, so wall-clock
/// rates alone mostly measure the neighbours.
fn thread_cpu_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// (images per wall second, images per CPU second of this thread)
fn time(budget: Duration, mut f: impl FnMut() -> usize) -> (f64, Option<f64>) {
    f(); // warm-up
    let start = Instant::now();
    let cpu0 = thread_cpu_s();
    let mut images = 0;
    while start.elapsed() < budget {
        images += f();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu0
        .zip(thread_cpu_s())
        .map(|(a, b)| images as f64 / (b - a));
    (images as f64 / wall, cpu)
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);
    let jpeg = bench_jpeg();
    let out_path = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("preprocess_bench_500x375.jpg");
    if let Err(e) = std::fs::write(&out_path, &jpeg) {
        eprintln!("cannot write {}: {e}", out_path.display());
    }
    let path = Path::new("bench.jpg");
    let limits = DecodeLimits::default();
    let eval = Transform::Eval(EvalTransform {
        size: 224,
        border_crop: 0,
    });
    let train = Transform::Train(TrainTransform {
        size: 224,
        scale: (0.9, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip: true,
        randaugment: None,
    });
    let train_ra = Transform::Train(TrainTransform {
        size: 224,
        scale: (0.9, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip: true,
        randaugment: Some(RandAugment::new(2, 9)),
    });
    let decoded = decode_bytes(&jpeg, path, &limits).expect("decode bench jpeg");
    let threads = rayon::current_num_threads();
    println!(
        "input: {} bytes, 500x375 JPEG q90 (copy at {}); {threads} rayon threads; {secs} s per row",
        jpeg.len(),
        out_path.display()
    );
    println!(
        "{:<48} {:>10} {:>10} {:>14}",
        "work", "img/s", "ms/img", "img/CPU-s"
    );
    let row = |name: &str, (ips, cpu): (f64, Option<f64>)| {
        let cpu = cpu.map_or("-".to_string(), |c| format!("{c:.1}"));
        println!("{name:<48} {ips:>10.1} {:>10.3} {cpu:>14}", 1000.0 / ips);
    };

    let mut out = vec![0f32; 3 * 224 * 224];
    row(
        "decode only (1 thread)",
        time(budget, || {
            std::hint::black_box(decode_bytes(&jpeg, path, &limits).expect("decode"));
            1
        }),
    );
    row(
        "resize+crop+normalise only (1 thread)",
        time(budget, || {
            eval.apply(&decoded, 0, &mut out);
            std::hint::black_box(&out);
            1
        }),
    );
    let one = time(budget, || {
        let img = decode_bytes(&jpeg, path, &limits).expect("decode");
        eval.apply(&img, 0, &mut out);
        std::hint::black_box(&out);
        1
    });
    row("eval: decode+resize+crop+normalise (1 thread)", one);
    row(
        "train: decode+RandomResizedCrop+flip (1 thread)",
        time(budget, || {
            let img = decode_bytes(&jpeg, path, &limits).expect("decode");
            train.apply(&img, 42, &mut out);
            std::hint::black_box(&out);
            1
        }),
    );
    let mut seed = 0u64;
    row(
        "train: decode+crop+flip+RandAugment(2, 9) (1 thread)",
        time(budget, || {
            let img = decode_bytes(&jpeg, path, &limits).expect("decode");
            // A new seed each time, so the timing averages over the ops drawn.
            seed += 1;
            train_ra.apply(&img, seed, &mut out);
            std::hint::black_box(&out);
            1
        }),
    );
    let batch = 64;
    let mut batch_out = vec![0f32; batch * 3 * 224 * 224];
    let all = time(budget, || {
        batch_out.par_chunks_mut(3 * 224 * 224).for_each(|o| {
            let img = decode_bytes(&jpeg, path, &limits).expect("decode");
            eval.apply(&img, 0, o);
        });
        std::hint::black_box(&batch_out);
        batch
    });
    row(
        &format!("eval: full pipeline, rayon ({threads} threads)"),
        (all.0, None),
    );
    println!(
        "parallel speed-up (wall): {:.2}x on {threads} threads",
        all.0 / one.0
    );
}
