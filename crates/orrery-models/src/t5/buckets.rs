//! T5's relative position buckets (transformers `T5Attention._relative_position_bucket`),
//! computed at graph-build time: they depend on the sequence length only.

/// The bucket of `relative = key - query` for a bidirectional (encoder) attention: half the
/// buckets for keys after the query, half for keys before; within each half, the first
/// `exact = half / 2` distances get a bucket each and larger ones share logarithmically wider
/// buckets up to `max_distance`, beyond which everything lands in the last bucket.
///
/// The logarithmic part is evaluated in f32 and truncated, as torch does (`relative.float()`,
/// f32 `log`, the `math.log` divisor rounded to f32): at the exact powers of two both give the
/// same integer, and elsewhere no value sits within an f32 rounding of an integer.
pub fn bidirectional_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> i64 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let distance = relative.abs();
    let exact = half / 2;
    if distance < exact {
        return bucket + distance;
    }
    let scale = ((max_distance as f64) / (exact as f64)).ln() as f32;
    let large = (distance as f32 / exact as f32).ln() / scale * (half - exact) as f32;
    bucket += (exact + large as i64).min(half - 1);
    bucket
}

/// The `[len, len]` table of buckets for query `i` (row) and key `j` (column).
pub fn bucket_table(len: usize, num_buckets: usize, max_distance: usize) -> Vec<i64> {
    let mut table = Vec::with_capacity(len * len);
    for i in 0..len as i64 {
        for j in 0..len as i64 {
            table.push(bidirectional_bucket(j - i, num_buckets, max_distance));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_hand() {
        // 32 buckets, max distance 128: 16 per direction, 8 exact, then log-spaced.
        let b = |r| bidirectional_bucket(r, 32, 128);
        assert_eq!(b(0), 0);
        assert_eq!(b(-7), 7);
        assert_eq!(b(7), 16 + 7);
        // 8 + log(d/8)/log(16)·8: d = 16 → 10, d = 32 → 12, d = 127 → 15, beyond → 15.
        assert_eq!(b(-16), 10);
        assert_eq!(b(32), 16 + 12);
        assert_eq!(b(-15), 9);
        assert_eq!(b(-127), 15);
        assert_eq!(b(-128), 15);
        assert_eq!(b(5000), 31);
        let t = bucket_table(3, 32, 128);
        assert_eq!(t, vec![0, 17, 18, 1, 0, 17, 2, 1, 0]);
    }
}
