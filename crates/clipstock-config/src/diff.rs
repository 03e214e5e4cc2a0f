//! Key-by-key comparison of two resolved configs: what `--resume` reports when the config it
//! is given is not the one the run was started with.

use std::fmt;

/// One dotted key whose value differs; `None` is a key one side leaves unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDiff {
    pub key: String,
    pub stored: Option<String>,
    pub current: Option<String>,
}

impl fmt::Display for KeyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".to_owned());
        write!(
            f,
            "{}: {} in the run, {} now",
            self.key,
            show(&self.stored),
            show(&self.current)
        )
    }
}

/// Where a run lives: not part of what it computes, and a moved run directory resumes, so
/// these never count as a difference.
pub const LOCATION_KEYS: [&str; 2] = ["run.output_dir", "run.name"];

/// Every key (in dotted form, sorted) whose value differs between two TOML documents, leaving
/// out [`LOCATION_KEYS`]. `Err` carries toml's message when `stored` is not TOML.
pub fn diff_toml(stored: &str, current: &str) -> Result<Vec<KeyDiff>, String> {
    let parse = |s: &str| s.parse::<toml::Table>().map_err(|e| e.to_string());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten("", &parse(stored)?, &mut a);
    flatten("", &parse(current)?, &mut b);
    let a: std::collections::BTreeMap<_, _> = a.into_iter().collect();
    let b: std::collections::BTreeMap<_, _> = b.into_iter().collect();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| !LOCATION_KEYS.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| KeyDiff {
            key: k.clone(),
            stored: a.get(k).cloned(),
            current: b.get(k).cloned(),
        })
        .collect())
}

/// Tables become dotted keys; any other value (arrays included) is one leaf, shown as TOML.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_differing_key_with_both_values_and_not_the_location() {
        let stored = "[run]\nname = \"a\"\noutput_dir = \"/x\"\nseeds = [1, 2]\n\
                      [optim]\nlr = 0.0003\nepochs = 2\n";
        let current = "[run]\nname = \"b\"\noutput_dir = \"/y\"\nseeds = [1, 3]\n\
                       [optim]\nlr = 0.001\nepochs = 2\ngrad_clip_norm = 1.0\n";
        let d = diff_toml(stored, current).expect("both parse");
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "optim.grad_clip_norm: unset in the run, 1.0 now",
                "optim.lr: 0.0003 in the run, 0.001 now",
                "run.seeds: [1, 2] in the run, [1, 3] now",
            ]
        );
        assert!(diff_toml(stored, stored).expect("parses").is_empty());
    }
}
