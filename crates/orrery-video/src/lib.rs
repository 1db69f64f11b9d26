//! orrery-video: writing the generated frames as an MP4 that plays anywhere, with no ffmpeg,
//! and reading the frames a Video2World run continues from.
//!
//! - [`yuv`]: 8-bit RGB to YUV 4:2:0 (BT.601, limited range, the `yuv420p` players expect);
//! - [`h264`]: an H.264 Main-profile bitstream in which every frame is an IDR picture of I_PCM
//!   macroblocks (the samples stored as they are). That is lossless after the YUV conversion and
//!   decodes with any H.264 decoder, at the cost of size: 1.5 bytes per pixel, so a 121-frame
//!   704 × 1280 video takes about 164 MB. A compressing encoder can replace it behind the same
//!   interface;
//! - [`mp4`]: an ISO BMFF file with one `avc1` track, `moov` before `mdat` (so it streams), the
//!   frame rate in the track timescale, written to `<path>.partial` and renamed when complete;
//! - [`image_read`]: PNG and JPEG files as RGB (pure Rust decoders), recognised by content;
//! - [`video_read`]: a video's frames through the `ffmpeg` program, when it is installed;
//! - [`resize`]: frames fitted to the output size (cover, antialiased bicubic, centre crop).

pub mod h264;
pub mod image_read;
pub mod mp4;
pub mod resize;
pub mod video_read;
pub mod yuv;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VideoError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub use image_read::{read_image, sniff, MediaKind, RgbImage};
pub use mp4::write_mp4;
pub use resize::fit_rgb_frame;
pub use video_read::read_video;
