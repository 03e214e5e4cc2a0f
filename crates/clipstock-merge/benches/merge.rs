//! Streaming Model Stock merge throughput on ViT-B/32-sized checkpoints (a benchmark, not a
//! test): writes an anchor and three fine-tuned f32 safetensors files of ~88M parameters each,
//! times `merge_files` with each read mode in a fresh child process (so its peak RSS is the
//! merge's own), and measures the machine's memcpy bandwidth for comparison.
//!
//!     cargo bench -p clipstock-merge --bench merge                  # temp dir, removed after
//!     cargo bench -p clipstock-merge --bench merge -- --dir D --keep
//!     python scripts/bench_merge_numpy.py D                        # the numpy comparison
//!
//! Options: `--dir D` (where the inputs go; default a temp dir), `--keep` (leave them),
//! `--out-dir O` (where outputs go; default /dev/shm if it exists, so fsync costs nothing and
//! the number is the merge's, plus one run with the output beside the inputs),
//! `--params N` (approximate parameter count, default 88M).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clipstock_merge::{
    MergeOptions, ReadMode, SafetensorsFile, Source, analyze_files, merge_files,
};
use clipstock_tensors::rng::SplitMix64;

const BLOCKS: usize = 12;
const WIDTH: usize = 768;

/// ViT-B/32's image tower: the tensor list a real merge sees (few big matrices, many small
/// vectors), scaled down by whole blocks when fewer parameters are asked for.
fn shapes(params: usize) -> Vec<(String, Vec<usize>)> {
    let d = WIDTH;
    let mut s: Vec<(String, Vec<usize>)> = vec![
        ("visual.class_embedding".into(), vec![d]),
        ("visual.positional_embedding".into(), vec![50, d]),
        ("visual.proj".into(), vec![d, 512]),
        ("visual.conv1.weight".into(), vec![d, 3, 32, 32]),
        ("visual.ln_pre.weight".into(), vec![d]),
        ("visual.ln_pre.bias".into(), vec![d]),
    ];
    let per_block = 12 * d * d + 13 * d;
    let rest = params.saturating_sub(3_000_000) as f64;
    let blocks = ((rest / per_block as f64).round() as usize).clamp(1, BLOCKS);
    for i in 0..blocks {
        let p = format!("visual.transformer.resblocks.{i}.");
        for (n, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.in_proj_weight", vec![3 * d, d]),
            ("attn.in_proj_bias", vec![3 * d]),
            ("attn.out_proj.weight", vec![d, d]),
            ("attn.out_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![4 * d, d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![d, 4 * d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            s.push((format!("{p}{n}"), shape));
        }
    }
    s.push(("visual.ln_post.weight".into(), vec![d]));
    s.push(("visual.ln_post.bias".into(), vec![d]));
    s.push(("classification_head.weight".into(), vec![1000, 512]));
    s.push(("classification_head.bias".into(), vec![1000]));
    s
}

/// splitmix64 → uniform f32 in [−0.5, 0.5): fast and reproducible.
fn fill(seed: u64, out: &mut [f32], scale: f32) {
    let mut rng = SplitMix64(seed);
    for v in out {
        *v = (rng.unit() - 0.5) * scale;
    }
}

/// Writes w0 (`model` = 0) or fine-tuned model `model` (= w0 + shared + own noise).
fn write_model(path: &Path, shapes: &[(String, Vec<usize>)], model: u64) {
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(shapes.len());
    for (ti, (_, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut w = vec![0f32; n];
        fill(ti as u64 * 1000, &mut w, 0.1);
        if model > 0 {
            let mut shared = vec![0f32; n];
            let mut own = vec![0f32; n];
            fill(ti as u64 * 1000 + 1, &mut shared, 1e-3);
            fill(ti as u64 * 1000 + 1 + model, &mut own, 1e-3);
            for ((a, s), o) in w.iter_mut().zip(&shared).zip(&own) {
                *a += s + o;
            }
        }
        bufs.push(w.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&bufs)
        .map(|((name, shape), b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .unwrap_or_else(|e| panic!("view {name}: {e}"));
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A `/proc/self/status` field in MiB (Linux only; NaN elsewhere).
fn status_mib(field: &str) -> f64 {
    let parse = || -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    parse().unwrap_or(f64::NAN)
}

/// What the OS charges for producing the output alone: writing `bytes` into a new file in
/// `dir` (4 MiB writes, fsync), as the merge's writer does.
fn write_floor_secs(dir: &Path, bytes: usize) -> f64 {
    use std::io::Write;
    let path = dir.join("clipstock-bench-write-floor.bin");
    let buf = vec![7u8; 4 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create: {e}"));
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write: {e}"));
        left -= n;
    }
    f.sync_all().unwrap_or_else(|e| panic!("fsync: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    secs
}

/// memcpy bandwidth: best of several copies of a 512 MiB buffer (bytes copied per second).
fn memcpy_gbps() -> f64 {
    let n = 512 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in first
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    n as f64 / best / 1e9
}

fn paths(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    (
        dir.join("w0.safetensors"),
        (1..=3)
            .map(|i| dir.join(format!("model{i}.safetensors")))
            .collect(),
    )
}

/// Child: one merge, then report `seconds peak_rss_mib`.
fn child(mode: &str, dir: &Path, out: &Path, analyze_only: bool) {
    let (w0, models) = paths(dir);
    let opts = MergeOptions {
        read_mode: match mode {
            "read" => ReadMode::Read,
            "mmap" => ReadMode::Mmap,
            _ => ReadMode::Auto,
        },
        ..MergeOptions::default()
    };
    let t = Instant::now();
    let report = if analyze_only {
        analyze_files(Some(&w0), &models, &opts)
    } else {
        merge_files(Some(&w0), &models, out, &opts)
    }
    .unwrap_or_else(|e| panic!("merge failed: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(out);
    println!(
        "RESULT {secs} {} {}",
        status_mib("VmHWM:"),
        report.summary.params
    );
}

fn run_child(mode: &str, dir: &Path, out: &Path, analyze_only: bool) -> (f64, f64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--child").arg(mode).arg(dir).arg(out);
    if analyze_only {
        cmd.arg("--analyze");
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("spawn child: {e}"));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("child failed: {}", String::from_utf8_lossy(&o.stderr)));
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    (f[0], f[1])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(
            &args[2],
            Path::new(&args[3]),
            Path::new(&args[4]),
            args.get(5).map(String::as_str) == Some("--analyze"),
        );
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let keep = args.iter().any(|a| a == "--keep");
    let params: usize = arg("--params")
        .and_then(|p| p.parse().ok())
        .unwrap_or(88_000_000);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = arg("--dir").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let shm = Path::new("/dev/shm");
    let out_dir = arg("--out-dir").map(PathBuf::from).unwrap_or_else(|| {
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            dir.clone()
        }
    });

    let shapes = shapes(params);
    let n_params: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let file_bytes = (n_params * 4) as f64;
    let (w0, models) = paths(&dir);
    let t = Instant::now();
    for (i, p) in std::iter::once(&w0).chain(&models).enumerate() {
        // Reuse inputs from an earlier `--keep` run only if they have the requested size.
        let reusable = SafetensorsFile::open(p, ReadMode::Read)
            .is_ok_and(|f| f.tensors().iter().map(|t| t.numel()).sum::<usize>() == n_params);
        if !reusable {
            write_model(p, &shapes, i as u64);
        }
    }
    println!(
        "inputs: 4 x {} tensors, {:.1}M params, {:.0} MB each, in {} (ready in {:.1} s)",
        shapes.len(),
        n_params as f64 / 1e6,
        file_bytes / 1e6,
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cores} cores, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let copy = memcpy_gbps();
    println!(
        "memcpy: {copy:.2} GB/s copied ({:.2} GB/s read+written)",
        2.0 * copy
    );
    // Logical bytes a merge must move: read N + 1 inputs once, write one output.
    let moved = 5.0 * file_bytes;
    println!(
        "merge (Model Stock, N = 3): {:.2} GB moved (4 inputs read + 1 output written)",
        moved / 1e9
    );
    for (what, d) in [("tmpfs", &out_dir), ("input disk", &dir)] {
        let secs = write_floor_secs(d, n_params * 4);
        println!(
            "write floor, one output-sized file on {what}: {secs:.3} s ({:.2} GB/s)",
            file_bytes / secs / 1e9
        );
    }
    println!(
        "{:<36} {:>8} {:>9} {:>12} {:>13}",
        "case", "wall s", "GB/s", "% of memcpy", "peak RSS"
    );
    let shm_out = out_dir.join("clipstock-bench-merged.safetensors");
    let disk_out = dir.join("clipstock-bench-merged.safetensors");
    let cases: [(&str, &str, &Path, bool); 6] = [
        ("analyze only (mmap)", "mmap", &shm_out, true),
        ("merge, mmap, out on tmpfs", "mmap", &shm_out, false),
        ("merge, pread, out on tmpfs", "read", &shm_out, false),
        ("merge, mmap, out on input disk", "mmap", &disk_out, false),
        ("merge, pread, out on input disk", "read", &disk_out, false),
        ("merge, mmap, out on tmpfs (again)", "mmap", &shm_out, false),
    ];
    for (name, mode, out, analyze) in cases {
        let (secs, rss) = run_child(mode, &dir, out, analyze);
        let bytes = if analyze { 4.0 * file_bytes } else { moved };
        let gbps = bytes / secs / 1e9;
        println!(
            "{name:<36} {secs:>8.3} {gbps:>9.2} {:>11.0}% {:>9.0} MiB",
            100.0 * gbps / copy,
            rss
        );
    }
    println!(
        "GB/s = logical bytes read + written / wall time, compared with memcpy's bytes copied/s.\n\
         peak RSS = VmHWM of the merging process: with pread it is the merge's working memory;\n\
         with mmap it also counts the mapped input pages (page cache: shared, reclaimable)."
    );
    if keep {
        let _ = tmp.keep();
        println!("inputs kept in {}", dir.display());
    }
}
