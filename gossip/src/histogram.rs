//! Latency histograms on the wire: HdrHistogram's V2 *compressed* (deflate) serialization, as
//! produced by the `hdrhistogram` crate's `V2DeflateSerializer`, kept as opaque bytes in the
//! sketch so encoding a sketch costs no histogram work.
//!
//! Untrusted bytes are checked before the `hdrhistogram` deserializer sees them, because it
//! trusts the declared sizes (it allocates the declared payload length and the counts array of
//! the declared range up front). [`LatencyHistogram::to_histogram`] inflates at most
//! [`MAX_INFLATED`] bytes, checks both cookies, that the declared payload length matches what was
//! inflated, and that the precision is at most [`MAX_SIGFIG`] significant figures (which bounds
//! the counts array at ~55k counters for any range). Histograms are written at
//! [`WIRE_SIGFIG`] = 2 significant figures (1 % resolution), or 1 if that would exceed
//! [`HISTOGRAM_BUDGET`], re-bucketing finer input ([`LatencyHistogram::from_histogram`]).

use std::io::Read;

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const V2_COOKIE: u32 = 0x1c84_9313;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;
const V2_HEADER_SIZE: usize = 40;

/// Largest inflated V2 payload accepted (header included).
pub const MAX_INFLATED: usize = 256 * 1024;
/// Largest compressed form accepted.
pub const MAX_COMPRESSED: usize = 64 * 1024;
/// Most significant figures accepted when decoding (HdrHistogram allows 5).
pub const MAX_SIGFIG: u8 = 3;
/// Significant figures of histograms this crate writes: 2 (buckets within 1 % of the value),
/// unless that would exceed [`HISTOGRAM_BUDGET`].
pub const WIRE_SIGFIG: u8 = 2;
/// Compressed size above which a histogram is written at 1 significant figure instead.
pub const HISTOGRAM_BUDGET: usize = 640;

/// A latency histogram in HdrHistogram V2 compressed form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram(#[serde(with = "serde_bytes_vec")] Vec<u8>);

mod serde_bytes_vec {
    //! postcard encodes `Vec<u8>` as varint length + raw bytes either way; this keeps the field
    //! a plain byte string for any other serde format too.
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl LatencyHistogram {
    /// Serialize `h` (V2, deflate-compressed) within the entry's size budget: at
    /// [`WIRE_SIGFIG`] significant figures if that compresses to at most [`HISTOGRAM_BUDGET`]
    /// bytes, otherwise at 1 significant figure (buckets within ~6 % of the value; only wide
    /// distributions need it, where the spread dwarfs the bucket width). Finer input is
    /// re-bucketed: each recorded bucket's count moves to the coarser bucket holding its highest
    /// equivalent value. Fails only if even the coarse form exceeds [`MAX_COMPRESSED`] bytes.
    pub fn from_histogram(h: &Histogram<u64>) -> Result<Self> {
        let mut last = None;
        for sigfig in [WIRE_SIGFIG.min(h.sigfig()), 1] {
            let out = if h.sigfig() == sigfig {
                serialize(h)?
            } else {
                serialize(&rebucket(h, sigfig)?)?
            };
            if out.len() <= HISTOGRAM_BUDGET {
                return Ok(Self(out));
            }
            last = Some(out);
        }
        match last {
            Some(out) if out.len() <= MAX_COMPRESSED => Ok(Self(out)),
            Some(out) => Err(Error::Histogram(format!(
                "compressed form is {} bytes",
                out.len()
            ))),
            None => Err(Error::Histogram("no serialization attempted".into())),
        }
    }

    /// An empty histogram (1 µs .. 1 h at 3 significant figures, auto-resizing).
    pub fn empty() -> Self {
        // Construction with these constant bounds cannot fail; fall back to raw bytes anyway.
        match Histogram::<u64>::new_with_bounds(1, 3_600_000_000, WIRE_SIGFIG) {
            Ok(h) => Self::from_histogram(&h).unwrap_or(Self(Vec::new())),
            Err(_) => Self(Vec::new()),
        }
    }

    /// The V2 compressed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Take V2 compressed bytes from elsewhere (checked like wire input).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let h = Self(bytes);
        h.validate()?;
        Ok(h)
    }

