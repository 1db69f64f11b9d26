//! Every committed fixture (written by tools/reference/make_format_fixtures.py with real
//! torch / safetensors) reads back with torch's dtypes, shapes, strides and exact values.

mod common;

use std::sync::Arc;

use common::{check_values, expected, fixture, floats, usizes};
use orrery_formats::{
    describe_folder, inspect, open_weights, FolderDescription, FormatError, SafetensorsFile, TensorData,
    TorchCheckpoint, WeightSource,
};

#[test]
fn safetensors_single_file() {
    let src = open_weights(fixture("single.safetensors")).unwrap();
    check_values(src.as_ref(), "single.safetensors");
    for n in src.names() {
        assert!(src.load(&n).unwrap().is_zero_copy(), "{n} should be mapped");
    }
    let f = SafetensorsFile::open(&fixture("single.safetensors")).unwrap();
    let md: Vec<(String, String)> = f.metadata().to_vec();
    assert!(md.contains(&("note".to_string(), "orrery fixture".to_string())));
}

#[test]
fn safetensors_unsupported_dtype_names_tensor_and_dtype() {
    let path = fixture("unsupported_dtype.safetensors");
    let src = open_weights(&path).unwrap();
    check_values(src.as_ref(), "unsupported_dtype.safetensors");
    let err = src.load("double").unwrap_err();
    assert!(matches!(err, FormatError::UnsupportedDtype { .. }));
    let msg = err.to_string();
    assert!(msg.contains("'double'") && msg.contains("F64") && msg.contains("unsupported_dtype.safetensors"), "{msg}");
}

#[test]
fn safetensors_sharded_folder_and_index() {
    let dir = fixture("sharded");
    check_values(open_weights(&dir).unwrap().as_ref(), "sharded");
    let idx = open_weights(dir.join("model.safetensors.index.json")).unwrap();
    check_values(idx.as_ref(), "sharded");
    let r = idx.report();
    assert_eq!(r.files.len(), 2);
    assert!(idx.load("nope").unwrap_err().to_string().contains("no tensor named 'nope'"));
}

#[test]
fn sharded_index_with_missing_shard_names_the_file() {
    let err = open_weights(fixture("sharded_missing")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FormatError::MissingShard { .. }), "{msg}");
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

fn check_torch(file: &str) {
    let path = fixture(file);
    let ck = TorchCheckpoint::open(&path).unwrap();
    check_values(&ck, file);
    let exp = expected();
    for (name, e) in exp["files"][file]["tensors"].as_object().unwrap() {
        let t = ck.tensor(name).unwrap();
        assert_eq!(t.stride(), usizes(&e["stride"]).as_slice(), "{file}:{name} stride");
        assert_eq!(t.storage_offset() as u64, e["storage_offset"].as_u64().unwrap(), "{file}:{name} offset");
        assert_eq!(t.is_contiguous(), e["contiguous"].as_bool().unwrap(), "{file}:{name} contiguity");
    }
    assert!(ck.unknown_globals().is_empty(), "{:?}", ck.unknown_globals());
    assert!(ck.problems().is_empty(), "{:?}", ck.problems());
}

#[test]
fn torch_all_dtypes_strided_and_shared_protocol_2() {
    check_torch("tensors.pt");
}

#[test]
fn torch_protocol_4() {
    check_torch("tensors_p4.pt");
}

