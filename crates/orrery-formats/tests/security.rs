//! Hostile checkpoints: nothing is ever executed, unknown globals are reported with their
//! keys, only tensors that depend on them fail, and inconsistent descriptors are refused.

mod common;

use std::path::Path;

use common::{check_values, expected, f32_bytes, fixture, write_checkpoint, Pickler, TempDir};
use orrery_formats::{inspect, open_weights, FormatError, TorchCheckpoint, WeightSource};

fn marker() -> String {
    expected()["malicious_marker"].as_str().unwrap().to_string()
}

/// Opens, inspects and loads everything a source offers.
fn exercise(path: &Path) -> orrery_formats::Inspection {
    let src = open_weights(path).unwrap();
    for n in src.names() {
        src.load(&n).unwrap();
    }
    for p in src.report().problems {
        assert!(src.load(&p.key).is_err());
    }
    inspect(path).unwrap()
}

#[test]
fn posix_system_payload_is_never_executed() {
    let m = marker();
    let _ = std::fs::remove_file(&m);
    let ins = exercise(&fixture("malicious.pt"));
    assert!(!Path::new(&m).exists(), "the payload ran: {m} exists");
    let g = ins.unknown_global("posix.system").expect("posix.system reported");
    assert_eq!(g.keys, vec!["evil"]);
    check_values(open_weights(fixture("malicious.pt")).unwrap().as_ref(), "malicious.pt");
    let text = ins.to_string();
    assert!(text.contains("posix.system") && text.contains("never executed"), "{text}");
}

#[test]
fn handmade_payloads_global_stack_global_and_tensor_dependency() {
    let m = marker();
    let _ = std::fs::remove_file(&m);
    let path = fixture("malicious_handmade.pt");
    let ins = exercise(&path);
    assert!(!Path::new(&m).exists(), "the payload ran: {m} exists");
    assert_eq!(ins.unknown_global("posix.system").unwrap().keys, vec!["evil"]);
    assert_eq!(ins.unknown_global("builtins.eval").unwrap().keys, vec!["evil_eval", "param_evil"]);
    let src = open_weights(&path).unwrap();
    check_values(src.as_ref(), "malicious_handmade.pt");
    let err = src.load("param_evil").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FormatError::UnknownGlobal { .. }), "{msg}");
    assert!(msg.contains("builtins.eval") && msg.contains("'param_evil'"), "{msg}");
    assert!(!Path::new(&m).exists());
}

#[test]
fn unknown_globals_under_unused_keys_do_not_block_other_tensors() {
    let path = fixture("unknown_global.pt");
    let src = open_weights(&path).unwrap();
    check_values(src.as_ref(), "unknown_global.pt");
    let ins = inspect(&path).unwrap();
    let exp = expected();
    for (g, keys) in exp["files"]["unknown_global.pt"]["unknown_globals"].as_object().unwrap() {
        let want: Vec<String> = keys.as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
        assert_eq!(ins.unknown_global(g).unwrap_or_else(|| panic!("{g} not reported: {ins}")).keys, want);
    }
    // The tensor subclass depends on an unknown global: its load names both.
    let err = src.load("sub").unwrap_err().to_string();
    assert!(err.contains("orrery_fixture.MyTensor") && err.contains("'sub'"), "{err}");
    assert!(ins.problems.iter().any(|p| p.key == "sub"));
    // Non-tensor keys are not tensors.
    assert!(matches!(src.load("counter").unwrap_err(), FormatError::TensorNotFound { .. }));
}

fn open_pickle(pickle: Vec<u8>, storages: &[(&str, Vec<u8>)]) -> (TempDir, Result<TorchCheckpoint, FormatError>) {
    let dir = TempDir::new("hostile");
    let p = dir.path("x.pt");
    write_checkpoint(&p, &pickle, storages);
    let r = TorchCheckpoint::open(&p);
    (dir, r)
}

fn one_tensor(ty: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = Pickler::new();
    p.raw(b"}(").str("t").tensor(ty, "0", numel, offset, size, stride).raw(b"u");
    p.finish()
}

fn tensor_error(pickle: Vec<u8>, storage: Vec<u8>) -> String {
    let (_d, r) = open_pickle(pickle, &[("0", storage)]);
    let ck = r.unwrap();
    assert!(ck.names().is_empty());
    ck.load("t").unwrap_err().to_string()
}

