//! An MP4 (ISO/IEC 14496-12 and -15) file with one H.264 video track: `ftyp`, `moov` (with the
//! `avc1` sample entry and its `avcC`), then `mdat` holding the frames as 4-byte length-prefixed
//! NAL units. `moov` comes first so the file plays while it downloads; the frames are staged in
//! a temporary file while their sizes are learned, then copied behind it.

use crate::h264::StreamParams;
use crate::yuv::rgb_to_yuv420;
use crate::VideoError;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

fn io(path: &Path) -> impl Fn(std::io::Error) -> VideoError + '_ {
    move |source| VideoError::Io { path: path.display().to_string(), source }
}

/// A box: 32-bit size, type, payload.
fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(8 + payload.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

/// A full box: version and flags before the payload.
fn full(kind: &[u8; 4], version: u8, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![version];
    p.extend_from_slice(&flags.to_be_bytes()[1..]);
    p.extend_from_slice(payload);
    bx(kind, &p)
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// The unity matrix of `mvhd` / `tkhd`.
fn matrix() -> Vec<u8> {
    [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000].iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// The frame rate as an exact ratio: integer rates, NTSC rates (×1000/1001), else millihertz.
fn fps_ratio(fps: f64) -> (u32, u32) {
    let ntsc = fps * 1001.0 / 1000.0;
    if (fps - fps.round()).abs() < 1e-6 {
        (fps.round() as u32, 1)
    } else if (ntsc - ntsc.round()).abs() < 1e-3 {
        (ntsc.round() as u32 * 1000, 1001)
    } else {
        ((fps * 1000.0).round() as u32, 1000)
    }
}

fn moov(p: &StreamParams, sps: &[u8], pps: &[u8], sizes: &[u32], mdat_data_offset: u64) -> Vec<u8> {
    let (timescale, delta) = (p.fps_num, p.fps_den);
    let duration = u64::from(delta) * sizes.len() as u64;
    let duration32 = u32::try_from(duration).unwrap_or(u32::MAX);
    let mut mvhd = Vec::new();
    mvhd.extend_from_slice(&be32(0)); // creation_time
    mvhd.extend_from_slice(&be32(0)); // modification_time
    mvhd.extend_from_slice(&be32(timescale));
    mvhd.extend_from_slice(&be32(duration32));
    mvhd.extend_from_slice(&be32(0x0001_0000)); // rate 1.0
    mvhd.extend_from_slice(&[0x01, 0x00, 0, 0]); // volume 1.0, reserved
    mvhd.extend_from_slice(&[0; 8]);
    mvhd.extend_from_slice(&matrix());
    mvhd.extend_from_slice(&[0; 24]); // pre_defined
    mvhd.extend_from_slice(&be32(2)); // next_track_ID

    let mut tkhd = Vec::new();
    tkhd.extend_from_slice(&be32(0));
    tkhd.extend_from_slice(&be32(0));
    tkhd.extend_from_slice(&be32(1)); // track_ID
    tkhd.extend_from_slice(&be32(0));
    tkhd.extend_from_slice(&be32(duration32));
    tkhd.extend_from_slice(&[0; 8]);
    tkhd.extend_from_slice(&[0; 4]); // layer, alternate_group
    tkhd.extend_from_slice(&[0; 4]); // volume 0 (video), reserved
    tkhd.extend_from_slice(&matrix());
    tkhd.extend_from_slice(&be32((p.width as u32) << 16));
    tkhd.extend_from_slice(&be32((p.height as u32) << 16));

    let mut mdhd = Vec::new();
    mdhd.extend_from_slice(&be32(0));
    mdhd.extend_from_slice(&be32(0));
    mdhd.extend_from_slice(&be32(timescale));
    mdhd.extend_from_slice(&be32(duration32));
    mdhd.extend_from_slice(&[0x55, 0xC4, 0, 0]); // language "und", pre_defined
    let mut hdlr = vec![0; 4];
    hdlr.extend_from_slice(b"vide");
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(b"orrery video\0");

    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(pps);
    let mut avc1 = vec![0; 6];
    avc1.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
    avc1.extend_from_slice(&[0; 16]);
    avc1.extend_from_slice(&(p.width as u16).to_be_bytes());
    avc1.extend_from_slice(&(p.height as u16).to_be_bytes());
    avc1.extend_from_slice(&be32(0x0048_0000)); // 72 dpi
    avc1.extend_from_slice(&be32(0x0048_0000));
    avc1.extend_from_slice(&be32(0));
    avc1.extend_from_slice(&1u16.to_be_bytes()); // frame_count
    let mut name = [0u8; 32];
    name[0] = 6;
    name[1..7].copy_from_slice(b"orrery");
    avc1.extend_from_slice(&name);
    avc1.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
    avc1.extend_from_slice(&(-1i16).to_be_bytes());
    avc1.extend_from_slice(&bx(b"avcC", &avcc));

    let stsd = full(b"stsd", 0, 0, &[be32(1).as_slice(), &bx(b"avc1", &avc1)].concat());
    let stts = full(b"stts", 0, 0, &[be32(1), be32(sizes.len() as u32), be32(delta)].concat());
    let stsc = full(b"stsc", 0, 0, &[be32(1), be32(1), be32(sizes.len() as u32), be32(1)].concat());
    let mut stsz = [be32(0), be32(sizes.len() as u32)].concat();
    sizes.iter().for_each(|s| stsz.extend_from_slice(&be32(*s)));
    let stsz = full(b"stsz", 0, 0, &stsz);
    // One chunk holding every frame; 64-bit offsets only when needed.
    let stco = match u32::try_from(mdat_data_offset) {
        Ok(off) => full(b"stco", 0, 0, &[be32(1), be32(off)].concat()),
        Err(_) => full(b"co64", 0, 0, &[be32(1).as_slice(), &mdat_data_offset.to_be_bytes()].concat()),
    };
    let stbl = bx(b"stbl", &[stsd, stts, stsc, stsz, stco].concat());
    let dinf = bx(b"dinf", &full(b"dref", 0, 0, &[be32(1).as_slice(), &full(b"url ", 0, 1, &[])].concat()));
    let minf = bx(b"minf", &[full(b"vmhd", 0, 1, &[0; 8]), dinf, stbl].concat());
    let mdia = bx(b"mdia", &[full(b"mdhd", 0, 0, &mdhd), full(b"hdlr", 0, 0, &hdlr), minf].concat());
    let trak = bx(b"trak", &[full(b"tkhd", 0, 3, &tkhd), mdia].concat());
    bx(b"moov", &[full(b"mvhd", 0, 0, &mvhd), trak].concat())
}

/// Writes `frames` (each `width × height` RGB, 3 bytes per pixel) as an H.264 MP4 at `fps`,
/// atomically: `<path>.partial` and a staging file beside it, renamed over `path` when complete;
/// on failure neither is left behind.
pub fn write_mp4(path: &Path, frames: &[Vec<u8>], width: usize, height: usize, fps: f64) -> Result<(), VideoError> {
    if frames.is_empty() {
        return Err(VideoError::Invalid("no frames to write".into()));
    }
    if !(fps.is_finite() && fps > 0.0) {
        return Err(VideoError::Invalid(format!("the frame rate must be positive, got {fps}")));
    }
    let (fps_num, fps_den) = fps_ratio(fps);
    let params = StreamParams { width, height, fps_num, fps_den };
    params.check()?;
    if let Some(bad) = frames.iter().position(|f| f.len() != width * height * 3) {
        return Err(VideoError::Invalid(format!("frame {bad} does not hold {width} × {height} RGB pixels")));
    }
    let with_suffix = |suffix: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let (partial, staging) = (with_suffix(".partial"), with_suffix(".frames.partial"));
    let result = (|| -> Result<(), VideoError> {
        // 1. The frames, length-prefixed, into the staging file; their sizes noted.
        let mut sizes = Vec::with_capacity(frames.len());
        let staged = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&staging);
        let mut stage = BufWriter::new(staged.map_err(io(&staging))?);
        for (i, rgb) in frames.iter().enumerate() {
            let unit = params.frame(&rgb_to_yuv420(rgb, width, height), i)?;
            let size = u32::try_from(unit.len() + 4)
                .map_err(|_| VideoError::Invalid(format!("frame {i} is too large for MP4")))?;
            stage.write_all(&(unit.len() as u32).to_be_bytes()).map_err(io(&staging))?;
            stage.write_all(&unit).map_err(io(&staging))?;
            sizes.push(size);
        }
        let mut stage = stage.into_inner().map_err(|e| io(&staging)(e.into_error()))?;
        let data: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        // 2. ftyp, moov (whose chunk offset points past the mdat header), mdat, the frames.
        let ftyp = bx(b"ftyp", &[b"isom".as_slice(), &be32(0x200), b"isom", b"iso2", b"avc1", b"mp41"].concat());
        let large = data + 8 > u64::from(u32::MAX);
        let mdat_header = if large { 16 } else { 8 };
        let (sps, pps) = (params.sps(), params.pps());
        // The offset's width can change moov's size (stco vs co64): settle it in two passes.
        let mut offset = 0;
        let mut moov_box = moov(&params, &sps, &pps, &sizes, offset);
        for _ in 0..2 {
            offset = (ftyp.len() + moov_box.len() + mdat_header) as u64;
            moov_box = moov(&params, &sps, &pps, &sizes, offset);
        }
        let mut out = BufWriter::new(std::fs::File::create(&partial).map_err(io(&partial))?);
        out.write_all(&ftyp).map_err(io(&partial))?;
        out.write_all(&moov_box).map_err(io(&partial))?;
        if large {
            out.write_all(&be32(1)).map_err(io(&partial))?;
            out.write_all(b"mdat").map_err(io(&partial))?;
            out.write_all(&(data + 16).to_be_bytes()).map_err(io(&partial))?;
        } else {
            out.write_all(&be32(data as u32 + 8)).map_err(io(&partial))?;
            out.write_all(b"mdat").map_err(io(&partial))?;
        }
        stage.seek(SeekFrom::Start(0)).map_err(io(&staging))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stage.read(&mut buf).map_err(io(&staging))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io(&partial))?;
        }
        let file = out.into_inner().map_err(|e| io(&partial)(e.into_error()))?;
        file.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, path).map_err(io(path))
    })();
    let _ = std::fs::remove_file(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates_become_exact_ratios() {
        assert_eq!(fps_ratio(30.0), (30, 1));
        assert_eq!(fps_ratio(24.0), (24, 1));
        assert_eq!(fps_ratio(29.97002997), (30000, 1001));
        assert_eq!(fps_ratio(12.5), (12500, 1000));
    }

    /// The top-level boxes of an MP4 file: (type, size).
    fn top_level(bytes: &[u8]) -> Vec<(String, u64)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
            let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
            out.push((kind, size));
            at += size as usize;
        }
        out
    }

    #[test]
    fn files_hold_ftyp_moov_then_mdat_and_bad_input_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("orrery-mp4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.mp4");
        let frames: Vec<Vec<u8>> = (0..3).map(|i| vec![(i * 60) as u8; 48 * 32 * 3]).collect();
        write_mp4(&path, &frames, 48, 32, 24.0).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let boxes = top_level(&bytes);
        let kinds: Vec<&str> = boxes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "moov", "mdat"]);
        assert_eq!(boxes.iter().map(|b| b.1).sum::<u64>(), bytes.len() as u64);
        // The chunk offset points at the first frame's length prefix right after mdat's header.
        let stco = bytes.windows(4).position(|w| w == b"stco").unwrap();
        let offset = u32::from_be_bytes(bytes[stco + 12..stco + 16].try_into().unwrap()) as usize;
        assert_eq!(offset, (boxes[0].1 + boxes[1].1 + 8) as usize);
        let first = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        assert_eq!(bytes[offset + 4], 0x65, "an IDR NAL unit");
        assert!(first > 6 * 384);
        // Odd sizes and mismatched frames are refused; no file or staging file is left.
        let bad = dir.join("bad.mp4");
        assert!(write_mp4(&bad, &frames, 47, 32, 24.0).is_err());
        assert!(write_mp4(&bad, &frames, 32, 32, 24.0).is_err());
        assert!(write_mp4(&bad, &[], 48, 32, 24.0).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
