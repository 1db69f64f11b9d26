//! `T5Tokenizer` against transformers: the ids and attention masks in
//! tests/fixtures/t5_tiny/expected.json were produced by `T5TokenizerFast` with Cosmos' call
//! `tokenizer(prompt, padding="max_length", max_length=L, truncation=True,
//! add_special_tokens=True)` (tools/reference/make_t5_tokenizer.py), on a small SentencePiece
//! model trained with T5's conventions. Also: error messages for the folders users actually
//! have, and no panics on malformed files or arbitrary prompts.

use std::path::{Path, PathBuf};

use orrery_text::{T5Tokenizer, TextError};
use proptest::prelude::*;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/t5_tiny")
}

fn tokenizer() -> T5Tokenizer {
    T5Tokenizer::from_dir(&fixture_dir()).expect("fixture tokenizer loads")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("tokenizer.json")).unwrap()).unwrap()
}

/// A fresh, empty folder under the system temp dir (removed when dropped).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("orrery-text-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids_of(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

/// Checks every prompt of expected.json at every recorded max_length against `tok`.
fn check_against_transformers(tok: &T5Tokenizer) {
    let exp = expected();
    let pad = exp["pad_id"].as_i64().unwrap();
    let max_lengths: Vec<usize> =
        exp["max_lengths"].as_array().unwrap().iter().map(|m| m.as_u64().unwrap() as usize).collect();
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut mismatches = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        for &max_length in &max_lengths {
            let real = ids_of(&case[format!("ids_{max_length}")]);
            let mut want_ids = real.clone();
            want_ids.resize(max_length, pad);
            let mut want_mask = vec![1i64; real.len()];
            want_mask.resize(max_length, 0);

            let got = tok.encode(prompt, max_length).unwrap();
            if got.ids != want_ids || got.attention_mask != want_mask || got.length != real.len() {
                mismatches.push(format!(
                    "max_length {max_length}, prompt {prompt:?}:\n  want {real:?}\n  got  {:?} (length {})",
                    &got.ids[..got.length.min(got.ids.len())],
                    got.length
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn ids_and_masks_match_transformers() {
    check_against_transformers(&tokenizer());
}

#[test]
fn fixture_covers_truncation_and_special_ids() {
    let exp = expected();
    let tok = tokenizer();
    assert_eq!(tok.vocab_size() as i64, exp["vocab_size"].as_i64().unwrap());
    assert_eq!(i64::from(tok.eos_id()), exp["eos_id"].as_i64().unwrap());
    assert_eq!(i64::from(tok.pad_id()), exp["pad_id"].as_i64().unwrap());
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.token_to_id("<unk>")), (0, 1, Some(2)));
    assert!(tok.token_to_id("<extra_id_0>").is_some() && tok.token_to_id("<extra_id_99>").is_some());
    // The long prompt really is cut at 512: 511 prompt tokens + </s>, as transformers does.
    let long = exp["cases"].as_array().unwrap().iter().find(|c| c["untruncated_len"].as_u64().unwrap() > 512).unwrap();
    let enc = tok.encode(long["prompt"].as_str().unwrap(), 512).unwrap();
    assert_eq!(enc.length, 512);
    assert!(enc.attention_mask.iter().all(|&m| m == 1));
    assert_eq!(enc.ids[511], 1);
}

#[test]
fn loads_from_the_file_path_too() {
    let by_file = T5Tokenizer::from_file(&fixture_dir().join("tokenizer.json")).unwrap();
    let by_dir_arg = T5Tokenizer::from_dir(&fixture_dir().join("tokenizer.json")).unwrap();
    let p = "A robot arm picks up a red cube.";
    assert_eq!(by_file.encode(p, 32).unwrap(), tokenizer().encode(p, 32).unwrap());
    assert_eq!(by_dir_arg.encode(p, 32).unwrap(), tokenizer().encode(p, 32).unwrap());
    assert_eq!(by_file.path(), fixture_dir().join("tokenizer.json"));
}

#[test]
fn max_length_edge_cases() {
    let tok = tokenizer();
    // transformers: max_length=1 gives just </s>.
    let enc = tok.encode("a robot arm", 1).unwrap();
    assert_eq!((enc.ids, enc.attention_mask, enc.length), (vec![1], vec![1], 1));
    let err = tok.encode("a robot arm", 0).unwrap_err();
    assert!(matches!(err, TextError::MaxLengthTooSmall { max_length: 0, .. }), "{err}");
    assert!(err.to_string().contains("512"), "{err}");
}

#[test]
fn batch_and_decode() {
    let tok = tokenizer();
    let prompts = ["a robot arm", "", "The camera slowly pans across a busy city street at night."];
    let batch = tok.encode_batch(&prompts, 16).unwrap();
    assert_eq!(batch.len(), 3);
    for (p, enc) in prompts.iter().zip(&batch) {
        assert_eq!(enc, &tok.encode(p, 16).unwrap());
    }
    let enc = tok.encode("a robot arm picks up a red cube", 64).unwrap();
    assert_eq!(tok.decode(&enc.ids, true).unwrap(), "a robot arm picks up a red cube");
    assert!(tok.decode(&enc.ids[..enc.length], false).unwrap().ends_with("</s>"));
    assert!(matches!(tok.decode(&[4, -1], true), Err(TextError::IdOutOfRange { id: -1, position: 1 })));
}

/// transformers 5's T5Tokenizer rebuilds the pipeline from the vocabulary and the charsmap, so
/// it ignores the file's other normalisers, its pre-tokenizer format and a missing
/// post-processor (checked with transformers 5.24: a Lowercase added to the normalizer and
/// `post_processor: null` leave the ids unchanged). We must do the same.
#[test]
fn pipeline_is_rebuilt_like_transformers() {
    let mut json = fixture_json();
    let precompiled = json["normalizer"].clone();
    json["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [precompiled, {"type": "Lowercase"}]});
    json["post_processor"] = Value::Null;
    // The pre-0.14 Metaspace spelling found in older hub tokenizer.json files.
    json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}]});
    json["truncation"] =
        serde_json::json!({"max_length": 4, "stride": 0, "strategy": "LongestFirst", "direction": "Right"});
    let dir = TempDir::new("rebuilt");
    std::fs::write(dir.0.join("tokenizer.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    check_against_transformers(&T5Tokenizer::from_dir(&dir.0).unwrap());
}

#[test]
fn spiece_only_folder_says_how_to_make_tokenizer_json() {
    let dir = TempDir::new("spiece-only");
    std::fs::write(dir.0.join("spiece.model"), b"not really a model").unwrap();
    let err = T5Tokenizer::from_dir(&dir.0).unwrap_err();
    assert!(matches!(err, TextError::SentencePieceOnly { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.0.display().to_string()), "{msg}");
    assert!(msg.contains("T5TokenizerFast.from_pretrained(") && msg.contains(".save_pretrained("), "{msg}");
    // Passing the .model file itself gets the same advice.
    let err = T5Tokenizer::from_dir(&dir.0.join("spiece.model")).unwrap_err();
    assert!(matches!(err, TextError::SentencePieceOnly { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.0.display().to_string()), "{err}");
}

#[test]
fn missing_paths_are_named() {
    let dir = TempDir::new("missing");
    let gone = dir.0.join("no-such-folder");
    let err = T5Tokenizer::from_dir(&gone).unwrap_err();
    assert!(matches!(err, TextError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&gone.display().to_string()), "{err}");

    let err = T5Tokenizer::from_file(&dir.0.join("tokenizer.json")).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    // An empty folder: both file names are listed.
    let err = T5Tokenizer::from_dir(&dir.0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.0.display().to_string()) && msg.contains("tokenizer.json") && msg.contains("spiece.model")
    );

    // A pipeline root: point at its tokenizer/ subfolder.
    std::fs::create_dir_all(dir.0.join("tokenizer")).unwrap();
    std::fs::copy(fixture_dir().join("tokenizer.json"), dir.0.join("tokenizer/tokenizer.json")).unwrap();
    let msg = T5Tokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(msg.contains(&dir.0.join("tokenizer").display().to_string()), "{msg}");
}

/// Writes `bytes` as a tokenizer.json and expects `from_dir` to fail with an error that names it.
fn expect_refused(tag: &str, bytes: &[u8]) -> TextError {
    let dir = TempDir::new(tag);
    let path = dir.0.join("tokenizer.json");
    std::fs::write(&path, bytes).unwrap();
    let err = T5Tokenizer::from_dir(&dir.0).expect_err(tag);
    assert!(err.to_string().contains(&path.display().to_string()), "{tag}: {err}");
    err
}

#[test]
fn malformed_tokenizer_json_is_an_error_naming_the_file() {
    let good = std::fs::read(fixture_dir().join("tokenizer.json")).unwrap();
    assert!(matches!(expect_refused("garbage", b"\x00\xffnot json"), TextError::InvalidJson { .. }));
    assert!(matches!(expect_refused("truncated", &good[..good.len() / 2]), TextError::InvalidJson { .. }));
    assert!(matches!(expect_refused("array", b"[1, 2, 3]"), TextError::InvalidJson { .. }));
    assert!(matches!(expect_refused("empty-object", b"{}"), TextError::InvalidJson { .. }));

    let variant = |tag: &str, edit: &dyn Fn(&mut Value)| {
        let mut json = fixture_json();
        edit(&mut json);
        expect_refused(tag, &serde_json::to_vec(&json).unwrap())
    };
    let e = variant("bpe", &|j| j["model"] = serde_json::json!({"type": "BPE", "vocab": {"a": 0}, "merges": []}));
    assert!(matches!(e, TextError::NotT5 { .. }), "{e:?}");
    let e = variant("no-eos", &|j| {
        j["model"]["vocab"][1][0] = "<eos>".into();
        j["added_tokens"] = serde_json::json!([]);
    });
    assert!(matches!(e, TextError::NotT5 { .. }) && e.to_string().contains("</s>"), "{e:?}");
    let e = variant("bad-unk", &|j| j["model"]["unk_id"] = 100_000.into());
    assert!(matches!(e, TextError::InvalidJson { .. }), "{e:?}");
    let e = variant("vocab-type", &|j| j["model"]["vocab"] = "oops".into());
    assert!(matches!(e, TextError::InvalidJson { .. }), "{e:?}");
    let e = variant("charsmap-not-base64", &|j| j["normalizer"]["precompiled_charsmap"] = "@@@@".into());
    assert!(matches!(e, TextError::InvalidCharsmap { .. }), "{e:?}");
    let e = variant("charsmap-short", &|j| j["normalizer"]["precompiled_charsmap"] = "AAAA".into());
    assert!(matches!(e, TextError::InvalidCharsmap { .. }), "{e:?}");
    // A trie whose first units point outside the array (the `tokenizers` crate would panic).
    let e = variant("charsmap-bad-trie", &|j| j["normalizer"]["precompiled_charsmap"] = "CAAAAP///3////9/".into());
    assert!(matches!(e, TextError::InvalidCharsmap { .. }), "{e:?}");
}

#[test]
fn unk_id_missing_is_an_error_not_a_panic() {
    let mut json = fixture_json();
    json["model"]["unk_id"] = Value::Null;
    let dir = TempDir::new("no-unk");
    std::fs::write(dir.0.join("tokenizer.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    let tok = T5Tokenizer::from_dir(&dir.0).unwrap();
    // Hangul is not in the fixture's vocabulary.
    let err = tok.encode("한국어", 16).unwrap_err();
    assert!(matches!(err, TextError::Tokenize { .. }), "{err:?}");
    assert!(tok.encode("a robot", 16).is_ok());
}

/// Invariants of every encoding, whatever the prompt.
fn check_shape(tok: &T5Tokenizer, prompt: &str, max_length: usize) {
    let enc = tok.encode(prompt, max_length).unwrap();
    assert_eq!(enc.ids.len(), max_length);
    assert_eq!(enc.attention_mask.len(), max_length);
    assert!(enc.length >= 1 && enc.length <= max_length);
    assert!(enc.attention_mask[..enc.length].iter().all(|&m| m == 1));
    assert!(enc.attention_mask[enc.length..].iter().all(|&m| m == 0));
    assert!(enc.ids[enc.length..].iter().all(|&id| id == 0));
    assert_eq!(enc.ids[enc.length - 1], 1, "last real token is </s>");
    let vocab = tok.vocab_size() as i64;
    assert!(enc.ids.iter().all(|&id| (0..vocab).contains(&id)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_never_panics_on_arbitrary_unicode(prompt in any::<String>(), max_length in 1usize..40) {
        let tok = tokenizer_shared();
        check_shape(tok, &prompt, max_length);
        check_shape(tok, &prompt, 512);
    }

    #[test]
    fn encode_never_panics_on_fixture_like_text(
        prompt in "([a-zA-Z0-9 ]|[\t\n\r\u{3000}\u{00a0}]|[éüñçÅ]|[\u{0300}-\u{036f}]|[日本語中文]|[🤖🚗❤\u{fe0f}\u{200d}]|[ＡＢＣ１２３ﬁ①½]|<extra_id_[0-9]>|</s>|<pad>){0,80}",
    ) {
        let tok = tokenizer_shared();
        check_shape(tok, &prompt, 16);
        check_shape(tok, &prompt, 512);
    }
}

fn tokenizer_shared() -> &'static T5Tokenizer {
    static TOK: std::sync::OnceLock<T5Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(tokenizer)
}
