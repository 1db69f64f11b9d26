//! Directory layouts built at test time: `.bin` shard indexes, index-less shard sets,
//! ambiguous folders, stale or hostile indexes, and combining files.

mod common;

use common::{f32_bytes, write_checkpoint, Pickler, TempDir};
use orrery_formats::folder::open_files;
use orrery_formats::{open_weights, resolve_weights, FormatError, WeightsLayout};

fn bin_shard(path: &std::path::Path, names: &[&str]) {
    let mut p = Pickler::new();
    p.raw(b"}(");
    let mut storages = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let key = i.to_string();
        p.str(n).tensor("FloatStorage", &key, 2, 0, &[2], &[1]);
        storages.push((key, f32_bytes(&[i as f32, 10.0 + i as f32])));
    }
    p.raw(b"u");
    let st: Vec<(&str, Vec<u8>)> = storages.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_checkpoint(path, &p.finish(), &st);
}

fn st_file(path: &std::path::Path, name: &str) {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#);
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(&1.5f32.to_le_bytes());
    std::fs::write(path, v).unwrap();
}

#[test]
fn pytorch_bin_shard_index() {
    let d = TempDir::new("binidx");
    bin_shard(&d.path("pytorch_model-00001-of-00002.bin"), &["a.w", "a.b"]);
    bin_shard(&d.path("pytorch_model-00002-of-00002.bin"), &["b.w"]);
    std::fs::write(
        d.path("pytorch_model.bin.index.json"),
        r#"{"metadata":{"total_size":24},"weight_map":{"a.w":"pytorch_model-00001-of-00002.bin",
            "a.b":"pytorch_model-00001-of-00002.bin","b.w":"pytorch_model-00002-of-00002.bin"}}"#,
    )
    .unwrap();
    assert!(matches!(resolve_weights(&d.0).unwrap(), WeightsLayout::Index(_)));
    let src = open_weights(&d.0).unwrap();
    let mut names = src.names();
    names.sort();
    assert_eq!(names, vec!["a.b", "a.w", "b.w"]);
    assert_eq!(src.load("a.b").unwrap().to_f64_vec(), vec![1.0, 11.0]);
    assert_eq!(src.load("b.w").unwrap().to_f64_vec(), vec![0.0, 10.0]);
    assert_eq!(src.total_bytes(), 24);
}

#[test]
fn stale_and_hostile_indexes_are_refused() {
    let d = TempDir::new("badidx");
    st_file(&d.path("s1.safetensors"), "x");
    let idx = d.path("model.safetensors.index.json");
    std::fs::write(&idx, r#"{"weight_map":{"y":"s1.safetensors"}}"#).unwrap();
    let e = open_weights(&idx).unwrap_err().to_string();
    assert!(e.contains("'y'") && e.contains("s1.safetensors") && e.contains("no such tensor"), "{e}");
    std::fs::write(&idx, r#"{"weight_map":{"x":"../../etc/passwd"}}"#).unwrap();
    assert!(open_weights(&idx).unwrap_err().to_string().contains("not a relative path"));
    std::fs::write(&idx, r#"{"weight_map":{"x":"/etc/passwd"}}"#).unwrap();
    assert!(open_weights(&idx).unwrap_err().to_string().contains("not a relative path"));
    std::fs::write(&idx, r#"{"nope":1}"#).unwrap();
    assert!(matches!(open_weights(&idx).unwrap_err(), FormatError::Index { .. }));
    std::fs::write(&idx, r#"{"weight_map":{"x":"s1.safetensors"}"#).unwrap();
    assert!(open_weights(&idx).unwrap_err().to_string().contains("not valid JSON"));
}

#[test]
fn indexless_shards_combine_and_ambiguity_is_explained() {
    let d = TempDir::new("shards");
    st_file(&d.path("model-00001-of-00002.safetensors"), "x");
    st_file(&d.path("model-00002-of-00002.safetensors"), "y");
    assert!(matches!(resolve_weights(&d.0).unwrap(), WeightsLayout::Shards(ref v) if v.len() == 2));
    let src = open_weights(&d.0).unwrap();
    assert_eq!(src.names(), vec!["x", "y"]);

    st_file(&d.path("extra.safetensors"), "z");
    let e = open_weights(&d.0).unwrap_err().to_string();
    assert!(e.contains("several candidate weight files") && e.contains("extra.safetensors"), "{e}");

    // Combining two files that both hold `x` is refused, naming both.
    st_file(&d.path("dup.safetensors"), "x");
    let err = open_files(&[d.path("model-00001-of-00002.safetensors"), d.path("dup.safetensors")]).unwrap_err();
    let e = err.to_string();
    assert!(e.contains("'x'") && e.contains("dup.safetensors"), "{e}");

    // A lone weights file with a non-standard name is found.
    let d2 = TempDir::new("lone");
    bin_shard(&d2.path("weights.pth"), &["w"]);
    assert_eq!(open_weights(&d2.0).unwrap().names(), vec!["w"]);
    // A .bin that is really safetensors is read by content.
    st_file(&d2.path("weights.pth"), "renamed");
    assert_eq!(open_weights(d2.path("weights.pth")).unwrap().names(), vec!["renamed"]);
}