    /// Deserialize into a histogram (auto-resizing, so it can absorb others).
    pub fn to_histogram(&self) -> Result<Histogram<u64>> {
        let inflated = self.inflate_checked()?;
        let mut h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut inflated.as_slice())
            .map_err(|e| Error::Histogram(format!("deserialize: {e:?}")))?;
        h.auto(true);
        Ok(h)
    }

    /// Check that the bytes are a well-formed, bounded V2 compressed histogram.
    pub fn validate(&self) -> Result<()> {
        self.to_histogram().map(|_| ())
    }

    /// Merge another histogram into this one (counts add).
    pub fn merge(&mut self, other: &LatencyHistogram) -> Result<()> {
        let (mut a, b) = {
            let (x, y) = (self.to_histogram()?, other.to_histogram()?);
            if y.sigfig() > x.sigfig() {
                (y, x)
            } else {
                (x, y)
            }
        };
        a.add(&b)
            .map_err(|e| Error::Merge(format!("histograms: {e:?}")))?;
        *self = Self::from_histogram(&a)?;
        Ok(())
    }

    /// Inflate into an uncompressed V2 buffer after checking every declared size.
    fn inflate_checked(&self) -> Result<Vec<u8>> {
        let bytes = &self.0;
        if bytes.len() > MAX_COMPRESSED {
            return Err(Error::Histogram(format!(
                "{} compressed bytes is too many",
                bytes.len()
            )));
        }
        if bytes.len() < 8 {
            return Err(Error::Histogram(
                "shorter than the V2 compressed header".into(),
            ));
        }
        let cookie = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if cookie != V2_COMPRESSED_COOKIE {
            return Err(Error::Histogram(format!(
                "cookie {cookie:#x} is not V2 compressed"
            )));
        }
        let declared = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if declared != bytes.len() - 8 {
            return Err(Error::Histogram(format!(
                "declares {declared} compressed bytes, carries {}",
                bytes.len() - 8
            )));
        }
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(&bytes[8..])
            .take(MAX_INFLATED as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| Error::Histogram(format!("inflate: {e}")))?;
        if inflated.len() > MAX_INFLATED {
            return Err(Error::Histogram(format!(
                "inflates past {MAX_INFLATED} bytes"
            )));
        }
        if inflated.len() < V2_HEADER_SIZE {
            return Err(Error::Histogram(
                "inflated payload shorter than the V2 header".into(),
            ));
        }
        let be32 = |at: usize| {
            u32::from_be_bytes([
                inflated[at],
                inflated[at + 1],
                inflated[at + 2],
                inflated[at + 3],
            ])
        };
        if be32(0) != V2_COOKIE {
            return Err(Error::Histogram("inner cookie is not V2".into()));
        }
        let payload = be32(4) as usize;
        if payload != inflated.len() - V2_HEADER_SIZE {
            return Err(Error::Histogram(format!(
                "declares a {payload}-byte payload, carries {}",
                inflated.len() - V2_HEADER_SIZE
            )));
        }
        let sigfig = be32(12);
        if sigfig > u32::from(MAX_SIGFIG) {
            return Err(Error::Histogram(format!(
                "{sigfig} significant figures; at most {MAX_SIGFIG}"
            )));
        }
        Ok(inflated)
    }
}

fn serialize(h: &Histogram<u64>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut out)
        .map_err(|e| Error::Histogram(format!("serialize: {e:?}")))?;
    Ok(out)
}

