//! Reading still images (PNG, JPEG) as 8-bit RGB, recognised by their content rather than their
//! name. Every decoding failure, an unsupported kind or an image too large to hold becomes a
//! [`VideoError`] naming the file; nothing from the file can panic the reader.

use crate::VideoError;
use std::path::Path;

/// An 8-bit RGB image, rows top to bottom, pixels `r, g, b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Images larger than this many pixels are refused (a 16k × 16k frame): far above any video
/// size, small enough that a forged header cannot ask for unbounded memory.
const MAX_PIXELS: usize = 1 << 28;

/// What a file holds, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Png,
    Jpeg,
    /// An ISO BMFF file (MP4, MOV): `ftyp` at offset 4.
    Mp4,
    Other,
}

pub fn sniff(head: &[u8]) -> MediaKind {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        MediaKind::Png
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        MediaKind::Jpeg
    } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
        MediaKind::Mp4
    } else {
        MediaKind::Other
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> VideoError {
    VideoError::Invalid(format!("{}: {what}", path.display()))
}

/// Reads a PNG or JPEG file as RGB (grey is replicated, alpha dropped, 16-bit reduced to 8).
pub fn read_image(path: &Path) -> Result<RgbImage, VideoError> {
    let bytes = std::fs::read(path).map_err(|source| VideoError::Io { path: path.display().to_string(), source })?;
    match sniff(&bytes) {
        MediaKind::Png => decode_png(&bytes).map_err(|e| invalid(path, format!("not a readable PNG image: {e}"))),
        MediaKind::Jpeg => decode_jpeg(&bytes).map_err(|e| invalid(path, format!("not a readable JPEG image: {e}"))),
        _ => Err(invalid(path, "not a PNG or JPEG image")),
    }
}

fn checked_size(width: usize, height: usize) -> Result<(), String> {
    match width.checked_mul(height) {
        Some(0) => Err("the image is empty".into()),
        Some(n) if n <= MAX_PIXELS => Ok(()),
        _ => Err(format!("{width}x{height} is larger than orrery reads ({MAX_PIXELS} pixels)")),
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    checked_size(width, height)?;
    let size = reader.output_buffer_size().ok_or("the image is too large")?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("an indexed image was not expanded".into()),
    };
    let stride = frame.line_size;
    let mut data = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(stride).take(height) {
        for px in row[..width * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0]; 3]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(RgbImage { width, height, data })
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let side = 1 << 14;
    let options =
        DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB).set_max_width(side).set_max_height(side);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no image header")?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    checked_size(width, height)?;
    let data = decoder.decode().map_err(|e| e.to_string())?;
    if data.len() != width * height * 3 {
        return Err(format!("decoded {} bytes for a {width}x{height} RGB image", data.len()));
    }
    Ok(RgbImage { width, height, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        encoder.write_header().unwrap().write_image_data(data).unwrap();
        out
    }

    #[test]
    fn png_colour_types_all_become_rgb() {
        let rgb =
            decode_png(&encode_png(2, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!((rgb.width, rgb.height, rgb.data), (2, 1, vec![1, 2, 3, 4, 5, 6]));
        let rgba =
            decode_png(&encode_png(1, 2, png::ColorType::Rgba, png::BitDepth::Eight, &[9, 8, 7, 0, 6, 5, 4, 255]));
        assert_eq!(rgba.unwrap().data, vec![9, 8, 7, 6, 5, 4]);
        let grey = decode_png(&encode_png(2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[10, 200])).unwrap();
        assert_eq!(grey.data, vec![10, 10, 10, 200, 200, 200]);
        // 16-bit samples keep their high byte.
        let deep = decode_png(&encode_png(1, 1, png::ColorType::Rgb, png::BitDepth::Sixteen, &[1, 2, 3, 4, 5, 6]));
        assert_eq!(deep.unwrap().data, vec![1, 3, 5]);
    }

    #[test]
    fn damaged_and_foreign_files_are_errors_not_panics() {
        let good = encode_png(4, 4, png::ColorType::Rgb, png::BitDepth::Eight, &[7; 48]);
        // Cut inside the header or the image data (a missing IEND alone is tolerated).
        for cut in [8, 20, 33, good.len() - 20] {
            assert!(decode_png(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 0xFF;
        assert!(decode_png(&flipped).is_err());
        assert!(decode_jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J']).is_err());
        assert_eq!(sniff(b"\0\0\0\x18ftypisom"), MediaKind::Mp4);
        assert_eq!(sniff(b"hello"), MediaKind::Other);
        let dir = std::env::temp_dir().join(format!("orrery-image-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("notes.png");
        std::fs::write(&text, "not an image").unwrap();
        let err = read_image(&text).unwrap_err().to_string();
        assert!(err.contains("notes.png") && err.contains("not a PNG or JPEG"), "{err}");
        let err = read_image(&dir.join("missing.png")).unwrap_err().to_string();
        assert!(err.contains("missing.png"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
