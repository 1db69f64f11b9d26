//! The crate's single error type.
//!
//! Tokenizer files come from the internet (or from a user's half-finished conversion), so every
//! variant names the file or folder it is about, says what is wrong and, where there is one,
//! what the user can do about it.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or encoding a prompt.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The operating system refused a read.
    #[error("{path}: {action}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        /// What we were doing (`reading`, …).
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The path given to [`T5Tokenizer::from_dir`](crate::T5Tokenizer::from_dir) does not exist.
    #[error(
        "{path}: no such file or folder; pass the folder that holds the T5 tokenizer's tokenizer.json \
         (for a diffusers Cosmos pipeline, its tokenizer/ subfolder) or the tokenizer.json file itself",
        path = .path.display()
    )]
    NotFound { path: PathBuf },

    /// The folder exists but holds neither `tokenizer.json` nor `spiece.model`.
    #[error(
        "{dir}: no T5 tokenizer here (looked for tokenizer.json and spiece.model){hint}",
        dir = .dir.display()
    )]
    NoTokenizerFiles {
        dir: PathBuf,
        /// Extra advice, e.g. pointing at a `tokenizer/` subfolder that does hold one.
        hint: String,
    },

    /// The folder has only the SentencePiece model, which orrery does not read (the conversion to
    /// the `tokenizers` JSON format needs Python's sentencepiece + protobuf and is done once).
    #[error(
        "{dir}: found spiece.model but no tokenizer.json; orrery reads only the tokenizers JSON format. \
         Create it once with transformers (needs the sentencepiece and protobuf packages): \
         python -c \"from transformers import T5TokenizerFast; \
         T5TokenizerFast.from_pretrained('{dir}').save_pretrained('{dir}')\"",
        dir = .dir.display()
    )]
    SentencePieceOnly { dir: PathBuf },

    /// The file is not valid JSON, or not a `tokenizers` tokenizer.json.
    #[error(
        "{path}: not a valid tokenizer.json: {detail}; re-download it or re-create it with \
         `T5TokenizerFast.from_pretrained(folder).save_pretrained(folder)`",
        path = .path.display()
    )]
    InvalidJson { path: PathBuf, detail: String },

    /// A valid tokenizer.json that is not a T5 (SentencePiece unigram) tokenizer, or lacks a
    /// token T5 needs.
    #[error("{path}: not a T5 tokenizer: {detail}", path = .path.display())]
    NotT5 { path: PathBuf, detail: String },

    /// The SentencePiece normalisation table (`precompiled_charsmap`) is corrupt. Left unchecked
    /// it would make the normaliser read out of bounds (a panic) on some input.
    #[error(
        "{path}: the normalizer's precompiled_charsmap is corrupt: {detail}; re-download the \
         tokenizer or re-create tokenizer.json from spiece.model",
        path = .path.display()
    )]
    InvalidCharsmap { path: PathBuf, detail: String },

    /// `max_length` cannot hold even the end-of-sequence token.
    #[error(
        "max_length {max_length} is too small: every T5 sequence ends with </s>, so it must be at \
         least {needed} (Cosmos uses 512)"
    )]
    MaxLengthTooSmall { max_length: usize, needed: usize },

    /// The `tokenizers` library refused a prompt or id list.
    #[error("{path}: {action} failed: {detail}", path = .path.display())]
    Tokenize {
        /// The tokenizer.json in use.
        path: PathBuf,
        /// What we were doing (`encoding a prompt`, `decoding ids`).
        action: &'static str,
        detail: String,
    },

    /// An id passed to [`T5Tokenizer::decode`](crate::T5Tokenizer::decode) that no tokenizer
    /// can hold (negative or beyond `u32`).
    #[error("token id {id} at position {position} is out of range (ids are 0..2^32)")]
    IdOutOfRange { id: i64, position: usize },
}
