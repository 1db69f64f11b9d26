//! Finding a model: a folder, or a Hugging Face repo id (`org/name`, `org/name@rev`) resolved
//! offline in the local Hugging Face cache, the way `huggingface_hub` lays it out:
//! `<cache>/models--org--name/refs/<branch>` holds a commit hash, and
//! `<cache>/models--org--name/snapshots/<commit>/` holds the files (symlinks into `blobs/`).
//! The cache is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`. Nothing is
//! downloaded.

use crate::PipelineError;
use std::path::{Path, PathBuf};

/// The folder `spec` names: `spec` itself when it is a directory, else the snapshot of the
/// repo id `org/name[@rev]` (rev: a branch or tag under `refs/`, or a commit hash; default
/// `main`) in the Hugging Face cache.
pub fn resolve_model(spec: &str) -> Result<PathBuf, PipelineError> {
    resolve_model_with(spec, &|key| std::env::var(key).ok())
}

/// [`resolve_model`] with the environment given (for tests).
pub fn resolve_model_with(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, PipelineError> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let (repo, rev) = match spec.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None => (spec, "main"),
    };
    let valid = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let Some((org, name)) = repo.split_once('/').filter(|(o, n)| valid(o) && valid(n) && *n != "..") else {
        return Err(PipelineError::Invalid(format!(
            "`{spec}` is neither a folder nor a Hugging Face repo id (`org/name` or `org/name@revision`)"
        )));
    };
    if rev.is_empty() || rev.contains('/') && rev.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(PipelineError::Invalid(format!("`{spec}`: bad revision `{rev}`")));
    }
    let caches = cache_dirs(env);
    let folder = format!("models--{org}--{name}");
    let mut searched = Vec::new();
    for cache in &caches {
        let repo_dir = cache.join(&folder);
        searched.push(repo_dir.display().to_string());
        if !repo_dir.is_dir() {
            continue;
        }
        let commit = if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) {
            rev.to_string()
        } else {
            let reference = repo_dir.join("refs").join(rev);
            match std::fs::read_to_string(&reference) {
                Ok(text) => text.trim().to_string(),
                Err(_) => {
                    return Err(PipelineError::Invalid(format!(
                        "{}: no revision `{rev}` (no {}); the cached revisions are {}",
                        repo_dir.display(),
                        reference.display(),
                        list(&repo_dir.join("refs"))
                    )))
                }
            }
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if snapshot.is_dir() {
            return Ok(snapshot);
        }
        return Err(PipelineError::Invalid(format!(
            "{}: revision `{rev}` is commit {commit}, which has no snapshot; cached snapshots: {}",
            repo_dir.display(),
            list(&repo_dir.join("snapshots"))
        )));
    }
    Err(PipelineError::Invalid(format!(
        "`{spec}` is not a folder, and the Hugging Face cache has no {org}/{name}; searched: {}. \
         Download it first (e.g. `huggingface-cli download {org}/{name}`), or give the folder",
        searched.join(", ")
    )))
}

/// The cache folders to search, in order.
fn cache_dirs(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let set = |key: &str| env(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(cache) = set("HF_HUB_CACHE") {
        return vec![cache];
    }
    if let Some(home) = set("HF_HOME") {
        return vec![home.join("hub")];
    }
    set("HOME").map(|home| vec![home.join(".cache").join("huggingface").join("hub")]).unwrap_or_default()
}

/// The entries of `dir` (names, sorted, comma-separated), or "none".
fn list(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cache: org/name with `main` → commit A and tag `v1` → commit B, snapshots holding
    /// `model_index.json` as symlinks into `blobs/`.
    fn fake_cache(root: &Path) -> (String, String) {
        let repo = root.join("models--nvidia--Cosmos-Tiny");
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{a}\n")).unwrap();
        std::fs::write(repo.join("refs/v1"), &b).unwrap();
        std::fs::write(repo.join("blobs/0123"), "{}").unwrap();
        for commit in [&a, &b] {
            let snap = repo.join("snapshots").join(commit);
            std::fs::create_dir_all(&snap).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink("../../blobs/0123", snap.join("model_index.json")).unwrap();
            #[cfg(not(unix))]
            std::fs::write(snap.join("model_index.json"), "{}").unwrap();
        }
        (a, b)
    }

    #[test]
    fn repo_ids_resolve_in_the_cache_by_branch_tag_or_commit() {
        let root = std::env::temp_dir().join(format!("orrery-hub-{}", std::process::id()));
        let cache = root.join("hub");
        let (a, b) = fake_cache(&cache);
        let home = root.to_str().unwrap().to_string();
        // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
        let env = |key: &str| (key == "HF_HOME").then(|| home.clone());
        let snap = |c: &str| cache.join("models--nvidia--Cosmos-Tiny/snapshots").join(c);
        assert_eq!(resolve_model_with("nvidia/Cosmos-Tiny", &env).unwrap(), snap(&a));
        assert_eq!(resolve_model_with("nvidia/Cosmos-Tiny@main", &env).unwrap(), snap(&a));
        assert_eq!(resolve_model_with("nvidia/Cosmos-Tiny@v1", &env).unwrap(), snap(&b));
        assert_eq!(resolve_model_with(&format!("nvidia/Cosmos-Tiny@{b}"), &env).unwrap(), snap(&b));
        assert!(resolve_model_with("nvidia/Cosmos-Tiny", &env).unwrap().join("model_index.json").is_file());
        // HF_HUB_CACHE wins over HF_HOME.
        let cache_str = cache.to_str().unwrap().to_string();
        let env2 = |key: &str| match key {
            "HF_HUB_CACHE" => Some(cache_str.clone()),
            "HF_HOME" => Some("/nonexistent".into()),
            _ => None,
        };
        assert_eq!(resolve_model_with("nvidia/Cosmos-Tiny", &env2).unwrap(), snap(&a));
        // A folder is taken as is.
        assert_eq!(resolve_model_with(root.to_str().unwrap(), &env).unwrap(), root);

        let err = resolve_model_with("nvidia/Missing", &env).unwrap_err().to_string();
        assert!(err.contains("models--nvidia--Missing") && err.contains("searched"), "{err}");
        let err = resolve_model_with("nvidia/Cosmos-Tiny@v2", &env).unwrap_err().to_string();
        assert!(err.contains("no revision `v2`") && err.contains("main, v1"), "{err}");
        let err = resolve_model_with(&format!("nvidia/Cosmos-Tiny@{}", "c".repeat(40)), &env).unwrap_err().to_string();
        assert!(err.contains("no snapshot"), "{err}");
        for bad in ["not-a-repo", "a/b/c", "../x", "org/..", "org/name@"] {
            assert!(resolve_model_with(bad, &env).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
