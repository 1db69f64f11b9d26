//! orrery's text front end: the T5 tokenizer Cosmos conditions on.
//!
//! Cosmos encodes each prompt with T5 after tokenising it the way diffusers does:
//! `tokenizer(prompt, padding="max_length", max_length=512, truncation=True,
//! add_special_tokens=True)` with transformers' `T5TokenizerFast`. [`T5Tokenizer`] reproduces
//! those ids and attention masks exactly from the checkpoint's `tokenizer.json`, using the
//! pure-Rust `tokenizers` crate (the same engine transformers runs).
//!
//! Like transformers 5's `T5Tokenizer`, we take only the vocabulary, the added tokens and the
//! SentencePiece normalisation table from the file, and rebuild the rest of the pipeline with
//! T5's fixed recipe (whitespace split + `▁` metaspace, `$A </s>` template). For tokenizer.json
//! files transformers wrote for T5 this is exactly what the file says; for hand-edited files it
//! keeps us in step with what transformers would actually do with them.
//!
//! ```no_run
//! use orrery_text::T5Tokenizer;
//! let tok = T5Tokenizer::from_dir(std::path::Path::new("Cosmos-1.0-Diffusion-7B-Text2World/tokenizer"))?;
//! let enc = tok.encode("A robot arm picks up a red cube.", 512)?;
//! assert_eq!(enc.ids.len(), 512);
//! assert_eq!(enc.ids[enc.length - 1], tok.eos_id() as i64);
//! # Ok::<(), orrery_text::TextError>(())
//! ```

mod charsmap;
mod error;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{PostProcessor, PreTokenizerWrapper, Tokenizer, TruncationDirection};

pub use error::TextError;

/// The file holding the tokenizer in a transformers/diffusers tokenizer folder.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// The SentencePiece model a T5 folder may hold instead of (or beside) [`TOKENIZER_JSON`].
pub const SPIECE_MODEL: &str = "spiece.model";

const EOS_TOKEN: &str = "</s>";
const PAD_TOKEN: &str = "<pad>";
/// T5's padding id when the vocabulary has no `<pad>` entry (every released T5 has it at 0).
const DEFAULT_PAD_ID: u32 = 0;

/// One tokenised prompt, padded to `max_length`, as transformers returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids: the real tokens (ending with `</s>`), then the pad id up to `max_length`.
    /// `i64` because the text encoder takes torch's `int64` `input_ids`.
    pub ids: Vec<i64>,
    /// 1 for the real tokens, 0 for padding; same length as `ids`.
    pub attention_mask: Vec<i64>,
    /// Number of real tokens, `</s>` included (the number of ones in `attention_mask`).
    pub length: usize,
}

/// A T5 SentencePiece-unigram tokenizer loaded from a `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    path: PathBuf,
    eos_id: u32,
    pad_id: u32,
}

