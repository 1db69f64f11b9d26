//! A directory of compiled plans, so that a large graph is not recompiled on every run.
//!
//! Each file holds one [`Plan`] with the full [`StoreKey`] it was compiled for: the running
//! binary's fingerprint, the component's identity (its config and weight index, by content),
//! the method, the input shapes and the compile options. The file's name is a hash of the key;
//! the key inside is compared on load, so a hash collision or a stale file is a miss, never a
//! wrong plan. A file is one header line (format version, key, and a 128-bit hash of the plan's
//! bytes, so damage is detected rather than parsed) followed by the plan as JSON; a loaded plan
//! is also checked with [`Plan::verify`] before it is returned.
//!
//! The files are untrusted input: a file that cannot be read, does not parse, is of another
//! format version, holds another key or fails verification is a miss with a warning
//! ([`StoreWarning`]) for the caller to log, never a panic; nothing in it is executed. Writes
//! are atomic (`<name>.tmp.<pid>`, then renamed), so a reader never sees half a file.
//!
//! The directory is bounded: after each write, the least recently used plan files (a hit
//! refreshes a file's modification time) are deleted until the plans take at most
//! `max_bytes` ([`DEFAULT_MAX_BYTES`] unless set), and temporary files a crashed writer left
//! behind are removed once they are an hour old. Plans of older binaries are never read, so
//! they age out this way.

use crate::{CompileOptions, Plan};
use orrery_ir::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The layout of a plan file; bumped whenever what is stored changes meaning.
pub const PLAN_STORE_FORMAT: u32 = 1;

/// Files larger than this are not read (a plan of a 7B transformer is a few MB).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The plan files a store keeps by default, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A temporary file this old was left by a writer that died.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Everything that changes a compiled plan. Two keys that compare equal give the same plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreKey {
    /// The running binary ([`binary_fingerprint`]): a rebuilt binary never reads old plans.
    pub binary: String,
    /// What the graph is built from ([`component_identity`]): config and weight index hashes.
    pub component: String,
    pub method: String,
    /// Input name → dims.
    pub shapes: BTreeMap<String, Vec<usize>>,
    pub options: CompileOptions,
}

impl StoreKey {
    /// The file name of this key's plan: a 128-bit hash of the key.
    fn file_name(&self) -> String {
        let json = serde_json::to_vec(self).expect("a key serializes");
        format!("{:032x}.plan.json", fnv1a_128(&json))
    }
}

/// A cache file that could not be used (a miss) or a write that failed. Not an error of the
/// run: the plan is compiled instead; callers log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreWarning {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for StoreWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plan cache {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for StoreWarning {}

/// The first line of a plan file; the plan's JSON follows it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    key: StoreKey,
    /// FNV-1a-128 of the plan's bytes (after the header line), in hex.
    plan_hash: String,
}

/// A file's bytes: the header line, then the plan.
fn encode(key: &StoreKey, plan: &Plan) -> Vec<u8> {
    let body = serde_json::to_vec(plan).expect("a plan serializes");
    let header =
        Header { format: PLAN_STORE_FORMAT, key: key.clone(), plan_hash: format!("{:032x}", fnv1a_128(&body)) };
    let mut bytes = serde_json::to_vec(&header).expect("a header serializes");
    bytes.push(b'\n');
    bytes.extend(body);
    bytes
}

