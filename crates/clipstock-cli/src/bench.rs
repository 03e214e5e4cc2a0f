//! `clipstock bench`: images/s of the eval forward pass and the AdamW training step on random
//! weights, printed as a table. Performance goals live here, never in timed tests.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};

use clipstock_model::model::{ClipLinear, ImageClassifier, Init, ParamSource};
use clipstock_model::{ClipArch, ClipModel, DeviceSpec};

#[derive(Args)]
pub struct BenchArgs {
    /// Model preset: ViT-B-32, ViT-B-16 or ViT-L-14.
    #[arg(long, default_value = "ViT-B-32")]
    model: String,
    /// Devices to compare, comma separated.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    device: Vec<DeviceSpec>,
    /// Batch size of the training step.
    #[arg(long, default_value_t = 8)]
    train_batch: usize,
    /// Batch size of the eval forward pass.
    #[arg(long, default_value_t = 32)]
    eval_batch: usize,
    /// Timed iterations (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// What to time.
    #[arg(long, value_enum, default_value = "both")]
    what: What,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    Eval,
    Train,
    Both,
}

struct Row {
    device: String,
    what: &'static str,
    batch: usize,
    secs: f64,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let mut arch = ClipArch::preset(&a.model).with_context(|| {
        format!(
            "unknown model `{}` (presets: {})",
            a.model,
            ClipArch::preset_names().join(", ")
        )
    })?;
    // The classifier never runs the text tower; leaving it out matches training memory.
    arch.text = None;
    let mut rows = Vec::new();
    for spec in &a.device {
        if a.what != What::Train {
            let device = spec.device()?;
            let secs = time_eval(&arch, a.eval_batch, a.iters, &device);
            rows.push(Row {
                device: spec.to_string(),
                what: "eval forward",
                batch: a.eval_batch,
                secs,
            });
            eprintln!("{spec} eval: {:.3}s/iter", secs);
        }
        if a.what != What::Eval {
            let device = spec.autodiff_device()?;
            let secs = time_train(&arch, a.train_batch, a.iters, &device);
            rows.push(Row {
                device: spec.to_string(),
                what: "train step (AdamW)",
                batch: a.train_batch,
                secs,
            });
            eprintln!("{spec} train: {:.3}s/iter", secs);
        }
    }
    println!(
        "model {} ({} vision params), {} threads available",
        a.model,
        arch.num_params(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| device | work | batch | s/iter | img/s |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.3} | {:.1} |",
            r.device,
            r.what,
            r.batch,
            r.secs,
            r.batch as f64 / r.secs
        );
    }
    Ok(())
}

fn random_classifier(arch: &ClipArch, device: &Device) -> ImageClassifier {
    let mut src = ParamSource::random(1, device);
    let model = ClipModel::build(arch, &mut src);
    let classification_head =
        ClipLinear::new(arch.embed_dim, 1000, &mut src, "classification_head");
    ImageClassifier {
        model,
        classification_head,
    }
}

fn images(arch: &ClipArch, batch: usize, device: &Device) -> Tensor<4> {
    let s = arch.vision.image_size;
    let data = Init::new(7).normal_vec(batch * 3 * s * s, 1.0);
    Tensor::from_data(TensorData::new(data, [batch, 3, s, s]), device)
}

fn sync(t: Tensor<2>) {
    // Reading one value back forces the queued work to finish on asynchronous backends.
    let _ = t.narrow(0, 0, 1).narrow(1, 0, 1).into_data();
}

fn time_eval(arch: &ClipArch, batch: usize, iters: usize, device: &Device) -> f64 {
    let model = random_classifier(arch, device);
    let x = images(arch, batch, device);
    sync(model.forward(x.clone()));
    let start = Instant::now();
    for _ in 0..iters {
        sync(model.forward(x.clone()));
    }
    start.elapsed().as_secs_f64() / iters.max(1) as f64
}

fn time_train(arch: &ClipArch, batch: usize, iters: usize, device: &Device) -> f64 {
    let mut model = random_classifier(arch, device).train();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.1)
        .init();
    let x = images(arch, batch, device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 37) % 1000).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), device);
    let mut step = |model: ImageClassifier| -> ImageClassifier {
        let logits = model.forward(x.clone());
        let logp = log_softmax(logits, 1);
        let picked = logp.gather(1, labels.clone().reshape([batch, 1]));
        let loss = picked.mean().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(3e-5, model, grads);
        sync(model.classification_head.weight.val().narrow(0, 0, 1));
        model
    };
    model = step(model);
    let start = Instant::now();
    for _ in 0..iters {
        model = step(model);
    }
    let secs = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    drop(model);
    secs
}
