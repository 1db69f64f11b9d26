//! An H.264 (ITU-T H.264 / ISO 14496-10) Main-profile bitstream made of I_PCM macroblocks: each
//! frame one IDR picture, one slice, every macroblock `mb_type` 25 with its 384 samples stored
//! raw. CAVLC, no deblocking (the slices turn it off), frame size padded to whole macroblocks and
//! cropped back in the SPS, BT.601 limited-range colour and the frame rate signalled in the VUI.

use crate::yuv::Yuv420;
use crate::VideoError;

/// Writes bits MSB first.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    used: u8,
}

impl Bits {
    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b {
            *self.bytes.last_mut().expect("pushed") |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    fn u(&mut self, n: u32, v: u64) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    /// Exp-Golomb ue(v).
    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        self.u(len - 1, 0);
        self.u(len, x);
    }

    /// Exp-Golomb se(v).
    fn se(&mut self, v: i32) {
        self.ue(if v > 0 { 2 * v as u32 - 1 } else { (-2 * v) as u32 });
    }

    fn align_zero(&mut self) {
        while self.used != 0 {
            self.bit(false);
        }
    }

    /// Whole bytes at a byte boundary.
    fn bytes(&mut self, data: &[u8]) {
        debug_assert_eq!(self.used, 0);
        self.bytes.extend_from_slice(data);
    }

    /// `rbsp_trailing_bits`: a 1 then zeros to the byte boundary.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.bytes
    }
}

/// A NAL unit (header byte + payload with emulation prevention), without a start code or
/// length prefix.
fn nal(ref_idc: u8, unit_type: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 1);
    out.push((ref_idc << 5) | unit_type);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// The stream's fixed parameters.
#[derive(Clone, Copy, Debug)]
pub struct StreamParams {
    pub width: usize,
    pub height: usize,
    /// Frames per second as a ratio (e.g. 30/1, 30000/1001).
    pub fps_num: u32,
    pub fps_den: u32,
}

/// level_idc 5.1: the frame sizes orrery writes fit; PCM's bitrate is beyond any level's limit,
/// which decoders do not enforce.
const LEVEL_IDC: u8 = 51;
const PROFILE_MAIN: u8 = 77;

impl StreamParams {
    fn mbs(&self) -> (usize, usize) {
        (self.width.div_ceil(16), self.height.div_ceil(16))
    }

