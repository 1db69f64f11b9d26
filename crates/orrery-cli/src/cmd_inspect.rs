//! `orrery inspect <file|dir>` (being written: waits on the orrery-formats inspection API).

use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;

pub fn inspect(path: &Path, json: bool) -> Result<ExitCode> {
    let _ = (path, json);
    anyhow::bail!("inspect is not wired yet")
}
