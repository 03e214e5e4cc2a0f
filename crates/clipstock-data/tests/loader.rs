//! The batch loader on a generated tree: determinism across worker counts, corrupt files,
//! batching, early drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clipstock_data::classes::{ClassFiles, ClassSpace};
use clipstock_data::fixtures::{FixtureSpec, write_fixture_tree};
use clipstock_data::layouts::{OpenOptions, Sample, SetName, open_eval_set};
use clipstock_data::loader::{Batch, Loader, LoaderOptions, epoch_order};
use clipstock_data::preprocess::{
    DecodeLimits, EvalTransform, TrainTransform, Transform, decode_file, sample_seed,
};
use clipstock_tensors::IoError;

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// ImageNet val of the fixture tree (5 classes × 3 images), plus the corrupt file if asked.
fn samples(with_corrupt: bool) -> (tempfile::TempDir, Arc<[Sample]>) {
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let classes = ok(ClassSpace::load(&ClassFiles::imagenet(&data)));
    let spec = FixtureSpec {
        images_per_class: 3,
        image_size: (37, 29),
        with_corrupt,
        with_empty_folder: false,
    };
    ok(write_fixture_tree(dir.path(), &classes, &spec));
    let set = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &fixture_opts(),
    ));
    (dir, set.samples.into())
}

fn train() -> Transform {
    Transform::Train(TrainTransform {
        size: 16,
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        hflip: true,
        randaugment: None,
    })
}

fn opts(batch_size: usize, workers: usize, prefetch: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        workers,
        prefetch,
        seed: 1234,
        epoch: 2,
        limits: DecodeLimits::default(),
    }
}

/// What a batch carries, owned, so loaders can be compared after their batches are gone.
#[derive(Debug, PartialEq)]
struct Seen {
    images: Vec<u32>,
    labels: Vec<usize>,
    indices: Vec<usize>,
    skipped: Vec<PathBuf>,
}

fn seen(b: &Batch) -> Seen {
    Seen {
        images: b.images.iter().map(|v| v.to_bits()).collect(),
        labels: b.labels.clone(),
        indices: b.sample_indices.clone(),
        skipped: b.skipped.iter().map(|s| s.path.clone()).collect(),
    }
}

fn run(samples: &Arc<[Sample]>, order: Vec<usize>, t: Transform, o: LoaderOptions) -> Vec<Seen> {
    let loader = ok(Loader::new(Arc::clone(samples), order, t, o));
    loader.map(|b| seen(&b)).collect()
}

#[test]
fn identical_output_for_one_and_four_workers() {
    let (_dir, samples) = samples(true);
    let order = epoch_order(samples.len(), 1234, 2);
    let one = run(&samples, order.clone(), train(), opts(4, 1, 1));
    let four = run(&samples, order.clone(), train(), opts(4, 4, 3));
    assert_eq!(one, four);
    // A different epoch augments differently (same order, so only the crops change).
    let mut other = opts(4, 2, 2);
    other.epoch = 3;
    let three = run(&samples, order, train(), other);
    assert_ne!(
        one.iter().map(|s| &s.images).collect::<Vec<_>>(),
        three.iter().map(|s| &s.images).collect::<Vec<_>>()
    );
}

#[test]
fn batches_follow_the_order_and_match_a_direct_transform() {
    let (_dir, samples) = samples(false);
    let n = samples.len();
    assert_eq!(n, 15);
    let order = epoch_order(n, 9, 0);
    let o = opts(4, 2, 2);
    let t = train();
    let loader = ok(Loader::new(
        Arc::clone(&samples),
        order.clone(),
        t.clone(),
        o,
    ));
    assert_eq!(loader.num_batches(), 4);
    assert_eq!(loader.len(), 4);
    let batches: Vec<Batch> = loader.collect();
    let lens: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(lens, [4, 4, 4, 3], "the last batch is short");
    let indices: Vec<usize> = batches
        .iter()
        .flat_map(|b| b.sample_indices.clone())
        .collect();
    assert_eq!(indices, order);
    let per = 3 * 16 * 16;
    for b in &batches {
        assert_eq!(b.size, 16);
        assert_eq!(b.shape(), [b.len(), 3, 16, 16]);
        assert_eq!(b.images.len(), b.len() * per);
        assert!(b.skipped.is_empty());
        for (j, &i) in b.sample_indices.iter().enumerate() {
            assert_eq!(b.labels[j], samples[i].label);
            let img = ok(decode_file(&samples[i].path, &DecodeLimits::default()));
            let mut want = vec![0.0f32; per];
            t.apply(&img, sample_seed(1234, 2, i as u64), &mut want);
            assert_eq!(&b.images[j * per..(j + 1) * per], &want[..], "sample {i}");
        }
    }
}

