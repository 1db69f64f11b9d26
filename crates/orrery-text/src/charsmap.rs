//! Loading SentencePiece's `precompiled_charsmap` without trusting it.
//!
//! T5's normaliser is SentencePiece's `nmt_nfkc` rule set, stored in tokenizer.json as a
//! base64 blob: a darts-clone double-array trie over UTF-8 bytes plus a table of replacement
//! strings. The `tokenizers` crate interprets it through `spm_precompiled`, which indexes the
//! trie and the string table without bounds checks, and its JSON loader `expect`s the blob to
//! parse. A corrupt file would therefore panic — at load time or, worse, only on some prompt.
//! So we decode and walk the whole trie once here, checking every lookup the normaliser can
//! ever make, and hand `tokenizers` an already-built [`Precompiled`].

use std::collections::HashSet;

use tokenizers::normalizers::Precompiled;

/// Decodes standard (RFC 4648) base64 with optional `=` padding, as written by transformers
/// and `spm_precompiled`.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if text.len() - bytes.len() > 2 || bytes.len() % 4 == 1 {
        return Err("invalid base64 length or padding".into());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).ok_or_else(|| format!("invalid base64 character {:?}", char::from(c)))?;
            acc |= v << (18 - 6 * i);
        }
        let [_, b0, b1, b2] = acc.to_be_bytes();
        out.extend_from_slice(&[b0, b1, b2][..chunk.len() - 1]);
    }
    Ok(out)
}

// Accessors of one double-array unit, as in darts-clone (and `spm_precompiled`).
fn has_leaf(unit: usize) -> bool {
    (unit >> 8) & 1 == 1
}
fn value(unit: usize) -> usize {
    unit & ((1 << 31) - 1)
}
fn label(unit: usize) -> usize {
    unit & ((1 << 31) | 0xFF)
}
fn offset(unit: usize) -> usize {
    (unit >> 10) << ((unit & (1 << 9)) >> 6)
}

/// Checks that `Precompiled::transform` can never index out of bounds on any input, then builds
/// the normaliser. The error text says what is wrong; the caller adds the file name.
pub(crate) fn load(blob: &[u8]) -> Result<Precompiled, String> {
    // Layout: u32 LE trie size in bytes, the trie as u32 LE units, then the NUL-separated
    // replacement strings (same parse as `spm_precompiled`).
    let header: [u8; 4] = blob.get(..4).and_then(|h| h.try_into().ok()).ok_or("shorter than its 4-byte header")?;
    let units = u32::from_le_bytes(header) as usize / 4;
    let trie_end = units
        .checked_mul(4)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= blob.len())
        .ok_or_else(|| format!("its trie claims {units} units but the table holds only {} bytes", blob.len()))?;
    let array: Vec<usize> =
        blob[4..trie_end].chunks_exact(4).map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]) as usize).collect();
    let normalized =
        std::str::from_utf8(&blob[trie_end..]).map_err(|e| format!("its replacement strings are not UTF-8 ({e})"))?;
    let root = *array.first().ok_or("its trie is empty")?;

    // Walk every node reachable from the root, trying every non-NUL byte as the next key byte,
    // exactly as `DoubleArray::common_prefix_search` does.
    let mut seen = HashSet::new();
    let mut stack = vec![offset(root)];
    while let Some(node) = stack.pop() {
        if !seen.insert(node) {
            continue;
        }
        for byte in 1..=255usize {
            let pos = node ^ byte;
            let unit = *array.get(pos).ok_or_else(|| format!("trie position {pos} is out of bounds"))?;
            if label(unit) != byte {
                continue;
            }
            let child = pos ^ offset(unit);
            if has_leaf(unit) {
                let leaf = *array.get(child).ok_or_else(|| format!("trie leaf {child} is out of bounds"))?;
                let start = value(leaf);
                if !normalized.is_char_boundary(start) {
                    return Err(format!("replacement offset {start} is outside the string table"));
                }
            }
            stack.push(child);
        }
    }
    Precompiled::from(blob).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        for (plain, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(decode_base64(enc).unwrap(), plain.as_bytes(), "{enc}");
        }
        assert_eq!(decode_base64("/+8=").unwrap(), [0xff, 0xef]);
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
        assert!(decode_base64("Zg===").is_err());
    }

    #[test]
    fn corrupt_tables_are_refused_not_panicking() {
        assert!(load(&[]).is_err());
        assert!(load(&[8, 0, 0, 0, 1]).is_err()); // trie longer than the blob
        assert!(load(&[0, 0, 0, 0]).is_err()); // empty trie
                                               // A root whose children point far outside the array.
        assert!(load(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]).is_err());
        // Invalid UTF-8 in the string table.
        assert!(load(&[4, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
    }

    /// The fixture's real nmt_nfkc table passes, and random corruptions of it either fail the
    /// check or normalise arbitrary text without panicking (no catch_unwind: a panic fails).
    #[test]
    fn real_table_passes_and_corruptions_never_panic() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/t5_tiny/tokenizer.json");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let blob = decode_base64(json["normalizer"]["precompiled_charsmap"].as_str().unwrap()).unwrap();
        let good = load(&blob).expect("the real nmt_nfkc table is accepted");
        assert_eq!(good.normalize_string("ＡＢＣ ﬁ ①"), "ABC fi 1");

        let probes =
            ["ＡＢＣ ａｂｃ １２３ ﬁ ① ½ ㎞ e\u{301} 日本 🤖 \u{0}\u{7f}\u{ffff} ½", "\u{10ffff}\u{e000}\u{fdd0}"];
        let samples: String = (1u32..0x3000).step_by(7).chain(0xff00..0xfff0).filter_map(char::from_u32).collect();
        let trie_end = 4 + (u32::from_le_bytes(blob[..4].try_into().unwrap()) as usize / 4) * 4;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut accepted = 0;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bad = blob.clone();
            // Mostly corrupt the trie; sometimes the header or the string table.
            let pos = match state % 8 {
                0 => (state >> 8) as usize % 4,
                1 => trie_end + (state >> 8) as usize % (bad.len() - trie_end),
                _ => 4 + (state >> 8) as usize % (trie_end - 4),
            };
            bad[pos] ^= 1 << ((state >> 40) % 8);
            if let Ok(p) = load(&bad) {
                accepted += 1;
                for text in probes.iter().copied().chain([samples.as_str()]) {
                    let _ = p.normalize_string(text);
                }
            }
        }
        assert!(accepted > 0, "some harmless corruptions should still pass the check");
    }
}
