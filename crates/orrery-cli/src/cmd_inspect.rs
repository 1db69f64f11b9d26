//! `orrery inspect <file|dir> [--json]`: tensors of a checkpoint, or what a folder holds.
//! Exits non-zero when a pickle references globals orrery does not know (they are listed).

use anyhow::Result;
use orrery_formats::{describe_folder, inspect as inspect_file, FolderDescription, Inspection};
use std::path::Path;
use std::process::ExitCode;

pub fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
    let (text, value, inspections) = if path.is_dir() {
        let d = describe_folder(path)?;
        let inspections: Vec<Inspection> = match &d {
            FolderDescription::Component { weights: Some(w), .. } | FolderDescription::Weights(w) => vec![w.clone()],
            _ => vec![],
        };
        (d.to_string(), d.to_json(), inspections)
    } else {
        let i = inspect_file(path)?;
        (i.to_string(), i.to_json(), vec![i])
    };
    if json {
        println!("{value}");
    } else {
        print!("{text}");
    }
    let unknown: Vec<String> =
        inspections.iter().flat_map(|i| i.unknown_globals.iter().map(|g| g.global.clone())).collect();
    if unknown.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "orrery: {} references pickle globals orrery does not know (never executed): {}",
            path.display(),
            unknown.join(", ")
        );
        Ok(ExitCode::from(3))
    }
}