/// Only the format of a header, to say why a header of another layout did not parse.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// A directory of plan files.
#[derive(Clone, Debug)]
pub struct PlanStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl PlanStore {
    /// Opens (creating it if needed) the directory `dir` and checks that it is writable. An
    /// error here means the caller should run without a store.
    pub fn open(dir: &Path) -> Result<PlanStore, StoreWarning> {
        let warn = |reason: String| StoreWarning { path: dir.to_path_buf(), reason };
        std::fs::create_dir_all(dir).map_err(|e| warn(format!("cannot create the directory: {e}")))?;
        let probe = dir.join(format!(".probe.tmp.{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| warn(format!("cannot write to the directory: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        Ok(PlanStore { dir: dir.to_path_buf(), max_bytes: DEFAULT_MAX_BYTES })
    }

    /// Keeps at most `max_bytes` of plan files (the least recently used go first).
    pub fn with_max_bytes(self, max_bytes: u64) -> PlanStore {
        PlanStore { max_bytes, ..self }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Deletes the least recently used plan files until the rest take at most `max_bytes`
    /// (never `keep`, the file just written), and temporary files older than an hour; returns
    /// how many files it deleted. Files it cannot examine or delete are left alone.
    fn prune(&self, keep: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let now = std::time::SystemTime::now();
        let mut plans = Vec::new();
        let mut removed = 0;
        for entry in entries.flatten() {
            let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
            let Ok(meta) = entry.metadata() else { continue };
            let modified = meta.modified().unwrap_or(now);
            if name.contains(".tmp.") {
                if now.duration_since(modified).is_ok_and(|age| age > STALE_TMP) && std::fs::remove_file(&path).is_ok()
                {
                    removed += 1;
                }
            } else if name.ends_with(".plan.json") && meta.is_file() {
                plans.push((modified, meta.len(), path));
            }
        }
        let mut total: u64 = plans.iter().map(|p| p.1).sum();
        plans.sort_by_key(|p| p.0);
        for (_, len, path) in plans {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed += 1;
            }
        }
        removed
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the plan of `key` is kept.
    pub fn path(&self, key: &StoreKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The stored plan of `key`: `Ok(None)` when there is none, `Err` when a file is there but
    /// cannot be used (unreadable, malformed, another format, another key, or a plan that fails
    /// [`Plan::verify`]); both are misses, and the next [`PlanStore::store`] replaces the file.
    pub fn load(&self, key: &StoreKey) -> Result<Option<Plan>, StoreWarning> {
        let path = self.path(key);
        let warn = |reason: String| StoreWarning { path: path.clone(), reason };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(warn(format!("cannot open: {e}"))),
        };
        let len = file.metadata().map_err(|e| warn(format!("cannot read: {e}")))?.len();
        if len > MAX_FILE_BYTES {
            return Err(warn(format!("{len} bytes is more than a plan file may hold ({MAX_FILE_BYTES})")));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_BYTES + 1), &mut bytes)
            .map_err(|e| warn(format!("cannot read: {e}")))?;
        // Compact JSON holds no raw newline, so the first one ends the header.
        let Some(split) = bytes.iter().position(|&b| b == b'\n') else {
            return Err(warn("not a plan file: no header line".into()));
        };
        let (head, body) = (&bytes[..split], &bytes[split + 1..]);
        let format_error = |format: u32| warn(format!("format {format} where this binary reads {PLAN_STORE_FORMAT}"));
        let header: Header = match serde_json::from_slice(head) {
            Ok(h) => h,
            Err(e) => {
                return Err(match serde_json::from_slice::<FormatOnly>(head) {
                    Ok(h) if h.format != PLAN_STORE_FORMAT => format_error(h.format),
                    _ => warn(format!("not a plan file: {e}")),
                })
            }
        };
        if header.format != PLAN_STORE_FORMAT {
            return Err(format_error(header.format));
        }
        if header.key != *key {
            return Err(warn("the file holds the plan of another key (a stale file or a hash collision)".into()));
        }
        if header.plan_hash != format!("{:032x}", fnv1a_128(body)) {
            return Err(warn("the plan's bytes do not match their hash (a damaged or truncated file)".into()));
        }
        let plan: Plan = serde_json::from_slice(body).map_err(|e| warn(format!("not a plan: {e}")))?;
        // Verification is written for plans from this compiler; a damaged plan must not
        // panic it, so any panic is one more reason to refuse the file.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.verify())) {
            Ok(Ok(())) => {
                // Recently used: the last to be pruned.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                Ok(Some(plan))
            }
            Ok(Err(e)) => Err(warn(format!("the stored plan is invalid: {e}"))),
            Err(_) => Err(warn("the stored plan is invalid: its verification panicked".into())),
        }
    }

    /// Writes `plan` as the plan of `key`, atomically (a temporary file renamed into place).
    pub fn store(&self, key: &StoreKey, plan: &Plan) -> Result<(), StoreWarning> {
        let path = self.path(key);
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let warn = |reason: String| StoreWarning { path: path.clone(), reason };
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&encode(key, plan))?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            warn(format!("cannot write: {e}"))
        })?;
        self.prune(&path);
        Ok(())
    }
}

/// The running binary: the package version plus the executable's size and modification time,
/// so plans written by another build are never read. `None` when the executable cannot be
/// found or examined (then no plan can safely be reused).
pub fn binary_fingerprint() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let meta = std::fs::metadata(exe).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!(
        "orrery {} exe {} bytes mtime {}.{:09}",
        env!("CARGO_PKG_VERSION"),
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// A component's identity for [`StoreKey::component`]: 128-bit hashes of its config file's
/// bytes and of its weight index (every tensor's name, dtype and shape, in the order given;
/// callers give them sorted by name), which is all a graph builder reads.
pub fn component_identity<'a>(
    config: &[u8],
    weights: impl IntoIterator<Item = (&'a str, DType, &'a [usize])>,
) -> String {
    let mut index = Vec::new();
    for (name, dtype, shape) in weights {
        // Lengths first, so that no two different indexes give the same bytes.
        index.extend((name.len() as u64).to_le_bytes());
        index.extend(name.as_bytes());
        index.extend(dtype.name().as_bytes());
        index.push(0);
        index.extend((shape.len() as u64).to_le_bytes());
        for &d in shape {
            index.extend((d as u64).to_le_bytes());
        }
    }
    format!("config {:032x} weights {:032x}", fnv1a_128(config), fnv1a_128(&index))
}

