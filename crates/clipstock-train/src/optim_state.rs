//! `merge.optimizer_state = "average"`: after a merge, every run continues with the mean of
//! the runs' AdamW moments, parameter by parameter. A run without any state yet (with f16,
//! every step so far skipped for overflow) is left out of the mean and stays fresh.
//!
//! burn keys optimizer state by `ParamId`. The trainer's runs are clones of w0 and share its
//! ids, but nothing here relies on that (a run loaded from elsewhere may not): the runs'
//! records are matched through module paths — serialise each record (burn's burnpack format),
//! average the tensors that share `(path, field)`, and give every run the average under the
//! ids its own record uses.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn_pack::{Bytes, DType, Reader, Writer};

use crate::error::{Result, TrainError};

struct Paths {
    path: Vec<String>,
    by_id: HashMap<u64, String>,
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.by_id.insert(param.id.val(), self.path.join("."));
    }
}

fn paths_of<M: Module>(module: &M) -> HashMap<u64, String> {
    let mut v = Paths {
        path: Vec::new(),
        by_id: HashMap::new(),
    };
    module.visit(&mut v);
    v.by_id
}

fn err(reason: String) -> TrainError {
    TrainError::OptimizerAverage(reason)
}

/// One run's record, split into per-parameter tensors keyed by `(module path, field)`.
struct Parsed {
    tensors: Vec<(String, String, u64, burn_pack::Tensor)>,
    reader_scalars: std::collections::BTreeMap<String, burn_pack::Scalar>,
    metadata: std::collections::BTreeMap<String, String>,
}

fn parse<M: Module>(module: &M, optim: &ModuleOptimizer) -> Result<Parsed> {
    let paths = paths_of(module);
    let bytes = optim.into_bytes().map_err(|e| err(e.to_string()))?;
    let reader = Reader::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
    let reader_scalars = reader.scalars().clone();
    let metadata = reader.metadata().clone();
    let mut tensors = Vec::new();
    for t in reader.into_tensors().map_err(|e| err(e.to_string()))? {
        let (Some(id), Some((_, field))) = (t.param_id, t.name.split_once('.')) else {
            return Err(err(format!("unexpected tensor `{}`", t.name)));
        };
        let path = paths
            .get(&id)
            .ok_or_else(|| err(format!("state for an unknown parameter id {id}")))?
            .clone();
        tensors.push((path, field.to_string(), id, t));
    }
    Ok(Parsed {
        tensors,
        reader_scalars,
        metadata,
    })
}