fn rebucket(h: &Histogram<u64>, sigfig: u8) -> Result<Histogram<u64>> {
    let err = |e: &dyn std::fmt::Debug| Error::Histogram(format!("re-bucketing: {e:?}"));
    let mut c = Histogram::<u64>::new_with_bounds(h.low().max(1), h.high().max(2), sigfig)
        .map_err(|e| err(&e))?;
    c.auto(true);
    for v in h.iter_recorded() {
        c.record_n(v.value_iterated_to(), v.count_at_value())
            .map_err(|e| err(&e))?;
    }
    Ok(c)
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_histogram(n: u64) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for i in 0..n {
            h.record(100 + (i * 7919) % 50_000).unwrap();
        }
        h
    }

    #[test]
    fn roundtrip_preserves_counts() {
        let h = sample_histogram(10_000);
        let wire = LatencyHistogram::from_histogram(&h).unwrap();
        let back = wire.to_histogram().unwrap();
        assert_eq!(back.len(), 10_000);
        assert_eq!(back.sigfig(), WIRE_SIGFIG);
        for q in [0.01, 0.5, 0.99] {
            let (a, b) = (
                h.value_at_quantile(q) as f64,
                back.value_at_quantile(q) as f64,
            );
            assert!((a - b).abs() <= a * 0.011, "q{q}: {a} vs {b}");
        }
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = LatencyHistogram::from_histogram(&sample_histogram(1000)).unwrap();
        let b = LatencyHistogram::from_histogram(&sample_histogram(500)).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.to_histogram().unwrap().len(), 1500);
    }

    #[test]
    fn merge_across_different_ranges() {
        let mut small = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        small.record(10).unwrap();
        let mut a = LatencyHistogram::from_histogram(&small).unwrap();
        let b = LatencyHistogram::from_histogram(&sample_histogram(10)).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.to_histogram().unwrap().len(), 11);
    }

    #[test]
    fn empty_is_valid() {
        assert_eq!(LatencyHistogram::empty().to_histogram().unwrap().len(), 0);
    }

    #[test]
    fn finer_input_is_rebucketed_to_wire_precision() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 5).unwrap();
        for v in [1u64, 999, 1_000, 12_345, 5_000_000] {
            h.record_n(v, 3).unwrap();
        }
        let back = LatencyHistogram::from_histogram(&h)
            .unwrap()
            .to_histogram()
            .unwrap();
        assert_eq!(back.sigfig(), WIRE_SIGFIG);
        assert_eq!(back.len(), 15);
        for q in [0.0, 0.3, 0.5, 0.7, 1.0] {
            let (a, b) = (
                h.value_at_quantile(q) as f64,
                back.value_at_quantile(q) as f64,
            );
            assert!((a - b).abs() <= a * 0.011 + 1.0, "q{q}: {a} vs {b}");
        }
    }

    #[test]
    fn wide_distributions_fall_back_to_one_sigfig_within_budget() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        // Geometric spread from 100 µs to ~10 s: thousands of distinct 3-sigfig buckets.
        let mut v = 100.0f64;
        let mut seed = 12345u64;
        while v < 10_000_000.0 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            h.record_n(v as u64, 1 + (seed >> 33) % 50).unwrap();
            v *= 1.001;
        }
        let wire = LatencyHistogram::from_histogram(&h).unwrap();
        assert!(
            wire.as_bytes().len() <= HISTOGRAM_BUDGET,
            "{} bytes",
            wire.as_bytes().len()
        );
        let back = wire.to_histogram().unwrap();
        assert_eq!(back.sigfig(), 1);
        assert_eq!(back.len(), h.len());
        for q in [0.01, 0.5, 0.9, 0.99] {
            let (a, b) = (
                h.value_at_quantile(q) as f64,
                back.value_at_quantile(q) as f64,
            );
            assert!((a - b).abs() <= a * 0.07, "q{q}: {a} vs {b}");
        }
        // Merging a fine and a coarse histogram keeps the finer precision.
        let mut narrow = LatencyHistogram::from_histogram(&sample_histogram(100)).unwrap();
        narrow.merge(&wire).unwrap();
        let merged = narrow.to_histogram().unwrap();
        assert_eq!(merged.len(), h.len() + 100);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            vec![],
            vec![0u8; 7],
            vec![0x1c, 0x84, 0x93, 0x14, 0, 0, 0, 1, 0],
            vec![0xff; 100],
        ] {
            assert!(LatencyHistogram(bad).to_histogram().is_err());
        }
        // Truncate a valid one at every length: never panics, always an error.
        let good = LatencyHistogram::from_histogram(&sample_histogram(100))
            .unwrap()
            .0;
        for cut in 0..good.len() {
            assert!(
                LatencyHistogram(good[..cut].to_vec())
                    .to_histogram()
                    .is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn rejects_a_zip_bomb() {
        // A valid zlib stream that inflates to far more than MAX_INFLATED.
        let mut inner = Vec::new();
        inner.extend_from_slice(&V2_COOKIE.to_be_bytes());
        inner.extend_from_slice(&(10_000_000u32).to_be_bytes());
        inner.resize(10_000_040, 0);
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &inner).unwrap();
        let z = enc.finish().unwrap();
        let mut bytes = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(z.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&z);
        let err = LatencyHistogram(bytes).to_histogram().unwrap_err();
        assert!(
            err.to_string().contains("inflates past") || err.to_string().contains("too many"),
            "{err}"
        );
    }
}