#[test]
fn a_corrupt_file_is_skipped_and_reported() {
    let (_dir, samples) = samples(true);
    let n = samples.len();
    assert_eq!(n, 16);
    let corrupt: Vec<usize> = (0..n)
        .filter(|&i| samples[i].path.ends_with("zz_corrupt.jpg"))
        .collect();
    assert_eq!(corrupt.len(), 1);
    let t = Transform::Eval(EvalTransform::new(16));
    let loader = ok(Loader::new(
        Arc::clone(&samples),
        (0..n).collect(),
        t,
        opts(3, 2, 1),
    ));
    let batches: Vec<Batch> = loader.collect();
    assert_eq!(batches.len(), 6);
    let delivered: usize = batches.iter().map(Batch::len).sum();
    assert_eq!(delivered, n - 1);
    let skipped: Vec<_> = batches.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].path, samples[corrupt[0]].path);
    assert!(!skipped[0].reason.is_empty());
    // The batch holding it is dense: images and labels agree.
    let b = batches
        .iter()
        .find(|b| !b.skipped.is_empty())
        .map(|b| (b.len(), b.images.len(), b.sample_indices.clone()));
    let (len, images, indices) = b.unwrap_or_default();
    assert_eq!(images, len * 3 * 16 * 16);
    assert!(!indices.contains(&corrupt[0]));

    // A batch of only the corrupt file is delivered, empty, with the skip recorded.
    let loader = ok(Loader::new(
        Arc::clone(&samples),
        vec![corrupt[0]],
        Transform::Eval(EvalTransform::new(16)),
        opts(3, 1, 1),
    ));
    let batches: Vec<Batch> = loader.collect();
    assert_eq!(batches.len(), 1);
    assert!(batches[0].is_empty());
    assert_eq!(batches[0].skipped.len(), 1);
}

#[test]
fn dropping_the_loader_early_stops_the_producer() {
    let (_dir, samples) = samples(false);
    // A long order with one-image batches and a one-batch buffer: the producer is blocked on
    // the full channel when the loader goes away.
    let order: Vec<usize> = (0..400).map(|i| i % samples.len()).collect();
    let start = Instant::now();
    {
        let mut loader = ok(Loader::new(
            Arc::clone(&samples),
            order.clone(),
            train(),
            opts(1, 2, 1),
        ));
        let first = loader.next();
        assert!(first.is_some());
        std::thread::sleep(Duration::from_millis(50));
    }
    {
        // Dropped before anything was consumed.
        let _loader = ok(Loader::new(
            Arc::clone(&samples),
            order,
            train(),
            opts(1, 2, 1),
        ));
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn batches_can_outlive_the_loader_and_their_fields_can_be_moved() {
    let (_dir, samples) = samples(false);
    let loader = ok(Loader::new(
        Arc::clone(&samples),
        (0..samples.len()).collect(),
        train(),
        opts(5, 1, 1),
    ));
    let mut batches: Vec<Batch> = loader.collect();
    let last = batches.pop();
    // Moving the buffer out (as a trainer handing it to a tensor does) is allowed.
    let images = last.map(|b| b.images).unwrap_or_default();
    assert_eq!(images.len(), 5 * 3 * 16 * 16);
    // Recycling after the loader is gone just frees the buffer.
    for b in batches {
        b.recycle();
    }
}

#[test]
fn invalid_options_are_errors() {
    let (_dir, samples) = samples(false);
    let n = samples.len();
    let t = || Transform::Eval(EvalTransform::new(16));
    let e = Loader::new(Arc::clone(&samples), vec![0], t(), opts(0, 1, 1)).err();
    assert!(e.is_some_and(|e| e.to_string().contains("batch size")));
    let e = Loader::new(Arc::clone(&samples), vec![0], t(), opts(1, 1, 0)).err();
    assert!(e.is_some_and(|e| e.to_string().contains("prefetch")));
    let e = Loader::new(Arc::clone(&samples), vec![0, n], t(), opts(1, 1, 1)).err();
    assert!(e.is_some_and(|e| e.to_string().contains(&format!("sample {n}"))));
    // An empty order is a valid, empty pass.
    let loader = ok(Loader::new(
        Arc::clone(&samples),
        Vec::new(),
        t(),
        opts(4, 0, 1),
    ));
    assert_eq!(loader.num_batches(), 0);
    assert_eq!(loader.count(), 0);
}

#[test]
fn image_buffers_are_recycled() {
    let (_dir, samples) = samples(false);
    let order: Vec<usize> = (0..samples.len()).collect();
    let mut loader = ok(Loader::new(
        Arc::clone(&samples),
        order,
        train(),
        opts(1, 1, 1),
    ));
    let first = loader.next().map(|b| {
        let p = b.images.as_ptr() as usize;
        b.recycle();
        p
    });
    // The producer picks the returned buffer up for the next batch it starts; at most two
    // batches are in flight ahead of the consumer.
    let later: Vec<usize> = loader
        .by_ref()
        .take(4)
        .map(|b| b.images.as_ptr() as usize)
        .collect();
    assert!(
        first.is_some_and(|p| later.contains(&p)),
        "{first:?} not in {later:?}"
    );
}

/// Fixture trees are tiny, so the published-size check (on by default) is off for them.
fn fixture_opts() -> OpenOptions {
    OpenOptions {
        expect_published_sizes: false,
        ..OpenOptions::default()
    }
}