/// Replaces the optimizer state of every run that has one by the element-wise mean over those
/// runs. A run can have none yet — with f16, every step so far may have been skipped for
/// overflow while another run already stepped — and then keeps starting fresh. Runs that have
/// state must have the same entries.
pub fn average<M: Module>(runs: &mut [(&M, &mut ModuleOptimizer)]) -> Result<()> {
    let parsed: Vec<Parsed> = runs
        .iter()
        .map(|(m, o)| parse(*m, o))
        .collect::<Result<_>>()?;
    // Sum every (path, field) over the runs in f64, then divide.
    let mut sums: HashMap<(String, String), (Vec<f64>, usize)> = HashMap::new();
    for p in &parsed {
        for (path, field, _, t) in &p.tensors {
            if t.dtype != DType::F32 {
                return Err(err(format!("`{path}.{field}` is {:?}, not f32", t.dtype)));
            }
            let bytes = t.to_bytes().map_err(|e| err(e.to_string()))?;
            let values: &[f32] = bytemuck::try_cast_slice(&bytes)
                .map_err(|e| err(format!("`{path}.{field}`: {e}")))?;
            let entry = sums
                .entry((path.clone(), field.clone()))
                .or_insert_with(|| (vec![0.0; values.len()], 0));
            if entry.0.len() != values.len() {
                return Err(err(format!(
                    "`{path}.{field}` differs in size between runs"
                )));
            }
            for (s, v) in entry.0.iter_mut().zip(values) {
                *s += f64::from(*v);
            }
            entry.1 += 1;
        }
    }
    let with_state = parsed.iter().filter(|p| !p.tensors.is_empty()).count();
    for ((path, field), (_, count)) in &sums {
        if *count != with_state {
            return Err(err(format!(
                "`{path}.{field}` exists in {count} of the {with_state} runs with optimizer state"
            )));
        }
    }
    if with_state < runs.len() {
        tracing::info!(
            "{} of {} runs have no optimizer state yet (every step skipped so far); the mean is \
             over the others",
            runs.len() - with_state,
            runs.len()
        );
    }
    for ((_, optim), p) in runs.iter_mut().zip(parsed) {
        let mut out = Vec::with_capacity(p.tensors.len());
        for (path, field, id, t) in p.tensors {
            let (sum, count) = &sums[&(path, field)];
            let mean: Vec<f32> = sum.iter().map(|s| (s / *count as f64) as f32).collect();
            out.push(burn_pack::Tensor::new(
                t.name.clone(),
                DType::F32,
                t.shape.clone(),
                Some(id),
                Bytes::from_bytes_vec(bytemuck::cast_slice(&mean).to_vec()),
            ));
        }
        let mut writer = Writer::new(out);
        for (k, v) in &p.reader_scalars {
            writer = writer.with_scalar(k, *v);
        }
        for (k, v) in &p.metadata {
            writer = writer.with_metadata(k, v);
        }
        let bytes = writer.into_bytes().map_err(|e| err(e.to_string()))?;
        let current = std::mem::replace(
            *optim,
            ModuleOptimizer::from(burn::optim::AdamWConfig::new().build()),
        );
        **optim = current.from_bytes(bytes).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, GradientsParams};
    use clipstock_model::ClipArch;
    use clipstock_model::model::{ImageClassifier, Init};

    fn classifier(seed: u64, device: &Device) -> ImageClassifier {
        ImageClassifier::random(&ClipArch::tiny(), 3, seed, device)
    }

    fn stepped(seed: u64, device: &Device) -> (ImageClassifier, ModuleOptimizer) {
        stepped_from(classifier(1, device), seed, device)
    }

    fn stepped_from(
        model: ImageClassifier,
        seed: u64,
        device: &Device,
    ) -> (ImageClassifier, ModuleOptimizer) {
        let model = model.train();
        let mut optim = AdamWConfig::new().init();
        let x = Init::new(seed).normal_vec(2 * 3 * 8 * 8, 1.0);
        let x = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 8, 8]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), device);
        let loss = crate::step::cross_entropy(model.forward(x), y, 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-2, model, grads);
        (model, optim)
    }

    fn field_values(
        m: &ImageClassifier,
        o: &ModuleOptimizer,
    ) -> std::collections::BTreeMap<(String, String), Vec<f32>> {
        parse(m, o)
            .expect("parse")
            .tensors
            .into_iter()
            .map(|(path, field, _, t)| {
                let bytes = t.to_bytes().expect("bytes");
                let v: Vec<f32> = bytemuck::cast_slice(&bytes).to_vec();
                ((path, field), v)
            })
            .collect()
    }

    /// The trainer's runs are clones of one w0 and share its ids: averaging must still pair
    /// the tensors of each run by path.
    #[test]
    fn runs_sharing_their_ids_get_the_mean_too() {
        let device = Device::flex().autodiff();
        let base = classifier(1, &device);
        let (ma, mut oa) = stepped_from(base.clone(), 3, &device);
        let (mb, mut ob) = stepped_from(base, 4, &device);
        let before_a = field_values(&ma, &oa);
        let before_b = field_values(&mb, &ob);
        assert_ne!(before_a, before_b);
        average(&mut [(&ma, &mut oa), (&mb, &mut ob)]).expect("average");
        let after = field_values(&ma, &oa);
        assert_eq!(after, field_values(&mb, &ob));
        for (key, a) in &before_a {
            let b = &before_b[key];
            for (i, got) in after[key].iter().enumerate() {
                assert_eq!(*got, (a[i] + b[i]) / 2.0, "{key:?}[{i}]");
            }
        }
    }

    #[test]
    fn every_run_gets_the_mean_of_the_moments_under_its_own_ids() {
        let device = Device::flex().autodiff();
        let (ma, mut oa) = stepped(3, &device);
        let (mb, mut ob) = stepped(4, &device);
        let before_a = field_values(&ma, &oa);
        let before_b = field_values(&mb, &ob);
        assert!(!before_a.is_empty());
        assert_ne!(
            before_a, before_b,
            "different data must give different moments"
        );
        average(&mut [(&ma, &mut oa), (&mb, &mut ob)]).expect("average");
        let after_a = field_values(&ma, &oa);
        let after_b = field_values(&mb, &ob);
        assert_eq!(after_a, after_b);
        for (key, a) in &before_a {
            let b = &before_b[key];
            let got = &after_a[key];
            for i in 0..a.len() {
                let want = ((f64::from(a[i]) + f64::from(b[i])) / 2.0) as f32;
                assert_eq!(got[i], want, "{key:?}[{i}]");
            }
        }
        // A run that has not stepped yet (f16 skips) is left out and stays fresh; the others
        // still get their own mean.
        let fresh_model = classifier(1, &device).train();
        let mut fresh_optim = AdamWConfig::new().init();
        let (mc, mut oc) = stepped(3, &device);
        let before_c = field_values(&mc, &oc);
        average(&mut [(&fresh_model, &mut fresh_optim), (&mc, &mut oc)]).expect("average");
        assert!(field_values(&fresh_model, &fresh_optim).is_empty());
        assert_eq!(
            field_values(&mc, &oc),
            before_c,
            "the mean of one run is itself"
        );

        // The averaged state stays attached to the run's parameters: one more step from it
        // differs from the same step with a fresh optimizer.
        let grads_of = |m: &ImageClassifier| {
            let x = Init::new(5).normal_vec(2 * 3 * 8 * 8, 1.0);
            let x = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 8, 8]), &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &device);
            let loss = crate::step::cross_entropy(m.forward(x), y, 0.0);
            GradientsParams::from_grads(loss.backward(), m)
        };
        let mut fresh = AdamWConfig::new().init();
        let g = grads_of(&ma);
        let with_average = oa.step(1e-2, ma.clone(), g);
        let g = grads_of(&ma);
        let with_fresh = fresh.step(1e-2, ma, g);
        let wa = clipstock_model::load::module_state(&with_average);
        let wf = clipstock_model::load::module_state(&with_fresh);
        let head = "classification_head.weight";
        assert_ne!(
            wa.get(head).expect("head").data,
            wf.get(head).expect("head").data,
            "the averaged moments must take part in the next step"
        );
    }
}
