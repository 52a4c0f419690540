//! Bit mixing shared by the HyperLogLog and the user sample. Inputs are already keyed hashes of
//! user identities, but we cannot rely on every caller's hash being well distributed in every bit,
//! so both structures pass values through a fixed 64-bit finalizer first. The mixing is part of
//! the wire contract: changing it would make old and new sketches unmergeable.

/// SplitMix64's finalizer: a bijection on `u64` with full avalanche.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_not_identity_and_spreads_sequential_inputs() {
        assert_ne!(mix64(1), 1);
        // Sequential inputs must land in different top bits (the HLL uses the top bits as index).
        let tops: std::collections::HashSet<u64> = (0..64u64).map(|i| mix64(i) >> 58).collect();
        assert!(
            tops.len() > 30,
            "top 6 bits of 64 sequential inputs took only {} values",
            tops.len()
        );
    }
}
