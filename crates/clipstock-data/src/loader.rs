//! The batch loader: decoding and transforms on a dedicated worker pool, driven by one
//! background producer thread that keeps up to `prefetch` finished batches ready.
//!
//! Output depends only on (samples, order, transform, seed, epoch): each sample's augmentation
//! seed is derived from its index, never from the thread that happens to process it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::DataError;
use crate::layouts::Sample;
use crate::preprocess::{DecodeLimits, Transform, decode_file, sample_seed};
use crate::rng::SplitMix64;

/// An image that could not be read or decoded; the batch goes on without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// A batch of preprocessed images.
///
/// A consumer that copies the images out (into a tensor) can hand the buffer back with
/// [`Batch::recycle`], so the loader fills it again instead of allocating a new one; one that
/// moves `images` away simply lets the loader allocate. (`Batch` deliberately has no `Drop`, so
/// its fields can be moved out.)
#[derive(Debug)]
pub struct Batch {
    /// `[len, 3, size, size]`, row-major, normalised.
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Each image's index into the loader's samples.
    pub sample_indices: Vec<usize>,
    pub size: u32,
    /// Samples of this batch's chunk of the order that were left out. A batch whose every
    /// image was unreadable is empty but still delivered, so nothing is dropped silently.
    pub skipped: Vec<Skipped>,
    recycle: Option<Sender<Vec<f32>>>,
}

impl Batch {
    /// A batch made outside a loader (benchmarks, tests): `images` is `[len, 3, size, size]`.
    pub fn from_parts(images: Vec<f32>, labels: Vec<usize>, size: u32) -> Batch {
        Batch {
            images,
            sample_indices: (0..labels.len()).collect(),
            labels,
            size,
            skipped: Vec::new(),
            recycle: None,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[len, 3, size, size]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.size as usize;
        [self.len(), 3, s, s]
    }

    /// Gives the image buffer back to the loader that produced this batch, for a later batch.
    /// Works after the loader is gone too (the buffer is then freed).
    pub fn recycle(self) {
        if let Some(tx) = self.recycle
            && self.images.capacity() > 0
        {
            let _ = tx.send(self.images);
        }
    }
}

/// How a loader runs.
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Decoding threads; 0 = all cores.
    pub workers: usize,
    /// Finished batches kept ready ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub seed: u64,
    pub epoch: u64,
    pub limits: DecodeLimits,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            workers: 0,
            prefetch: 2,
            seed: 0,
            epoch: 0,
            limits: DecodeLimits::default(),
        }
    }
}