#[test]
fn torch_transposed_view_is_gathered_and_shared_views_are_zero_copy() {
    let ck = TorchCheckpoint::open(&fixture("tensors.pt")).unwrap();
    let t = ck.load("transposed").unwrap();
    assert!(!t.is_zero_copy());
    assert_eq!(t.shape, vec![4, 3]);
    assert_eq!(t.to_f64_vec(), vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);

    let base = ck.tensor("shared_base").unwrap();
    let slice = ck.tensor("shared_slice").unwrap();
    let col = ck.tensor("shared_column").unwrap();
    assert_eq!(base.storage_key, slice.storage_key);
    assert_eq!(base.storage_key, col.storage_key);
    assert_eq!((slice.storage_offset(), col.storage_offset(), col.stride()), (2, 1, &[5][..]));
    // Both contiguous views borrow the same map, 8 bytes apart.
    let (TensorData::Mapped { owner: o1, start: s1, .. }, TensorData::Mapped { owner: o2, start: s2, .. }) =
        (ck.load("shared_base").unwrap().data, ck.load("shared_slice").unwrap().data)
    else {
        panic!("expected mapped tensors")
    };
    assert!(Arc::ptr_eq(&o1, &o2));
    assert_eq!(s2 - s1, 8);
    assert_eq!(ck.load("shared_column").unwrap().to_f64_vec(), vec![1.0, 6.0]);
    // The zip aligns storages to 64 bytes, so f32 data is aligned for zero-copy use.
    let (_, start, len) = ck.load("f32").unwrap().into_shared();
    assert_eq!((start % 64, len), (0, 24));
}

#[test]
fn torch_bin_nested_and_lightning() {
    check_torch("pytorch_model.bin");
    check_torch("nested.pt");
    check_torch("lightning.ckpt");
    let ck = TorchCheckpoint::open(&fixture("nested.pt")).unwrap();
    assert!(ck.tensor("model.enc.w").is_some());
    assert!(ck.tensor("optimizer.state.0.exp_avg").is_some());
    assert!(ck.tensor("ema.1").is_some());
    let l = open_weights(fixture("lightning.ckpt")).unwrap();
    assert_eq!(l.load("state_dict.net.weight").unwrap().to_f64_vec(), vec![1.0; 4]);
}

#[test]
fn legacy_torch_file_is_refused_with_advice() {
    let err = open_weights(fixture("legacy.pt")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FormatError::LegacyTorchFormat { .. }), "{msg}");
    assert!(msg.contains("legacy.pt") && msg.contains("torch.save") && msg.contains("1.6"), "{msg}");
}

#[test]
fn compressed_storage_names_the_entry_and_other_tensors_load() {
    let exp = expected();
    let entry = exp["files"]["compressed_storage.pt"]["compressed_entry"].as_str().unwrap().to_string();
    let src = open_weights(fixture("compressed_storage.pt")).unwrap();
    assert_eq!(src.load("b").unwrap().to_f64_vec(), vec![3.0, 4.0]);
    let err = src.load("a").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FormatError::CompressedEntry { .. }), "{msg}");
    assert!(msg.contains(&entry) && msg.contains("compression method 8"), "{msg}");
}

#[test]
fn big_endian_checkpoint_is_refused() {
    let err = open_weights(fixture("bigendian.pt")).unwrap_err();
    assert!(matches!(err, FormatError::UnsupportedByteOrder { .. }), "{err}");
    assert!(err.to_string().contains("little-endian"));
}

#[test]
fn folder_resolution() {
    let p = fixture("pipeline");
    let t = open_weights(p.join("transformer")).unwrap();
    assert_eq!(t.names(), vec!["proj.weight"]);
    assert!(t.path().ends_with("diffusion_pytorch_model.safetensors"));
    let v = open_weights(p.join("vae")).unwrap();
    assert_eq!(v.info("conv.weight").unwrap().shape, vec![1, 1, 1, 1]);
    let te = open_weights(p.join("text_encoder")).unwrap();
    assert_eq!(te.load("shared.weight").unwrap().to_f64_vec(), vec![0.0; 12]);
    let err = open_weights(&p).unwrap_err().to_string();
    assert!(err.contains("model_index.json") && err.contains("transformer/"), "{err}");
    assert!(open_weights(p.join("scheduler")).unwrap_err().to_string().contains("no weights found"));
}

