//! 8-bit RGB → YUV 4:2:0, BT.601 limited range (Y 16–235, Cb/Cr 16–240): what decoders assume
//! for `yuv420p` unless told otherwise, and what the bitstream signals.

/// A frame in planar YUV 4:2:0: Y is `width × height`, Cb and Cr `width/2 × height/2`.
pub struct Yuv420 {
    pub width: usize,
    pub height: usize,
    pub y: Vec<u8>,
    pub cb: Vec<u8>,
    pub cr: Vec<u8>,
}

fn clamp_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Converts `rgb` (row-major, 3 bytes per pixel, even width and height); chroma is the average
/// of each 2 × 2 block.
pub fn rgb_to_yuv420(rgb: &[u8], width: usize, height: usize) -> Yuv420 {
    assert!(width.is_multiple_of(2) && height.is_multiple_of(2), "4:2:0 needs even sizes");
    assert_eq!(rgb.len(), width * height * 3, "rgb does not match {width} × {height}");
    let px = |x: usize, y: usize| {
        let i = 3 * (y * width + x);
        (rgb[i] as f32, rgb[i + 1] as f32, rgb[i + 2] as f32)
    };
    let mut out = Yuv420 {
        width,
        height,
        y: Vec::with_capacity(width * height),
        cb: Vec::with_capacity(width * height / 4),
        cr: Vec::with_capacity(width * height / 4),
    };
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = px(x, y);
            out.y.push(clamp_u8(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0));
        }
    }
    for y in (0..height).step_by(2) {
        for x in (0..width).step_by(2) {
            let (mut r, mut g, mut b) = (0.0, 0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(x + dx, y + dy);
                r += p.0 / 4.0;
                g += p.1 / 4.0;
                b += p.2 / 4.0;
            }
            out.cb.push(clamp_u8(128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0));
            out.cr.push(clamp_u8(128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_colours_land_on_their_bt601_codes() {
        // 2 × 2 blocks of black, white, red, green, blue.
        for ((r, g, b), (y, cb, cr)) in [
            ((0, 0, 0), (16, 128, 128)),
            ((255, 255, 255), (235, 128, 128)),
            ((255, 0, 0), (81, 90, 240)),
            ((0, 255, 0), (145, 54, 34)),
            ((0, 0, 255), (41, 240, 110)),
        ] {
            let rgb: Vec<u8> = [r, g, b].repeat(4);
            let f = rgb_to_yuv420(&rgb, 2, 2);
            assert_eq!((f.y[0], f.cb[0], f.cr[0]), (y, cb, cr), "rgb {r} {g} {b}");
        }
    }
}