    pub fn check(&self) -> Result<(), VideoError> {
        if self.width == 0 || self.height == 0 || !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return Err(VideoError::Invalid(format!(
                "H.264 4:2:0 needs a positive even width and height, got {}x{}",
                self.width, self.height
            )));
        }
        if self.width > 8192 || self.height > 8192 || self.fps_num == 0 || self.fps_den == 0 {
            return Err(VideoError::Invalid(format!(
                "unsupported stream: {}x{} at {}/{} fps",
                self.width, self.height, self.fps_num, self.fps_den
            )));
        }
        Ok(())
    }

    /// The sequence parameter set NAL unit.
    pub fn sps(&self) -> Vec<u8> {
        let (mbw, mbh) = self.mbs();
        let mut b = Bits::default();
        b.u(8, PROFILE_MAIN.into());
        b.u(8, 0x40); // constraint_set1 (Main-compatible), others 0, reserved 0
        b.u(8, LEVEL_IDC.into());
        b.ue(0); // seq_parameter_set_id
        b.ue(0); // log2_max_frame_num_minus4
        b.ue(2); // pic_order_cnt_type 2: output order = decoding order
        b.ue(1); // max_num_ref_frames
        b.bit(false); // gaps_in_frame_num_value_allowed_flag
        b.ue(mbw as u32 - 1);
        b.ue(mbh as u32 - 1);
        b.bit(true); // frame_mbs_only_flag
        b.bit(true); // direct_8x8_inference_flag
        let (crop_x, crop_y) = ((mbw * 16 - self.width) / 2, (mbh * 16 - self.height) / 2);
        b.bit(crop_x > 0 || crop_y > 0);
        if crop_x > 0 || crop_y > 0 {
            b.ue(0);
            b.ue(crop_x as u32);
            b.ue(0);
            b.ue(crop_y as u32);
        }
        b.bit(true); // vui_parameters_present_flag
        b.bit(false); // aspect_ratio_info_present_flag
        b.bit(false); // overscan_info_present_flag
        b.bit(true); // video_signal_type_present_flag
        b.u(3, 5); // video_format: unspecified
        b.bit(false); // video_full_range_flag: limited
        b.bit(true); // colour_description_present_flag
        b.u(8, 6); // colour_primaries: SMPTE 170M (BT.601)
        b.u(8, 6); // transfer_characteristics
        b.u(8, 6); // matrix_coefficients
        b.bit(false); // chroma_loc_info_present_flag
        b.bit(true); // timing_info_present_flag
        b.u(32, self.fps_den.into()); // num_units_in_tick
        b.u(32, 2 * u64::from(self.fps_num)); // time_scale (two ticks per frame)
        b.bit(true); // fixed_frame_rate_flag
        b.bit(false); // nal_hrd_parameters_present_flag
        b.bit(false); // vcl_hrd_parameters_present_flag
        b.bit(false); // pic_struct_present_flag
        b.bit(false); // bitstream_restriction_flag
        nal(3, 7, &b.finish())
    }

    /// The picture parameter set NAL unit.
    pub fn pps(&self) -> Vec<u8> {
        let mut b = Bits::default();
        b.ue(0); // pic_parameter_set_id
        b.ue(0); // seq_parameter_set_id
        b.bit(false); // entropy_coding_mode_flag: CAVLC
        b.bit(false); // bottom_field_pic_order_in_frame_present_flag
        b.ue(0); // num_slice_groups_minus1
        b.ue(0); // num_ref_idx_l0_default_active_minus1
        b.ue(0); // num_ref_idx_l1_default_active_minus1
        b.bit(false); // weighted_pred_flag
        b.u(2, 0); // weighted_bipred_idc
        b.se(0); // pic_init_qp_minus26
        b.se(0); // pic_init_qs_minus26
        b.se(0); // chroma_qp_index_offset
        b.bit(true); // deblocking_filter_control_present_flag
        b.bit(false); // constrained_intra_pred_flag
        b.bit(false); // redundant_pic_cnt_present_flag
        nal(3, 8, &b.finish())
    }

    /// One frame as an IDR NAL unit; `index` alternates `idr_pic_id` (consecutive IDR pictures
    /// must differ).
    pub fn frame(&self, f: &Yuv420, index: usize) -> Result<Vec<u8>, VideoError> {
        if (f.width, f.height) != (self.width, self.height) {
            return Err(VideoError::Invalid(format!(
                "a {}x{} frame in a {}x{} stream",
                f.width, f.height, self.width, self.height
            )));
        }
        let (mbw, mbh) = self.mbs();
        let mut b = Bits::default();
        b.ue(0); // first_mb_in_slice
        b.ue(7); // slice_type: I (all slices of the picture)
        b.ue(0); // pic_parameter_set_id
        b.u(4, 0); // frame_num
        b.ue((index % 2) as u32); // idr_pic_id
        b.bit(false); // no_output_of_prior_pics_flag
        b.bit(false); // long_term_reference_flag
        b.se(0); // slice_qp_delta
        b.ue(1); // disable_deblocking_filter_idc: off
        let (cw, ch) = (self.width / 2, self.height / 2);
        // Samples outside the picture (padding to whole macroblocks) repeat the edge.
        let luma = |x: usize, y: usize| f.y[y.min(self.height - 1) * self.width + x.min(self.width - 1)];
        let chroma = |plane: &[u8], x: usize, y: usize| plane[y.min(ch - 1) * cw + x.min(cw - 1)];
        let mut samples = [0u8; 384];
        for my in 0..mbh {
            for mx in 0..mbw {
                b.ue(25); // mb_type I_PCM
                b.align_zero(); // pcm_alignment_zero_bit
                for y in 0..16 {
                    for x in 0..16 {
                        samples[y * 16 + x] = luma(mx * 16 + x, my * 16 + y);
                    }
                }
                for (k, plane) in [&f.cb, &f.cr].into_iter().enumerate() {
                    for y in 0..8 {
                        for x in 0..8 {
                            samples[256 + 64 * k + y * 8 + x] = chroma(plane, mx * 8 + x, my * 8 + y);
                        }
                    }
                }
                b.bytes(&samples);
            }
        }
        Ok(nal(3, 5, &b.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        let mut b = Bits::default();
        for v in [0, 1, 2, 3, 25] {
            b.ue(v);
        }
        b.se(-1);
        b.se(2);
        // ue 0, 1, 2, 3, 25; se -1 (= ue 2), se 2 (= ue 3); then the stop bit and zeros.
        let bits = ["1", "010", "011", "00100", "000011010", "011", "00100"].concat();
        let mut want = Vec::new();
        for chunk in format!("{bits}1").as_bytes().chunks(8) {
            let s: String = chunk.iter().map(|&c| c as char).collect();
            want.push(u8::from_str_radix(&format!("{s:0<8}"), 2).unwrap());
        }
        assert_eq!(b.finish(), want);
    }

    #[test]
    fn emulation_prevention_breaks_start_code_patterns() {
        assert_eq!(nal(3, 5, &[0, 0, 1, 0, 0, 0, 7, 0, 0, 4]), vec![0x65, 0, 0, 3, 1, 0, 0, 3, 0, 7, 0, 0, 4]);
        assert_eq!(nal(0, 1, &[0, 0, 3]), vec![0x01, 0, 0, 3, 3]);
    }

    #[test]
    fn headers_and_sizes_are_checked() {
        let p = StreamParams { width: 96, height: 64, fps_num: 30, fps_den: 1 };
        p.check().unwrap();
        assert_eq!(p.sps()[..4], [0x67, PROFILE_MAIN, 0x40, LEVEL_IDC]);
        assert_eq!(p.pps()[0], 0x68);
        assert!(StreamParams { width: 95, ..p }.check().is_err());
        let frame = crate::yuv::rgb_to_yuv420(&vec![200; 96 * 64 * 3], 96, 64);
        let idr = p.frame(&frame, 0).unwrap();
        assert_eq!(idr[0], 0x65);
        // 24 macroblocks × 384 samples, plus headers.
        assert!(idr.len() > 24 * 384 && idr.len() < 24 * 400);
        let small = crate::yuv::rgb_to_yuv420(&vec![0; 32 * 32 * 3], 32, 32);
        assert!(p.frame(&small, 1).is_err());
    }
}
