//! The tiny Cosmos-architecture Text2World pipeline with random weights that is compiled into
//! the binary (about 2 MB, from `tools/reference/make_cosmos_pipeline_fixtures.py`): the
//! default of `orrery generate` without `--model`, so that the whole path runs anywhere in well
//! under a second. Its output is noise, since its weights are random.
//!
//! The components load from files, so the first use writes them to
//! `$XDG_CACHE_HOME/orrery/embedded-<content hash>/` (else `~/.cache/…`, else the temporary
//! folder), atomically (a temporary folder renamed into place); later runs reuse it.

use anyhow::{Context, Result};
use std::path::PathBuf;

macro_rules! file {
    ($path:literal) => {
        ($path, include_bytes!(concat!("../../orrery-pipeline/tests/fixtures/cosmos_t2w_tiny/", $path)).as_slice())
    };
}

const FILES: &[(&str, &[u8])] = &[
    file!("model_index.json"),
    file!("scheduler/scheduler_config.json"),
    file!("text_encoder/config.json"),
    file!("text_encoder/model.safetensors"),
    file!("tokenizer/tokenizer.json"),
    file!("tokenizer/tokenizer_config.json"),
    file!("transformer/config.json"),
    file!("transformer/diffusion_pytorch_model.safetensors"),
    file!("vae/config.json"),
    file!("vae/diffusion_pytorch_model.safetensors"),
];

/// The embedded pipeline's own defaults: (height, width, frames, steps).
pub const DEFAULTS: (usize, usize, usize, usize) = (32, 48, 9, 5);

/// FNV-1a over every file's name and bytes: a folder name that changes with the contents.
fn content_hash() -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (name, bytes) in FILES {
        for &b in name.as_bytes().iter().chain(*bytes) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

pub(crate) fn cache_root() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("orrery")
}

/// The folder holding the embedded pipeline, written there first if needed.
pub fn pipeline_dir() -> Result<PathBuf> {
    let root = cache_root();
    let dir = root.join(format!("embedded-{:016x}", content_hash()));
    if dir.join("model_index.json").is_file() {
        return Ok(dir);
    }
    let tmp = root.join(format!("embedded-{:016x}.{}.partial", content_hash(), std::process::id()));
    let write = || -> std::io::Result<()> {
        for (name, bytes) in FILES {
            let path = tmp.join(name);
            std::fs::create_dir_all(path.parent().expect("files are in the folder"))?;
            std::fs::write(path, bytes)?;
        }
        match std::fs::rename(&tmp, &dir) {
            // Another process got there first: theirs is identical.
            Err(_) if dir.join("model_index.json").is_file() => std::fs::remove_dir_all(&tmp),
            other => other,
        }
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })
        .with_context(|| format!("writing the embedded pipeline to {}", dir.display()))?;
    Ok(dir)
}