impl T5Tokenizer {
    /// Loads `<dir>/tokenizer.json`; `dir` may also be the tokenizer.json file itself.
    ///
    /// A folder with only `spiece.model` (the slow tokenizer's file) is refused with the one-line
    /// Python command that writes tokenizer.json next to it: orrery does not parse SentencePiece
    /// protobufs, and the conversion only ever has to happen once.
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        if dir.is_file() {
            return Self::from_file(dir);
        }
        if !dir.is_dir() {
            return Err(TextError::NotFound { path: dir.to_path_buf() });
        }
        let json = dir.join(TOKENIZER_JSON);
        if json.is_file() {
            return Self::from_file(&json);
        }
        if dir.join(SPIECE_MODEL).is_file() {
            return Err(TextError::SentencePieceOnly { dir: dir.to_path_buf() });
        }
        let sub = dir.join("tokenizer");
        let hint = if sub.join(TOKENIZER_JSON).is_file() || sub.join(SPIECE_MODEL).is_file() {
            format!("; this looks like a pipeline folder, pass its tokenizer folder {}", sub.display())
        } else {
            String::from("; pass the folder of a transformers T5 tokenizer (e.g. a Cosmos pipeline's tokenizer/)")
        };
        Err(TextError::NoTokenizerFiles { dir: dir.to_path_buf(), hint })
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        if path.extension().is_some_and(|e| e == "model") {
            // Most likely spiece.model itself: say how to convert it rather than "invalid JSON".
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return Err(TextError::SentencePieceOnly { dir: dir.to_path_buf() });
        }
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TextError::NotFound { path: path.to_path_buf() }
            } else {
                TextError::Io { path: path.to_path_buf(), action: "reading", source }
            }
        })?;
        Self::from_json_bytes(&bytes, path)
    }

    /// Parses tokenizer.json bytes; `path` is only used to name the source in errors.
    fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Self, TextError> {
        let invalid = |detail: String| TextError::InvalidJson { path: path.to_path_buf(), detail };
        let mut json: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let Some(fields) = json.as_object_mut() else {
            return Err(invalid("the top level is not a JSON object".into()));
        };

        // transformers' T5Tokenizer keeps only the Precompiled charsmap from the file's normalizer
        // (looking inside a Sequence too) and drops everything else; so do we. We also build the
        // normaliser ourselves: `tokenizers` would panic on a corrupt charsmap.
        let precompiled = match fields.get("normalizer").and_then(find_charsmap) {
            Some(encoded) => {
                let corrupt = |detail: String| TextError::InvalidCharsmap { path: path.to_path_buf(), detail };
                let blob = charsmap::decode_base64(encoded).map_err(corrupt)?;
                Some(charsmap::load(&blob).map_err(corrupt)?)
            }
            None => None,
        };
        // The rest of the pipeline is rebuilt below, and truncation/padding are applied per call.
        for key in ["normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"] {
            fields.insert(key.into(), Value::Null);
        }

        let mut inner: Tokenizer = serde_json::from_value(json).map_err(|e| invalid(e.to_string()))?;
        let not_t5 = |detail: String| TextError::NotT5 { path: path.to_path_buf(), detail };
        if !matches!(inner.get_model(), ModelWrapper::Unigram(_)) {
            return Err(not_t5("its model is not a SentencePiece Unigram model (T5 tokenizers are)".into()));
        }
        let eos_id = inner
            .token_to_id(EOS_TOKEN)
            .ok_or_else(|| not_t5(format!("the vocabulary has no end-of-sequence token {EOS_TOKEN}")))?;
        let pad_id = inner.token_to_id(PAD_TOKEN).unwrap_or(DEFAULT_PAD_ID);

        inner.with_normalizer(precompiled).map_err(|e| invalid(e.to_string()))?;
        let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            WhitespaceSplit.into(),
            metaspace.clone().into(),
        ]))));
        inner.with_decoder(Some(DecoderWrapper::Metaspace(metaspace)));
        let template = TemplateProcessing::builder()
            .try_single(format!("$A {EOS_TOKEN}"))
            .and_then(|b| b.try_pair(format!("$A {EOS_TOKEN} $B {EOS_TOKEN}")))
            .map_err(|e| not_t5(e.to_string()))?
            .special_tokens(vec![(EOS_TOKEN, eos_id)])
            .build()
            .map_err(|e| not_t5(e.to_string()))?;
        inner.with_post_processor(Some(template));

        Ok(Self { inner, path: path.to_path_buf(), eos_id, pad_id })
    }

    /// Tokenises one prompt exactly like transformers'
    /// `tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
    /// add_special_tokens=True)`.
    ///
    /// The prompt's tokens are cut to `max_length - 1` (dropping the end, as transformers'
    /// right truncation does) and `</s>` is appended, so a long prompt yields exactly
    /// `max_length` real tokens ending in `</s>`; shorter ones are padded with the pad id (0)
    /// and mask 0. Text that spells a special token (`</s>`, `<extra_id_0>`, …) becomes that
    /// token, as in transformers. `max_length` must be at least 1 (transformers treats 0 as "no
    /// limit"; we refuse it rather than guess).
    pub fn encode(&self, prompt: &str, max_length: usize) -> Result<Encoding, TextError> {
        let added = self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        let room = max_length
            .checked_sub(added)
            .filter(|_| max_length > 0)
            .ok_or(TextError::MaxLengthTooSmall { max_length, needed: added.max(1) })?;
        let failed = |e: tokenizers::Error| TextError::Tokenize {
            path: self.path.clone(),
            action: "encoding a prompt",
            detail: e.to_string(),
        };
        // Same steps as `tokenizers`' own truncation: tokenize without specials, cut to leave room
        // for them, then let the template append </s>.
        let mut enc = self.inner.encode_fast(prompt, false).map_err(failed)?;
        enc.truncate(room, 0, TruncationDirection::Right);
        let enc = self.inner.post_process(enc, None, true).map_err(failed)?;

        let length = enc.get_ids().len();
        if length > max_length {
            // Cannot happen with the template built in `from_json_bytes`; refuse rather than
            // return a sequence longer than asked.
            return Err(TextError::Tokenize {
                path: self.path.clone(),
                action: "encoding a prompt",
                detail: format!("{length} tokens after truncation to {max_length}"),
            });
        }
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&id| i64::from(id)).collect();
        let mut attention_mask: Vec<i64> = enc.get_attention_mask().iter().map(|&m| i64::from(m)).collect();
        ids.resize(max_length, i64::from(self.pad_id));
        attention_mask.resize(max_length, 0);
        Ok(Encoding { ids, attention_mask, length })
    }

    /// [`encode`](Self::encode) for several prompts, each padded to the same `max_length`.
    pub fn encode_batch(&self, prompts: &[&str], max_length: usize) -> Result<Vec<Encoding>, TextError> {
        prompts.iter().map(|p| self.encode(p, max_length)).collect()
    }

    /// Turns ids back into text (for logs and debugging), like transformers' `decode`.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, TextError> {
        let ids = ids
            .iter()
            .enumerate()
            .map(|(position, &id)| u32::try_from(id).map_err(|_| TextError::IdOutOfRange { id, position }))
            .collect::<Result<Vec<u32>, _>>()?;
        self.inner.decode(&ids, skip_special_tokens).map_err(|e| TextError::Tokenize {
            path: self.path.clone(),
            action: "decoding ids",
            detail: e.to_string(),
        })
    }

    /// Number of ids, added tokens (`<extra_id_N>`) included: the text encoder's embedding table
    /// must have at least this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (`"</s>"`, `"<extra_id_0>"`, `"▁robot"`), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `</s>`, which ends every encoded prompt (1 in T5).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id used for padding: `<pad>`'s id, 0 in T5.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The tokenizer.json this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Finds the base64 `precompiled_charsmap` of a `Precompiled` normaliser, alone or inside a
/// `Sequence`, the way transformers' `convert_to_native_format` does.
fn find_charsmap(normalizer: &Value) -> Option<&str> {
    fn precompiled(n: &Value) -> Option<&str> {
        if n.get("type")?.as_str()? == "Precompiled" {
            n.get("precompiled_charsmap")?.as_str()
        } else {
            None
        }
    }
    match normalizer.get("type").and_then(Value::as_str) {
        Some("Sequence") => normalizer.get("normalizers")?.as_array()?.iter().find_map(precompiled),
        _ => precompiled(normalizer),
    }
}
