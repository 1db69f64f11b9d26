//! Video2World's `--input`: an image (PNG, JPEG), a folder of images (in file-name order), a
//! video file (through ffmpeg), or, for parity runs, a safetensors file holding `video`
//! [1, 3, F, H, W] in [-1, 1] already at the output size. The last `--cond-frames` frames (by
//! default 1 of an image, up to 9 of a folder or video) are fitted to the output size (cover,
//! antialiased bicubic, centre crop) and scaled to [-1, 1].

use crate::tensor_file::read_tensors;
use anyhow::{bail, Context, Result};
use orrery_cpu::CpuTensor;
use orrery_video::{fit_rgb_frame, read_image, read_video, sniff, MediaKind, RgbImage};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Frames a video or folder conditions on by default (cosmos-predict1's `--num_input_frames 9`).
const DEFAULT_VIDEO_FRAMES: usize = 9;

enum Source {
    Image,
    Folder(Vec<PathBuf>),
    Video,
    Tensors,
}

fn head(path: &Path) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .with_context(|| format!("--input {}: cannot read it", path.display()))?;
    Ok(head)
}

/// What `path` is, checked without decoding it (so a batch is checked before any work).
fn classify(path: &Path) -> Result<Source> {
    if path.is_dir() {
        let mut images = Vec::new();
        let entries = std::fs::read_dir(path).with_context(|| format!("--input {}: cannot list it", path.display()))?;
        for entry in entries {
            let file = entry?.path();
            if file.is_file() && matches!(sniff(&head(&file)?), MediaKind::Png | MediaKind::Jpeg) {
                images.push(file);
            }
        }
        if images.is_empty() {
            bail!("--input {}: the folder holds no PNG or JPEG images", path.display());
        }
        images.sort();
        return Ok(Source::Folder(images));
    }
    if !path.exists() {
        bail!("--input {}: no such file or folder", path.display());
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Source::Tensors);
    }
    let image_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()));
    Ok(match sniff(&head(path)?) {
        MediaKind::Png | MediaKind::Jpeg => Source::Image,
        _ if image_name => bail!("--input {}: not a PNG or JPEG image (its first bytes say otherwise)", path.display()),
        // Anything else is handed to ffmpeg, which knows far more containers than MP4.
        MediaKind::Mp4 | MediaKind::Other => Source::Video,
    })
}

/// Checks that `path` exists and is something `load` can read.
pub fn check(path: &Path) -> Result<()> {
    classify(path).map(|_| ())
}

/// How many of `given` frames to condition on.
fn keep(path: &Path, given: usize, default: usize, cond_frames: Option<usize>) -> Result<usize> {
    match cond_frames {
        Some(0) => bail!("--cond-frames must be at least 1"),
        Some(n) if n > given => {
            bail!("--input {} has {given} frame(s); --cond-frames {n} needs {n}", path.display())
        }
        Some(n) => Ok(n),
        None => Ok(default.min(given)),
    }
}

/// The condition frames [1, 3, N, height, width] in [-1, 1].
pub fn load(path: &Path, cond_frames: Option<usize>, (height, width): (usize, usize)) -> Result<CpuTensor> {
    let frames: Vec<RgbImage> = match classify(path)? {
        Source::Tensors => return load_tensors(path, cond_frames, (height, width)),
        Source::Image => {
            keep(path, 1, 1, cond_frames)?;
            vec![read_image(path)?]
        }
        Source::Folder(files) => {
            let n = keep(path, files.len(), DEFAULT_VIDEO_FRAMES, cond_frames)?;
            files[files.len() - n..].iter().map(|f| read_image(f)).collect::<Result<_, _>>()?
        }
        Source::Video => {
            let mut all = read_video(path)?;
            let n = keep(path, all.len(), DEFAULT_VIDEO_FRAMES, cond_frames)?;
            all.split_off(all.len() - n)
        }
    };
    let n = frames.len();
    let plane = height * width;
    let mut values = vec![0f32; 3 * n * plane];
    for (f, frame) in frames.iter().enumerate() {
        let planes = fit_rgb_frame(&frame.data, (frame.height, frame.width), (height, width));
        for (c, p) in planes.iter().enumerate() {
            let dst = &mut values[(c * n + f) * plane..][..plane];
            dst.iter_mut().zip(p).for_each(|(d, v)| *d = 2.0 * v - 1.0);
        }
    }
    Ok(CpuTensor::from_vec(vec![1, 3, n, height, width], values))
}

/// A safetensors `video` [1, 3, F, H, W] in [-1, 1] at the output size (parity runs).
fn load_tensors(path: &Path, cond_frames: Option<usize>, (height, width): (usize, usize)) -> Result<CpuTensor> {
    let tensors: std::collections::HashMap<String, CpuTensor> = read_tensors(path)?.into_iter().collect();
    let video = tensors.get("video").with_context(|| format!("--input {} has no tensor `video`", path.display()))?;
    let dims = video.shape();
    if dims.len() != 5 || dims[0] != 1 || dims[1] != 3 || dims[3] != height || dims[4] != width {
        bail!(
            "--input {}: `video` is {dims:?}; a tensor input must be [1, 3, frames, {height}, {width}] (give an image or video file to have it resized)",
            path.display()
        );
    }
    let given = dims[2];
    let n = keep(path, given, given, cond_frames)?;
    Ok(video.slice(2, given - n, given, 1).contiguous())
}
