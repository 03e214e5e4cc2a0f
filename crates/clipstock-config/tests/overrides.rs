//! Errors of a run file given with `--set` overrides: a mistake in the file keeps its line and
//! column, a bad override is named.

use std::path::Path;

mod common;

use clipstock_config::{ConfigError, from_str};
use common::MINIMAL;

const FILE: &str = "configs/test_run.toml";

fn err_with(text: &str, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    match from_str(text, Path::new(FILE), &overrides) {
        Ok(spec) => panic!("expected an error, got {spec:?}"),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL (11 lines, the first empty) then an [optim] section whose third line is line 14.
fn file_with_optim(optim: &str) -> String {
    format!("{MINIMAL}\n[optim]\nepochs = 2\n{optim}\n")
}

#[test]
fn a_type_error_in_the_file_keeps_its_line_and_column_under_overrides() {
    let text = file_with_optim(r#"lr = "fast""#);
    let alone = err_with(&text, &[]);
    let with = err_with(&text, &["optim.epochs=3", "run.name=other"]);
    assert!(with.contains(&format!("{FILE}:14:6: `optim.lr`")), "{with}");
    assert!(!with.contains("--set"), "no override is involved: {with}");
    assert_eq!(
        alone, with,
        "the overrides change nothing about the message"
    );
}

#[test]
fn an_unknown_key_in_the_file_keeps_its_line_under_overrides() {
    let text = file_with_optim("lrr = 1e-3");
    let e = err_with(&text, &["optim.lr=1e-4"]);
    assert!(e.contains(&format!("{FILE}:14:1: `optim.lrr`")), "{e}");
    assert!(e.contains("unknown key"), "{e}");
}

#[test]
fn a_bad_override_is_named() {
    let e = err_with(MINIMAL, &["optim.epochs=3", "optim.lr=abc"]);
    assert!(
        e.contains("`optim.lr`") && e.contains("(from --set optim.lr=abc)"),
        "{e}"
    );
    assert!(
        e.starts_with(&format!("{FILE}: ")),
        "no file position for an override: {e}"
    );
    // A table value: the error is inside it, the override is still the culprit.
    let e = err_with(MINIMAL, &["merge.period={ stepz = 5 }"]);
    assert!(
        e.contains("merge.period") && e.contains("(from --set merge.period={ stepz = 5 })"),
        "{e}"
    );
}

#[test]
fn a_syntax_error_in_the_file_is_reported_at_its_line_whatever_the_overrides() {
    let text = file_with_optim("lr = = 1");
    let e = err_with(&text, &["optim.lr=1e-4"]);
    assert!(e.contains("not valid TOML") && e.contains("line 14"), "{e}");
    assert!(
        matches!(
            from_str(&text, Path::new(FILE), &["optim.lr=1e-4".to_owned()]),
            Err(ConfigError::Syntax { .. })
        ),
        "{e}"
    );
}