/// A permutation of `0..n` for one epoch: Fisher–Yates driven by SplitMix64 seeded from
/// (seed, epoch). The same arguments always give the same order, on every platform.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let a = SplitMix64(seed).next_u64();
    let b = SplitMix64(epoch ^ 0xD1B5_4A32_D192_ED03).next_u64();
    let mut rng = SplitMix64(a ^ b.rotate_left(17));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below_unbiased(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Iterates over the batches of one pass through `order`.
pub struct Loader {
    rx: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    num_batches: usize,
    delivered: usize,
}

fn invalid(what: &str, reason: impl Into<String>) -> DataError {
    DataError::Invalid {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Why one sample failed, as text (the batch records strings, not errors).
struct Failure(String);

impl From<DataError> for Failure {
    fn from(e: DataError) -> Self {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

struct Producer {
    samples: Arc<[Sample]>,
    order: Vec<usize>,
    transform: Transform,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    limits: DecodeLimits,
    pool: rayon::ThreadPool,
    tx: SyncSender<Batch>,
    recycle_tx: Sender<Vec<f32>>,
    recycle_rx: Receiver<Vec<f32>>,
    stop: Arc<AtomicBool>,
}

impl Producer {
    fn run(self) {
        let size = self.transform.size();
        let per = 3 * size as usize * size as usize;
        for chunk in self.order.chunks(self.batch_size) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let mut images = self.recycle_rx.try_recv().unwrap_or_default();
            // Every element is overwritten by the transform, so a recycled buffer's old
            // contents never leak; resizing a full-size buffer is free.
            images.resize(chunk.len() * per, 0.0);

            let (samples, transform, limits, stop) =
                (&self.samples, &self.transform, &self.limits, &self.stop);
            let (seed, epoch) = (self.seed, self.epoch);
            let failures: Vec<Option<String>> = self.pool.install(|| {
                images
                    .par_chunks_mut(per)
                    .zip(chunk.par_iter())
                    .map(|(out, &i)| {
                        if stop.load(Ordering::Relaxed) {
                            return None;
                        }
                        // A decoder bug on one malformed file must not end a long run: a
                        // panic while reading a sample makes it a skipped sample.
                        let work = std::panic::AssertUnwindSafe(|| {
                            let img = decode_file(&samples[i].path, limits)?;
                            if img.width() == 0 || img.height() == 0 {
                                return Err("the image has no pixels".to_owned().into());
                            }
                            transform.apply(&img, sample_seed(seed, epoch, i as u64), out);
                            Ok::<(), Failure>(())
                        });
                        match std::panic::catch_unwind(work) {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.0),
                            Err(panic) => Some(format!(
                                "decoding panicked: {}",
                                panic_message(panic.as_ref())
                            )),
                        }
                    })
                    .collect()
            });
            if self.stop.load(Ordering::Relaxed) {
                return;
            }

            // Close the gaps left by skipped images so the buffer is a dense [n, 3, s, s].
            let mut labels = Vec::with_capacity(chunk.len());
            let mut sample_indices = Vec::with_capacity(chunk.len());
            let mut skipped = Vec::new();
            for (j, (failure, &i)) in failures.into_iter().zip(chunk).enumerate() {
                let sample = &self.samples[i];
                match failure {
                    None => {
                        let kept = labels.len();
                        if kept != j {
                            images.copy_within(j * per..(j + 1) * per, kept * per);
                        }
                        labels.push(sample.label);
                        sample_indices.push(i);
                    }
                    Some(reason) => {
                        tracing::warn!(
                            path = %sample.path.display(),
                            "skipping unreadable image: {reason}"
                        );
                        skipped.push(Skipped {
                            path: sample.path.clone(),
                            reason,
                        });
                    }
                }
            }
            images.truncate(labels.len() * per);
            let batch = Batch {
                images,
                labels,
                sample_indices,
                size,
                skipped,
                recycle: Some(self.recycle_tx.clone()),
            };
            if self.tx.send(batch).is_err() {
                // The loader was dropped: nobody wants the rest.
                return;
            }
        }
    }
}

impl Loader {
    /// Starts producing batches of `order` (indices into `samples`) in the background.
    pub fn new(
        samples: Arc<[Sample]>,
        order: Vec<usize>,
        transform: Transform,
        opts: LoaderOptions,
    ) -> Result<Loader, DataError> {
        if opts.batch_size == 0 {
            return Err(invalid("loader batch size", "must be at least 1"));
        }
        if opts.prefetch == 0 {
            return Err(invalid("loader prefetch", "must be at least 1"));
        }
        if transform.size() == 0 {
            return Err(invalid("loader image size", "must be at least 1"));
        }
        if let Some((pos, &i)) = order.iter().enumerate().find(|(_, i)| **i >= samples.len()) {
            return Err(invalid(
                "loader order",
                format!(
                    "position {pos} names sample {i}, but there are only {} samples",
                    samples.len()
                ),
            ));
        }
        let workers = if opts.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("clipstock-decode-{i}"))
            .build()
            .map_err(|e| invalid("loader worker pool", e.to_string()))?;

        let num_batches = order.len().div_ceil(opts.batch_size);
        let (tx, rx) = mpsc::sync_channel(opts.prefetch);
        let (recycle_tx, recycle_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = Producer {
            samples,
            order,
            transform,
            batch_size: opts.batch_size,
            seed: opts.seed,
            epoch: opts.epoch,
            limits: opts.limits,
            pool,
            tx,
            recycle_tx,
            recycle_rx,
            stop: Arc::clone(&stop),
        };
        let handle = std::thread::Builder::new()
            .name("clipstock-loader".to_owned())
            .spawn(move || producer.run())
            .map_err(|e| invalid("loader thread", e.to_string()))?;
        Ok(Loader {
            rx: Some(rx),
            producer: Some(handle),
            stop,
            num_batches,
            delivered: 0,
        })
    }

    /// Batches in the whole pass (the last may be short).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(batch) => {
                self.delivered += 1;
                Some(batch)
            }
            Err(_) => {
                self.rx = None;
                // A producer that died mid-pass must not look like a short epoch.
                if let Some(handle) = self.producer.take()
                    && let Err(panic) = handle.join()
                {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.rx.is_some() {
            self.num_batches - self.delivered
        } else {
            0
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Disconnecting wakes a producer blocked on a full channel; its send then fails.
        drop(self.rx.take());
        if let Some(handle) = self.producer.take()
            && handle.join().is_err()
        {
            tracing::error!("the batch producer thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        let a = epoch_order(1000, 7, 3);
        assert_eq!(a, epoch_order(1000, 7, 3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(1000, 7, 4));
        assert_ne!(a, epoch_order(1000, 8, 3));
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        assert!(epoch_order(0, 1, 1).is_empty());
        assert_eq!(epoch_order(1, 1, 1), vec![0]);
    }

    #[test]
    fn epoch_order_is_pinned() {
        // Changing the generator would silently change every training run's data order.
        assert_eq!(epoch_order(10, 0, 0), PINNED);
    }
    const PINNED: [usize; 10] = [9, 0, 6, 3, 2, 4, 8, 7, 1, 5];

    #[test]
    fn below_is_roughly_uniform() {
        let mut rng = SplitMix64(42);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[rng.below_unbiased(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