#[test]
fn hostile_descriptors_are_refused_per_tensor() {
    let st = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    // View past the storage end.
    let e = tensor_error(one_tensor("FloatStorage", 4, 2, &[3], &[1]), st.clone());
    assert!(e.contains("needs 20 bytes") && e.contains("'t'"), "{e}");
    // Negative stride / offset.
    assert!(tensor_error(one_tensor("FloatStorage", 4, 0, &[2], &[-1]), st.clone()).contains("negative"));
    assert!(tensor_error(one_tensor("FloatStorage", 4, -1, &[2], &[1]), st.clone()).contains("negative"));
    // Overflowing shapes.
    assert!(
        tensor_error(one_tensor("FloatStorage", 4, 0, &[1 << 62, 1 << 62], &[1, 1]), st.clone()).contains("overflow")
    );
    // Rank mismatch.
    assert!(tensor_error(one_tensor("FloatStorage", 4, 0, &[2, 2], &[1]), st.clone()).contains("dimensions"));
    // Storage larger than its entry.
    assert!(tensor_error(one_tensor("FloatStorage", 1 << 40, 0, &[2], &[1]), st.clone()).contains("declares"));
    // Stride-0 expansion to petabytes: refused instead of allocating.
    let e = tensor_error(one_tensor("FloatStorage", 4, 0, &[1 << 40, 4], &[0, 1]), st.clone());
    assert!(e.contains("limit") && e.contains("contiguous"), "{e}");
    // An unsupported storage type, and a storage type that is not torch's.
    assert!(tensor_error(one_tensor("DoubleStorage", 2, 0, &[2], &[1]), st.clone()).contains("float64"));
    let mut p = Pickler::new();
    p.raw(b"}(").str("t").global("torch._utils", "_rebuild_tensor_v2").mark();
    p.mark().str("storage").global("evil", "Storage").str("0").str("cpu").int(4).tuple().raw(b"Q");
    p.int(0).int_tuple(&[4]).int_tuple(&[1]).raw(b"\x89N").tuple().raw(b"Ru");
    let e = tensor_error(p.finish(), st.clone());
    assert!(e.contains("evil.Storage") && e.contains("'t'"), "{e}");
}

