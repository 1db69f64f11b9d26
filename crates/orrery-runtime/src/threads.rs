//! How many worker threads to use.

/// Where the thread count came from, for logs and `--json` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadSource {
    Flag,
    RayonEnv,
    Available,
}

/// `--threads N` if given, else `RAYON_NUM_THREADS`, else the available parallelism, which
/// on Linux honours the cgroup CPU quota and the affinity mask (std's
/// `available_parallelism`). Zero or unparsable values fall through to the next source.
pub fn resolve_threads(flag: Option<usize>) -> (usize, ThreadSource) {
    if let Some(n) = flag.filter(|&n| n > 0) {
        return (n, ThreadSource::Flag);
    }
    let env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = env.filter(|&n| n > 0) {
        return (n, ThreadSource::RayonEnv);
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n, ThreadSource::Available)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins() {
        assert_eq!(resolve_threads(Some(3)), (3, ThreadSource::Flag));
        assert!(resolve_threads(Some(0)).0 >= 1);
    }
}
