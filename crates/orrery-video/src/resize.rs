//! Fitting input frames to the output size as the reference prepares them: scaled to cover the
//! output (aspect ratio kept, the smaller scale rounded up), resized with PyTorch's
//! antialiased bicubic filter (`interpolate(mode="bicubic", antialias=True)`, which torchvision's
//! `resize` uses on tensors), clamped to the 8-bit range and centre-cropped (torchvision's
//! `center_crop` offsets).

/// Keys' cubic with a = −0.5, the kernel of PyTorch's (and PIL's) antialiased bicubic.
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// For each output index: the first input index and the normalised weights. Downscaling
/// widens the kernel by the scale (the antialiasing); upscaling keeps its 4 taps.
fn taps(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let (support, inv) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // Truncation toward zero, as the reference's integer cast.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - center + 0.5) * inv)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Resizes one `h × w` plane to `oh × ow` (rows first, then columns).
pub fn resize_plane(src: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane size");
    let across = taps(w, ow);
    let mut wide = vec![0f32; h * ow];
    for (row, out) in src.chunks_exact(w).zip(wide.chunks_exact_mut(ow)) {
        for (o, (lo, weights)) in out.iter_mut().zip(&across) {
            *o = weights.iter().zip(&row[*lo..]).map(|(k, v)| k * v).sum();
        }
    }
    let down = taps(h, oh);
    let mut out = vec![0f32; oh * ow];
    for (dst, (lo, weights)) in out.chunks_exact_mut(ow).zip(&down) {
        for (k, src_row) in weights.iter().zip(wide.chunks_exact(ow).skip(*lo)) {
            dst.iter_mut().zip(src_row).for_each(|(d, v)| *d += k * v);
        }
    }
    out
}

/// The size an `h × w` frame is resized to before the centre crop to `th × tw`.
pub fn cover_size((h, w): (usize, usize), (th, tw): (usize, usize)) -> (usize, usize) {
    let ratio = (tw as f64 / w as f64).max(th as f64 / h as f64);
    (((ratio * h as f64).ceil() as usize).max(th), ((ratio * w as f64).ceil() as usize).max(tw))
}

/// torchvision's centre-crop offset: `int(round((size − crop) / 2))`, rounding half to even.
fn crop_offset(size: usize, crop: usize) -> usize {
    let half = (size - crop) as f64 / 2.0;
    let floor = half.floor();
    let offset = if half - floor == 0.5 && floor % 2.0 == 0.0 { floor } else { half.round() };
    offset as usize
}

/// An interleaved 8-bit RGB frame fitted to `th × tw`: three planes in [0, 1].
pub fn fit_rgb_frame(rgb: &[u8], (h, w): (usize, usize), (th, tw): (usize, usize)) -> [Vec<f32>; 3] {
    assert_eq!(rgb.len(), h * w * 3, "frame size");
    let (rh, rw) = cover_size((h, w), (th, tw));
    let (top, left) = (crop_offset(rh, th), crop_offset(rw, tw));
    std::array::from_fn(|c| {
        let plane: Vec<f32> = rgb.chunks_exact(3).map(|px| f32::from(px[c])).collect();
        let resized = if (rh, rw) == (h, w) { plane } else { resize_plane(&plane, (h, w), (rh, rw)) };
        let mut out = Vec::with_capacity(th * tw);
        for row in resized.chunks_exact(rw).skip(top).take(th) {
            out.extend(row[left..left + tw].iter().map(|v| v.clamp(0.0, 255.0) / 255.0));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_sizes_copy() {
        for (i, o) in [(7, 3), (3, 7), (100, 33), (1, 5), (5, 1), (16, 16)] {
            for (lo, w) in taps(i, o) {
                assert!(lo + w.len() <= i);
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{i}->{o}");
            }
        }
        let plane: Vec<f32> = (0..35).map(|v| v as f32).collect();
        assert_eq!(resize_plane(&plane, (5, 7), (5, 7)), plane);
        // A constant stays constant at any size.
        let flat = resize_plane(&[3.0; 35], (5, 7), (11, 2));
        assert!(flat.iter().all(|v| (v - 3.0).abs() < 1e-5));
    }

    #[test]
    fn cover_then_crop_sizes() {
        assert_eq!(cover_size((480, 640), (704, 1280)), (960, 1280));
        assert_eq!(cover_size((1080, 1920), (704, 1280)), (720, 1280));
        assert_eq!(cover_size((704, 1280), (704, 1280)), (704, 1280));
        assert_eq!((crop_offset(720, 704), crop_offset(5, 4), crop_offset(7, 4), crop_offset(9, 4)), (8, 0, 2, 2));
    }
}
