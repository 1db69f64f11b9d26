//! Fitting frames to the output size against PyTorch (`tools/reference/make_resize_fixtures.py`):
//! cover scaling, antialiased bicubic `interpolate`, clamp and torchvision's centre crop, on
//! down-, up- and mixed-scale cases with odd sizes and a 1-pixel-high frame; within 1e-5
//! absolute on values in [0, 1].

use orrery_video::fit_rgb_frame;

#[test]
fn fitted_frames_match_torch_antialiased_bicubic() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resize.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let dims = |v: &serde_json::Value| (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize);
    for case in &cases {
        let (size, target) = (dims(&case["size"]), dims(&case["target"]));
        let rgb: Vec<u8> = case["rgb"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        let want: Vec<f32> = case["planes"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got: Vec<f32> = fit_rgb_frame(&rgb, size, target).concat();
        assert_eq!(got.len(), want.len());
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("{size:?} -> {target:?}: max abs error {err:.2e}");
        assert!(err <= 1e-5, "{size:?} -> {target:?}: {err}");
    }
}
