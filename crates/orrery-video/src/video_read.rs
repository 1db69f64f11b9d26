//! Reading a video file's frames as 8-bit RGB through the `ffmpeg` and `ffprobe` programs (an
//! input convenience: writing needs neither). The file name is passed as one argument, never
//! through a shell.

use crate::image_read::RgbImage;
use crate::VideoError;
use std::path::Path;
use std::process::Command;

/// Videos with more pixels than this in all (a 121-frame 1080p video is 0.25 G) are refused.
const MAX_TOTAL_PIXELS: usize = 1 << 31;

fn tool_missing(tool: &str, path: &Path) -> VideoError {
    VideoError::Invalid(format!(
        "{}: reading a video needs `{tool}` on the PATH (install ffmpeg), or give the frames as PNG/JPEG files in a folder",
        path.display()
    ))
}

/// The frame size of the first video stream.
fn probe_size(path: &Path) -> Result<(usize, usize), VideoError> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|_| tool_missing("ffprobe", path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.trim().split(',').map(|v| v.trim().parse::<usize>());
    match (out.status.success(), fields.next(), fields.next()) {
        (true, Some(Ok(w)), Some(Ok(h))) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(VideoError::Invalid(format!(
            "{}: not a readable video ({})",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Every frame of the first video stream, in display order, as RGB.
pub fn read_video(path: &Path) -> Result<Vec<RgbImage>, VideoError> {
    if !path.is_file() {
        return Err(VideoError::Invalid(format!("{}: no such file", path.display())));
    }
    let (width, height) = probe_size(path)?;
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .map_err(|_| tool_missing("ffmpeg", path))?;
    if !out.status.success() {
        return Err(VideoError::Invalid(format!(
            "{}: ffmpeg could not decode it: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let frame = width * height * 3;
    if out.stdout.is_empty() || out.stdout.len() % frame != 0 || out.stdout.len() / 3 > MAX_TOTAL_PIXELS {
        return Err(VideoError::Invalid(format!(
            "{}: ffmpeg gave {} bytes, not whole {width}x{height} frames",
            path.display(),
            out.stdout.len()
        )));
    }
    Ok(out.stdout.chunks_exact(frame).map(|data| RgbImage { width, height, data: data.to_vec() }).collect())
}