#[test]
fn describe_pipeline_and_component() {
    let p = fixture("pipeline");
    let FolderDescription::Pipeline { class_name, components, .. } = describe_folder(&p).unwrap() else {
        panic!("not a pipeline")
    };
    assert_eq!(class_name.as_deref(), Some("CosmosTextToWorldPipeline"));
    let find = |n: &str| components.iter().find(|c| c.name == n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(find("transformer").class_name.as_deref(), Some("CosmosTransformer3DModel"));
    assert_eq!(find("vae").class_name.as_deref(), Some("AutoencoderKLCosmos"));
    assert_eq!(find("text_encoder").class_name.as_deref(), Some("T5EncoderModel"));
    assert_eq!(find("text_encoder").declared, Some(("transformers".to_string(), "T5EncoderModel".to_string())));
    let sched = find("scheduler");
    assert!(!sched.has_config && sched.weight_files.is_empty());
    assert!(find("vae").weight_files[0].ends_with("diffusion_pytorch_model.bin"));

    let FolderDescription::Component { component, weights } = describe_folder(p.join("transformer")).unwrap() else {
        panic!("not a component")
    };
    assert_eq!(component.class_name.as_deref(), Some("CosmosTransformer3DModel"));
    let w = weights.unwrap();
    assert_eq!(w.tensors.len(), 1);
    assert_eq!(w.total_bytes, 8);
    assert_eq!(w.tensors[0].dtype.name(), "bf16");
}

#[test]
fn inspect_lists_tensors_and_totals() {
    let ins = inspect(fixture("tensors.pt")).unwrap();
    assert_eq!(ins.formats, vec!["pytorch-zip"]);
    let exp = expected();
    let n = exp["files"]["tensors.pt"]["tensors"].as_object().unwrap().len();
    assert_eq!(ins.tensors.len(), n);
    assert_eq!(ins.total_bytes, ins.tensors.iter().map(|t| t.byte_len as u64).sum::<u64>());
    let text = ins.to_string();
    assert!(text.contains("transposed") && text.contains("strided"), "{text}");
    let json = ins.to_json();
    assert_eq!(json["tensors"].as_array().unwrap().len(), n);

    let s = inspect(fixture("single.safetensors")).unwrap();
    assert!(s.metadata.contains(&("format".to_string(), "pt".to_string())));
    let f16 = s.tensors.iter().find(|t| t.name == "f16").unwrap();
    assert_eq!((f16.byte_len, f16.shape.clone()), (8, vec![4]));
    let _ = floats(&exp["files"]["single.safetensors"]["tensors"]["f16"]["values"]);
}

/// The test-time checkpoint writer (ZIP64 records, 64-byte aligned stored entries, CRCs)
/// produces what our reader expects; with ORRERY_EXPORT_DIR set the file is kept there so
/// it can be checked against torch (`torch.load(p, weights_only=True)`, `zipfile.testzip()`).
#[test]
fn test_writer_round_trip() {
    let dir = common::TempDir::new("writer");
    let path = match std::env::var_os("ORRERY_EXPORT_DIR") {
        Some(d) => std::path::PathBuf::from(d).join("rust_written.pt"),
        None => dir.path("w.pt"),
    };
    let mut p = common::Pickler::new();
    p.raw(b"}(").str("x").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.str("xt").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.str("i").tensor("LongStorage", "1", 2, 1, &[1], &[1]).raw(b"u");
    let ints: Vec<u8> = [5i64, -7].iter().flat_map(|v| v.to_le_bytes()).collect();
    common::write_checkpoint(
        &path,
        &p.finish(),
        &[("0", common::f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), ("1", ints)],
    );
    let ck = TorchCheckpoint::open(&path).unwrap();
    assert_eq!(ck.load("x").unwrap().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(ck.load("xt").unwrap().to_f64_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(ck.load("i").unwrap().to_f64_vec(), vec![-7.0]);
    assert_eq!(ck.archive_prefix(), "archive/");
}
