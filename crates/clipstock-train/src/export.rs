//! The run's final checkpoints, complete CLIP files in model-soups naming: `w0.safetensors`
//! (the anchor, with its head), `run_N_final.safetensors`, `independent_N_final.safetensors`
//! (the never-merged baselines) and `merged_final.safetensors`, the inputs of any later soup or
//! merge (`clipstock merge --anchor w0 --models independent_*_final`).

use std::path::PathBuf;

use clipstock_model::load::{canonical_of_module_state, export, module_state, with_extras};
use clipstock_model::{Naming, StateDict};

use crate::error::Result;
use crate::rundir::RunDir;
use crate::session::Session;

fn write(dir: &RunDir, name: &str, state: &StateDict, extras: &StateDict) -> Result<PathBuf> {
    let path = dir.file(name);
    let full = with_extras(canonical_of_module_state(state.clone()), extras);
    export(&full, Naming::ModelSoups, None, &path)?;
    Ok(path)
}

/// Writes the merge (if any), w0 and every run; returns the merge's path.
pub fn final_exports(dir: &RunDir, session: &Session) -> Result<Option<PathBuf>> {
    let extras = &session.w0.extras;
    let merged = match &session.last_merge {
        Some(m) => Some(write(dir, "merged_final.safetensors", m, extras)?),
        None => None,
    };
    write(dir, "w0.safetensors", &session.w0.state, extras)?;
    for run in &session.runs {
        let name = format!("{}_final.safetensors", run.name.stem());
        write(dir, &name, &module_state(&run.model), extras)?;
    }
    Ok(merged)
}