/// FNV-1a, 128-bit.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, compile_with, Passes};
    use orrery_ir::{AttentionMask, GraphBuilder, Op, RefTensor, UnaryOp};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("orrery-plan-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn key(method: &str) -> StoreKey {
        StoreKey {
            binary: binary_fingerprint().unwrap(),
            component: component_identity(b"{}", [("w", DType::BF16, &[16usize, 8][..])]),
            method: method.into(),
            shapes: BTreeMap::from([("x".to_string(), vec![4, 8])]),
            options: CompileOptions::default(),
        }
    }

    /// A small graph with a constant holding -inf and NaN, a non-finite clamp and attention.
    fn plan() -> Plan {
        let mut b = GraphBuilder::new();
        let x = b.input("x", DType::F32, [4, 8]).unwrap();
        let w = b.weight("w", DType::BF16, [16, 8]).unwrap();
        let h = b.linear("fc", x, w, None).unwrap();
        let a = b.unary("act", UnaryOp::Silu, h).unwrap();
        let c = b.op("clip", Op::Clamp { min: f64::NEG_INFINITY, max: 3.5 }, &[a]).unwrap();
        let q = b.reshape("q", c, &[1, 4, 16]).unwrap();
        let mask = [0.0, f64::NEG_INFINITY, -0.0, 1e-300].repeat(4);
        let mask = b.constant("mask", RefTensor::new(DType::F32, vec![4, 4], mask));
        let y = b.op("attn", Op::attention(0.25, AttentionMask::Additive), &[q, q, q, mask]).unwrap();
        b.output("y", y).unwrap();
        compile(b.finish().unwrap()).unwrap()
    }

    #[test]
    fn plans_round_trip_bit_for_bit_with_non_finite_constants() {
        let plan = plan();
        let json = serde_json::to_string(&plan).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        back.verify().unwrap();
        let unfused = compile_with(plan.graph.clone(), &CompileOptions { passes: Passes::None, ..Default::default() });
        unfused.unwrap().verify().unwrap();
    }

    #[test]
    fn store_then_load_gives_the_plan_and_other_keys_miss() {
        let dir = tmp("roundtrip");
        let store = PlanStore::open(&dir).unwrap();
        let (k, plan) = (key("forward"), plan());
        assert_eq!(store.load(&k), Ok(None));
        store.store(&k, &plan).unwrap();
        assert_eq!(store.load(&k).unwrap(), Some(plan.clone()));
        assert_eq!(store.load(&key("decode")), Ok(None), "another method is another file");
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_stale_or_invalid_files_are_misses_with_a_warning() {
        let dir = tmp("damaged");
        let store = PlanStore::open(&dir).unwrap();
        let (k, plan) = (key("forward"), plan());
        store.store(&k, &plan).unwrap();
        let path = store.path(&k);
        let good = std::fs::read(&path).unwrap();
        let miss = |bytes: &[u8], why: &str| {
            std::fs::write(&path, bytes).unwrap();
            let w = store.load(&k).expect_err("a miss with a warning");
            assert!(w.reason.contains(why), "{why}: {w}");
        };
        miss(&good[..good.len() / 2], "do not match their hash");
        let header_end = good.iter().position(|&b| b == b'\n').unwrap();
        miss(&good[..header_end / 2], "not a plan file");
        miss(b"\x00\xffgarbage", "not a plan file");
        miss(b"", "not a plan file");
        let text = String::from_utf8(good.clone()).unwrap();
        miss(text.replacen("\"format\":1", "\"format\":99", 1).as_bytes(), "format 99");
        miss(text.replacen("\"method\":\"forward\"", "\"method\":\"decode\"", 1).as_bytes(), "another key");
        miss(text.replacen("\"flops\":", "\"flops\":1", 1).as_bytes(), "do not match their hash");
        // The file of another key, under this key's name.
        miss(&encode(&key("decode"), &plan), "another key");
        // A plan whose graph, memory plan or kernels disagree.
        let mut bad = plan.clone();
        bad.kernels[0].frees.clear();
        // Well-formed files (their hash matches) of plans that do not verify.
        let write_plan = |p: &Plan| encode(&k, p);
        miss(&write_plan(&bad), "does not match");
        let mut bad = plan.clone();
        bad.flops += 1;
        miss(&write_plan(&bad), "flops");
        let mut bad = plan.clone();
        bad.memory.buffers[5] = None;
        miss(&write_plan(&bad), "invalid");
        let mut bad = plan.clone();
        bad.graph =
            orrery_ir::Graph::from_parts(bad.graph.clone().into_parts().0, vec![("y".into(), orrery_ir::NodeId(999))]);
        miss(&write_plan(&bad), "missing node");
        // Storing again replaces the damaged file.
        store.store(&k, &plan).unwrap();
        assert_eq!(store.load(&k).unwrap(), Some(plan));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_damage_is_always_a_miss() {
        let dir = tmp("fuzz");
        let store = PlanStore::open(&dir).unwrap();
        let (k, plan) = (key("forward"), plan());
        store.store(&k, &plan).unwrap();
        let path = store.path(&k);
        let good = std::fs::read(&path).unwrap();
        // A deterministic xorshift walk over single-digit and single-byte changes.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut bytes = good.clone();
            let at = (next() % bytes.len() as u64) as usize;
            let old = bytes[at];
            while bytes[at] == old {
                bytes[at] = if old.is_ascii_digit() { b'0' + (next() % 10) as u8 } else { next() as u8 };
            }
            std::fs::write(&path, &bytes).unwrap();
            let w = store.load(&k).expect_err("every change is seen");
            assert!(!w.reason.contains("panicked"), "{w}");
        }
        // Changed digits in a well-formed file (the hash recomputed): what verification and
        // the parser see. Such a file loads only when the plan still verifies.
        let body = serde_json::to_string(&plan).unwrap();
        let digits: Vec<usize> = body.bytes().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
        let (mut loaded, mut refused) = (0, 0);
        for _ in 0..300 {
            let mut changed = body.clone().into_bytes();
            let at = digits[(next() % digits.len() as u64) as usize];
            changed[at] = b'0' + (next() % 10) as u8;
            let Ok(changed) = serde_json::from_slice::<Plan>(&changed) else { continue };
            std::fs::write(&path, encode(&k, &changed)).unwrap();
            match store.load(&k) {
                Ok(p) => {
                    p.unwrap().verify().unwrap();
                    loaded += 1;
                }
                Err(w) => {
                    assert!(!w.reason.contains("panicked"), "{w}");
                    refused += 1;
                }
            }
        }
        println!("digit changes: {loaded} plans still verify, {refused} refused");
        assert!(refused > 0);
        // Cut anywhere.
        for _ in 0..50 {
            let at = (next() % good.len() as u64) as usize;
            std::fs::write(&path, &good[..at]).unwrap();
            store.load(&k).expect_err("a truncated file is a miss");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_least_recently_used_plans_go_first_when_the_store_is_full() {
        let dir = tmp("prune");
        let plan = plan();
        let size = encode(&key("a"), &plan).len() as u64;
        // Room for two files.
        let store = PlanStore::open(&dir).unwrap().with_max_bytes(2 * size + size / 2);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        store.store(&key("a"), &plan).unwrap();
        store.store(&key("b"), &plan).unwrap();
        // `a` is older on disk, but a hit makes it the most recently used.
        for k in ["a", "b"] {
            std::fs::File::options().append(true).open(store.path(&key(k))).unwrap().set_modified(old).unwrap();
        }
        assert!(store.load(&key("a")).unwrap().is_some());
        // A crashed writer's temporary file, two hours old.
        let stale = dir.join("x.plan.json.tmp.1");
        std::fs::write(&stale, b"half").unwrap();
        std::fs::File::options()
            .append(true)
            .open(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
        store.store(&key("c"), &plan).unwrap();
        assert!(store.path(&key("a")).exists(), "recently used, kept");
        assert!(!store.path(&key("b")).exists(), "least recently used, deleted");
        assert!(store.path(&key("c")).exists(), "just written, kept");
        assert!(!stale.exists());
        // A store smaller than one plan still keeps the plan it just wrote.
        let tiny = PlanStore::open(&dir).unwrap().with_max_bytes(1);
        tiny.store(&key("d"), &plan).unwrap();
        assert!(tiny.path(&key("d")).exists() && !tiny.path(&key("a")).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn component_identity_depends_on_config_dtypes_and_shapes() {
        let w = |dtype, shape: &'static [usize]| component_identity(b"{\"a\": 1}", [("w", dtype, shape)]);
        let base = w(DType::BF16, &[16, 8]);
        assert_eq!(base, w(DType::BF16, &[16, 8]));
        assert_ne!(base, w(DType::F32, &[16, 8]));
        assert_ne!(base, w(DType::BF16, &[8, 16]));
        assert_ne!(base, component_identity(b"{\"a\": 2}", [("w", DType::BF16, &[16usize, 8][..])]));
        assert_ne!(base, component_identity(b"{\"a\": 1}", [("v", DType::BF16, &[16usize, 8][..])]));
        let (k, mut other) = (key("forward"), key("forward"));
        other.shapes.insert("x".into(), vec![2, 8]);
        assert_ne!(k.file_name(), other.file_name());
        let mut other = key("forward");
        other.options.passes = Passes::None;
        assert_ne!(k.file_name(), other.file_name());
    }
}
