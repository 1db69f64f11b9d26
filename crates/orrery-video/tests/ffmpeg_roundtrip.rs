//! A synthetic 33-frame 64 × 96 video (a gradient and a moving square) written as MP4 and
//! decoded again by ffmpeg: frame count and size exact, PSNR ≥ 35 dB against the RGB frames,
//! and ffprobe sees H.264 Main, yuv420p, an `avc1` track at the frame rate. Needs `ffmpeg` and
//! `ffprobe` on PATH: `.ci/run` installs them and sets `ORRERY_REQUIRE_FFMPEG=1`; elsewhere
//! the test says it skipped.

use std::process::Command;

fn tool(name: &str) -> bool {
    Command::new(name).arg("-version").output().is_ok_and(|o| o.status.success())
}

fn frames(count: usize, w: usize, h: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|f| {
            let mut rgb = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let i = 3 * (y * w + x);
                    rgb[i] = (x * 255 / (w - 1)) as u8;
                    rgb[i + 1] = (y * 255 / (h - 1)) as u8;
                    rgb[i + 2] = 96;
                    // A 12 × 12 square moving 2 px right and 2 px down per frame: on even
                    // positions its edges fall between 4:2:0 chroma samples. (At odd positions a
                    // yellow-on-blue edge loses about 10 dB to chroma subsampling itself, with
                    // any encoder.)
                    let (sx, sy) = (2 * f % (w - 12), 2 * f % (h - 12));
                    if (sx..sx + 12).contains(&x) && (sy..sy + 12).contains(&y) {
                        rgb[i..i + 3].copy_from_slice(&[240, 240, 16]);
                    }
                }
            }
            rgb
        })
        .collect()
}

#[test]
fn ffmpeg_decodes_what_orrery_writes() {
    if !tool("ffmpeg") || !tool("ffprobe") {
        assert!(std::env::var_os("ORRERY_REQUIRE_FFMPEG").is_none(), "ffmpeg/ffprobe are required here but missing");
        eprintln!("skipped: ffmpeg/ffprobe not on PATH");
        return;
    }
    let (w, h, n) = (96, 64, 33);
    let input = frames(n, w, h);
    let dir = std::env::temp_dir().join(format!("orrery-ffmpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("square.mp4");
    orrery_video::write_mp4(&path, &input, w, h, 24.0).unwrap();

    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,profile,pix_fmt,width,height,codec_tag_string,r_frame_rate,nb_read_frames")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(&path)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&probe.stdout);
    for want in [
        "codec_name=h264",
        "profile=Main",
        "pix_fmt=yuv420p",
        "width=96",
        "height=64",
        "codec_tag_string=avc1",
        "r_frame_rate=24/1",
        "nb_read_frames=33",
    ] {
        assert!(info.contains(want), "ffprobe: missing {want} in\n{info}{}", String::from_utf8_lossy(&probe.stderr));
    }

    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(decoded.status.success(), "{}", String::from_utf8_lossy(&decoded.stderr));
    let frame_bytes = w * h * 3;
    assert_eq!(decoded.stdout.len(), n * frame_bytes, "33 frames of 96 × 64");
    let mut worst = f64::INFINITY;
    for (f, (got, want)) in decoded.stdout.chunks(frame_bytes).zip(&input).enumerate() {
        let mse = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>() / frame_bytes as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10();
        assert!(psnr >= 35.0, "frame {f}: PSNR {psnr:.1} dB");
        worst = worst.min(psnr);
    }
    println!("lowest PSNR over the frames: {worst:.1} dB");
    std::fs::remove_dir_all(&dir).unwrap();
}