#[test]
fn missing_storage_entry_and_conflicting_storage_types() {
    let (_d, r) = open_pickle(one_tensor("FloatStorage", 4, 0, &[4], &[1]), &[]);
    let e = r.unwrap().load("t").unwrap_err().to_string();
    assert!(e.contains("archive/data/0") && e.contains("missing"), "{e}");

    let mut p = Pickler::new();
    p.raw(b"}(").str("a").tensor("FloatStorage", "0", 4, 0, &[4], &[1]);
    p.str("b").tensor("LongStorage", "0", 2, 0, &[2], &[1]).raw(b"u");
    let (_d, r) = open_pickle(p.finish(), &[("0", f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
    let ck = r.unwrap();
    assert_eq!(ck.load("a").unwrap().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    assert!(ck.load("b").unwrap_err().to_string().contains("referenced both"));
}

#[test]
fn cyclic_and_exponential_object_graphs_terminate() {
    // d = {}; d['self'] = d
    let (_d, r) = open_pickle(b"\x80\x02}q\x00X\x04\x00\x00\x00selfh\x00s.".to_vec(), &[]);
    let ck = r.unwrap();
    assert!(ck.names().is_empty());
    assert!(ck.problems().iter().any(|p| p.message.contains("nested deeper")));

    // l0 = [t]; l1 = [l0, l0]; ... l40 = [l39, l39]: 2^40 paths through 41 lists.
    let mut p = Pickler::new();
    p.raw(b"]q\x00");
    for i in 1..=40u8 {
        p.raw(b"(h").raw(&[i - 1]).raw(b"h").raw(&[i - 1]).raw(b"lq").raw(&[i]);
    }
    let (_d, r) = open_pickle(p.finish(), &[]);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("too large to flatten"), "{e}");
}

#[test]
fn lying_zip_and_pickle_structures() {
    let dir = TempDir::new("lies");
    // Not a zip at all, empty, and a zip without data.pkl.
    let p = dir.path("a.pt");
    std::fs::write(&p, b"hello world, not a checkpoint").unwrap();
    assert!(open_weights(&p).unwrap_err().to_string().contains("end-of-central-directory"));
    std::fs::write(&p, b"").unwrap();
    assert!(open_weights(&p).unwrap_err().to_string().contains("empty"));
    let mut w = common::TorchZipWriter::create(&p, "archive");
    w.add("hello.txt", b"hi");
    w.finish();
    assert!(open_weights(&p).unwrap_err().to_string().contains("data.pkl"));
    // Malformed pickle: error names the entry and offset.
    let (_d, r) = open_pickle(b"\x80\x02}q\x00h\x09.".to_vec(), &[]);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("archive/data.pkl") && e.contains("memo index 9"), "{e}");
}

#[test]
fn rarer_torch_constructors() {
    // _rebuild_tensor_v3 over an UntypedStorage (numel in bytes) with a bf16 dtype global,
    // _rebuild_parameter_with_state, and _rebuild_from_type_v2 with a plain torch.Tensor.
    let bf16: Vec<u8> = [1.0f32, -2.0, 0.5].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let mut p = Pickler::new();
    p.raw(b"}(").str("v3").global("torch._utils", "_rebuild_tensor_v3").mark();
    p.mark().str("storage").global("torch.storage", "UntypedStorage").str("0").str("cpu").int(6).tuple().raw(b"Q");
    p.int(1).int_tuple(&[2]).int_tuple(&[1]).raw(b"\x89").global("collections", "OrderedDict").raw(b")R");
    p.global("torch", "bfloat16").tuple().raw(b"R");
    p.str("pws").global("torch._utils", "_rebuild_parameter_with_state").mark();
    p.tensor("FloatStorage", "1", 2, 0, &[2], &[1]).raw(b"\x88").global("collections", "OrderedDict");
    p.raw(b")R}").tuple().raw(b"R");
    p.str("ft").global("torch._tensor", "_rebuild_from_type_v2").mark();
    p.global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor").mark();
    p.mark().str("storage").global("torch", "FloatStorage").str("1").str("cpu").int(2).tuple().raw(b"Q");
    p.int(1).int_tuple(&[1]).int_tuple(&[1]).raw(b"\x89N").tuple().raw(b"}").tuple().raw(b"R");
    p.str("u16").global("torch._utils", "_rebuild_tensor_v3").mark();
    p.mark().str("storage").global("torch.storage", "UntypedStorage").str("0").str("cpu").int(6).tuple().raw(b"Q");
    p.int(0).int_tuple(&[3]).int_tuple(&[1]).raw(b"\x89N").global("torch", "uint16").tuple().raw(b"R");
    p.raw(b"u");
    let (_d, r) = open_pickle(p.finish(), &[("0", bf16), ("1", f32_bytes(&[3.0, 4.0]))]);
    let ck = r.unwrap();
    let v3 = ck.load("v3").unwrap();
    assert_eq!((v3.dtype.name(), v3.to_f64_vec()), ("bf16", vec![-2.0, 0.5]));
    assert_eq!(ck.load("pws").unwrap().to_f64_vec(), vec![3.0, 4.0]);
    assert_eq!(ck.load("ft").unwrap().to_f64_vec(), vec![4.0]);
    let e = ck.load("u16").unwrap_err().to_string();
    assert!(e.contains("uint16") && e.contains("'u16'"), "{e}");
    assert!(ck.unknown_globals().is_empty(), "{:?}", ck.unknown_globals());
}

#[test]
fn big_plain_data_is_not_mistaken_for_an_attack() {
    // A checkpoint carrying a 3-million-element list of ints (dataset indices, say) and a
    // tensor: well within the flattening budget, nothing reported.
    let mut p = Pickler::new();
    p.raw(b"}(").str("ids").raw(b"](");
    for i in 0..3_000_000u32 {
        p.raw(&[b'K', i as u8]);
        if i % 1000 == 999 {
            p.raw(b"e(");
        }
    }
    p.raw(b"e").str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1]).raw(b"u");
    let (_d, r) = open_pickle(p.finish(), &[("0", f32_bytes(&[1.0, 2.0]))]);
    let ck = r.unwrap();
    assert_eq!(ck.names(), vec!["w"]);
    assert!(ck.problems().is_empty() && ck.unknown_globals().is_empty());
}
