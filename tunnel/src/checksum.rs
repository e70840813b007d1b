//! The Internet checksum (RFC 1071), one implementation for the whole
//! workspace.
//!
//! The Linux data path sums in parts: with tun offload the kernel hands us
//! TCP/UDP super-packets whose checksums are left for "the hardware" to fill
//! in, so we compute them (pseudo-header, then segment) when we cut a
//! super-packet into wire-sized packets, and we verify them before merging
//! packets into one (a merged packet's checksum is recomputed by the kernel,
//! which would otherwise hide a corrupt segment). The daemon's ICMP probe
//! wants the one-shot [`checksum`].
//!
//! The sum is taken over native-endian words: a one's-complement sum does not
//! depend on byte order (RFC 1071 §2(B)), so only the folded result is
//! converted to network order. Each 64-bit word is added as its two 32-bit
//! halves into a 64-bit total, which cannot overflow before 16 GiB: without a
//! carry chain the compiler vectorises the loop, two to three times as fast
//! as adding with end-around carry (`tunnel/examples/io-compare.rs` found the
//! checksum to be most of the offload code's own time).

/// Adds `data` to a running sum. `data` must start on a 16-bit boundary of the
/// checksummed stream (every caller passes whole headers or whole segments).
pub fn add(acc: u64, data: &[u8]) -> u64 {
    let halves = |word: u64| (word & 0xffff_ffff) + (word >> 32);
    let mut words = data.chunks_exact(8);
    let mut sum = 0u64;
    for word in &mut words {
        sum += halves(u64::from_ne_bytes(word.try_into().unwrap()));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // Zero padding at the end is what RFC 1071 prescribes for an odd tail.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        sum += halves(u64::from_ne_bytes(last));
    }
    // Into the running sum with end-around carry: 2^64 ≡ 1 (mod 2^16 - 1).
    let (total, carry) = acc.overflowing_add(sum);
    total + u64::from(carry)
}

/// Folds a running sum to 16 bits, in network byte order (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    u16::from_be_bytes((acc as u16).to_ne_bytes())
}

/// The TCP/UDP pseudo-header (source, destination, protocol, length) as a
/// running sum. `src`/`dst` are 4 (IPv4) or 16 (IPv6) bytes.
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, length: u32) -> u64 {
    let acc = add(add(0, src), dst);
    let mut tail = [0u8; 8];
    tail[3] = protocol;
    tail[4..].copy_from_slice(&length.to_be_bytes());
    // IPv4 pseudo-header has a 16-bit length; a 32-bit one with the same value
    // sums the same (the upper half is zero).
    add(acc, &tail)
}

/// The checksum field value for `data` given a starting sum: the complement of
/// the folded sum, as bytes in network order.
pub fn finish(acc: u64) -> [u8; 2] {
    (!fold(acc)).to_be_bytes()
}

/// True when a region that includes its checksum field sums to all ones.
pub fn verifies(acc: u64) -> bool {
    fold(acc) == 0xffff
}

/// The checksum of `data` alone, as a number (`.to_be_bytes()` gives the
/// field); over a message that holds its own checksum it is 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Straightforward 16-bit big-endian reference implementation.
    fn reference(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn matches_reference_for_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8 ^ 0xa5).collect();
        for len in 0..data.len() {
            assert_eq!(
                fold(add(0, &data[..len])),
                reference(&data[..len]),
                "len {len}"
            );
        }
        let ones = vec![0xffu8; 1000];
        assert_eq!(fold(add(0, &ones)), reference(&ones));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(finish(add(0, &data)), (!0xddf2u16).to_be_bytes());
    }

    #[test]
    fn a_filled_in_checksum_verifies() {
        let mut data: Vec<u8> = (0..77u8).collect();
        data[10] = 0;
        data[11] = 0;
        let sum = finish(add(0, &data));
        data[10..12].copy_from_slice(&sum);
        assert!(verifies(add(0, &data)));
        data[40] ^= 1;
        assert!(!verifies(add(0, &data)));
    }

    #[test]
    fn the_one_shot_form_pads_an_odd_tail_and_checks_to_zero() {
        assert_eq!(checksum(&[0xff]), !0xff00);
        assert_eq!(checksum(&[]), 0xffff);
        let mut data = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7, b'x'];
        let sum = checksum(&data);
        data[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&data), 0);
        assert_eq!(finish(add(0, &data[..])), [0, 0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Summing in parts that start on 16-bit boundaries (a pseudo-header,
        /// then headers, then payload, as the Linux data path does) gives the
        /// one-shot sum, which is RFC 1071's.
        #[test]
        fn partial_sums_agree_with_the_one_shot_form(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() / 2 + 1) * 2).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            let acc = at.windows(2).fold(0, |acc, w| add(acc, &data[w[0]..w[1]]));
            prop_assert_eq!(fold(acc), fold(add(0, &data)));
            prop_assert_eq!(fold(acc), reference(&data));
            prop_assert_eq!(checksum(&data), !reference(&data));
        }

        /// Any running sum, however large, carries over as the sum of its
        /// own bytes would (the end-around carry).
        #[test]
        fn any_running_sum_carries_over(
            acc in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let as_bytes = [&acc.to_ne_bytes()[..], &data].concat();
            prop_assert_eq!(fold(add(acc, &data)), fold(add(0, &as_bytes)));
            prop_assert_eq!(fold(add(acc, &data)), reference(&as_bytes));
        }

        /// The pseudo-header as a running sum is the sum of its RFC 793 /
        /// RFC 8200 bytes.
        #[test]
        fn the_pseudo_header_sums_as_its_bytes(
            v6 in any::<bool>(),
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            protocol in any::<u8>(),
            length in any::<u16>(),
        ) {
            let n = if v6 { 16 } else { 4 };
            let mut bytes = [&src[..n], &dst[..n]].concat();
            if v6 {
                bytes.extend_from_slice(&u32::from(length).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, protocol]);
            } else {
                bytes.extend_from_slice(&[0, protocol]);
                bytes.extend_from_slice(&length.to_be_bytes());
            }
            let pseudo = pseudo_header(&src[..n], &dst[..n], protocol, u32::from(length));
            prop_assert_eq!(fold(pseudo), reference(&bytes));
        }
    }
}
