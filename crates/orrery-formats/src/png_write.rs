//! Writing 8-bit RGB PNG files (video frames for inspection), with no dependency: the image data
//! goes into zlib "stored" (uncompressed) deflate blocks, so a file is about the raw size
//! (3 bytes per pixel) — frames for looking at, not for archiving.

use crate::error::FormatError;
use std::path::Path;

/// CRC-32 (ISO-HDLC, the PNG and zlib one) of `data`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Adler-32 (zlib's checksum) of `data`.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The PNG bytes of a `width × height` RGB image (`rgb` row-major, 3 bytes per pixel).
pub fn png_rgb(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>, String> {
    if width == 0 || height == 0 || width > u32::MAX as usize / 4 || height > u32::MAX as usize {
        return Err(format!("a PNG cannot be {width} × {height}"));
    }
    if rgb.len() != width * height * 3 {
        return Err(format!("{} bytes do not hold a {width} × {height} RGB image", rgb.len()));
    }
    // Scanlines, each behind filter type 0 (none).
    let mut raw = Vec::with_capacity(height * (1 + 3 * width));
    for row in rgb.chunks(3 * width) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    // zlib: header (deflate, 32K window, no dictionary, fastest), stored blocks ≤ 65535 bytes.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&(width as u32).to_be_bytes());
    header.extend_from_slice(&(height as u32).to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, truecolour, deflate, filter 0, no interlace
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    Ok(png)
}

/// Writes [`png_rgb`] to `path`, atomically (`<path>.partial`, then renamed).
pub fn write_png_rgb(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<(), FormatError> {
    let bytes = png_rgb(width, height, rgb).map_err(|detail| FormatError::InvalidTensor {
        path: path.to_path_buf(),
        key: "image".into(),
        detail,
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FormatError::io(path, "writing", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_check_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(&vec![0xFF; 100_000]), {
            // Reference by the definition, without the deferred modulo.
            let (mut a, mut b) = (1u64, 0u64);
            for _ in 0..100_000 {
                a = (a + 0xFF) % 65521;
                b = (b + a) % 65521;
            }
            ((b << 16) | a) as u32
        });
    }

    /// Walks the PNG: signature, chunks with valid CRCs, and the stored zlib stream back to
    /// the scanlines.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (mut at, mut size, mut idat) = (8, (0, 0), Vec::new());
        loop {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "CRC of {:?}", std::str::from_utf8(kind));
            match kind {
                b"IHDR" => {
                    size = (
                        u32::from_be_bytes(data[..4].try_into().unwrap()),
                        u32::from_be_bytes(data[4..8].try_into().unwrap()),
                    );
                    assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(data),
                b"IEND" => break,
                other => panic!("unexpected chunk {other:?}"),
            }
            at += 12 + len;
        }
        assert_eq!((idat[0], idat[1]), (0x78, 0x01));
        assert_eq!((u16::from(idat[0]) << 8 | u16::from(idat[1])) % 31, 0, "zlib header check");
        let (mut p, mut raw) = (2, Vec::new());
        loop {
            let last = idat[p] & 1;
            assert_eq!(idat[p] >> 1, 0, "stored block");
            let len = u16::from_le_bytes([idat[p + 1], idat[p + 2]]);
            assert_eq!(!len, u16::from_le_bytes([idat[p + 3], idat[p + 4]]));
            raw.extend_from_slice(&idat[p + 5..p + 5 + len as usize]);
            p += 5 + len as usize;
            if last == 1 {
                break;
            }
        }
        assert_eq!(u32::from_be_bytes(idat[p..p + 4].try_into().unwrap()), adler32(&raw));
        (size.0, size.1, raw)
    }

    #[test]
    fn images_round_trip_through_the_format() {
        // 300 × 80 spans two stored blocks (80 scanlines of 901 bytes > 65535).
        for (w, h) in [(1, 1), (3, 2), (300, 80)] {
            let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
            let (pw, ph, raw) = decode(&png_rgb(w, h, &rgb).unwrap());
            assert_eq!((pw as usize, ph as usize), (w, h));
            let rows: Vec<&[u8]> = raw.chunks(1 + 3 * w).collect();
            assert_eq!(rows.len(), h);
            assert!(rows.iter().all(|r| r[0] == 0));
            assert_eq!(rows.iter().flat_map(|r| r[1..].iter().copied()).collect::<Vec<_>>(), rgb);
        }
        assert!(png_rgb(2, 2, &[0; 11]).is_err());
        assert!(png_rgb(0, 2, &[]).is_err());
    }
}
