//! A mergeable HyperLogLog of unique users, sized for the wire.
//!
//! Values inserted are hashed user keys (`u64`); they are mixed again ([`crate::hash`]) so the
//! top `p` bits pick a register and the rest give a rank. Cardinality is estimated with Ertl's
//! improved raw estimator ("New cardinality estimation algorithms for HyperLogLog sketches",
//! 2017), which needs no empirical bias tables and is accurate from 0 to far past `2^p`.
//!
//! Representation: *sparse* (a sorted list of `index << 6 | rank` for non-zero registers) while
//! few registers are set, *dense* (one byte per register, zlib-compressed on the wire) beyond
//! [`HyperLogLog::sparse_limit`]. At the default precision 10 (1024 registers, standard error
//! 1.04/√1024 ≈ 3.3 %) the dense wire form is ~400 bytes and sparse stays below ~512.
//!
//! Invariants: `MIN_PRECISION <= p <= MAX_PRECISION`; every register value is `<= 64 - p + 1`;
//! sparse entries are sorted by index with no duplicates and no zero rank; a dense vector has
//! exactly `2^p` registers. Decoding checks all of them ([`HyperLogLog`] deserializes through
//! `TryFrom<HllWire>`).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::mix64;

const RANK_BITS: u32 = 6;
const RANK_MASK: u32 = (1 << RANK_BITS) - 1;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Registers {
    /// Sorted by register index; each `index << 6 | rank`, rank >= 1.
    Sparse(Vec<u32>),
    /// `2^p` registers, one byte each.
    Dense(Vec<u8>),
}

/// HyperLogLog unique-count sketch. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HllWire", into = "HllWire")]
pub struct HyperLogLog {
    precision: u8,
    registers: Registers,
}

/// Wire form: sparse entries are delta-encoded (postcard varints keep them ~2 bytes each); dense
/// registers, one byte each, are zlib-compressed — register values cluster around
/// log2(n / m), so they take ~3 bits each instead of 8 (≈ 400 bytes at p = 10).
#[derive(Serialize, Deserialize)]
enum HllWire {
    Sparse { precision: u8, deltas: Vec<u32> },
    Dense { precision: u8, zlib: Vec<u8> },
}

impl HyperLogLog {
    pub const MIN_PRECISION: u8 = 4;
    pub const MAX_PRECISION: u8 = 14;
    /// 1024 registers: ≈3.3 % standard error, ≤ 768 bytes on the wire.
    pub const DEFAULT_PRECISION: u8 = 10;

    /// An empty sketch with `2^precision` registers.
    pub fn new(precision: u8) -> Result<Self> {
        if !(Self::MIN_PRECISION..=Self::MAX_PRECISION).contains(&precision) {
            return Err(Error::Argument(format!(
                "HyperLogLog precision {precision} is outside {}..={}",
                Self::MIN_PRECISION,
                Self::MAX_PRECISION
            )));
        }
        Ok(Self {
            precision,
            registers: Registers::Sparse(Vec::new()),
        })
    }

    pub fn precision(&self) -> u8 {
        self.precision
    }

    fn m(&self) -> usize {
        1usize << self.precision
    }

    fn max_rank(&self) -> u8 {
        64 - self.precision + 1
    }

    /// Number of sparse entries above which the sketch turns dense (where the sparse wire form
    /// would stop being smaller than the dense one).
    pub fn sparse_limit(&self) -> usize {
        self.m() / 4
    }

    /// Whether the sketch is currently in its sparse representation.
    pub fn is_sparse(&self) -> bool {
        matches!(self.registers, Registers::Sparse(_))
    }

    /// Record one (hashed) user.
    pub fn insert(&mut self, user: u64) {
        let (index, rank) = Self::register_of(self.precision, user);
        self.set_max(index as u32, rank);
    }

    /// The register `user` lands in and its rank at `precision` (4..=14), for callers that keep
    /// registers elsewhere (e.g. atomically, on a request path) and build a sketch later with
    /// [`HyperLogLog::from_registers`].
    pub fn register_of(precision: u8, user: u64) -> (usize, u8) {
        let h = mix64(user);
        let p = u32::from(precision.clamp(Self::MIN_PRECISION, Self::MAX_PRECISION));
        let index = (h >> (64 - p)) as usize;
        // A guard bit below the rank bits bounds the rank at 64 - p + 1.
        let w = (h << p) | (1u64 << (p - 1));
        let rank = (w.leading_zeros() + 1) as u8;
        (index, rank)
    }

    /// A sketch from `2^precision` dense registers filled with [`HyperLogLog::register_of`].
    pub fn from_registers(precision: u8, registers: &[u8]) -> Result<Self> {
        let mut sketch = Self::new(precision)?;
        if registers.len() != sketch.m() {
            return Err(Error::Argument(format!(
                "{} HyperLogLog registers given, precision {precision} needs {}",
                registers.len(),
                sketch.m()
            )));
        }
        let max_rank = sketch.max_rank();
        for (index, &rank) in registers.iter().enumerate() {
            if rank > max_rank {
                return Err(Error::Argument(format!(
                    "HyperLogLog register {index} holds rank {rank}, at most {max_rank} is possible"
                )));
            }
            if rank > 0 {
                sketch.set_max(index as u32, rank);
            }
        }
        Ok(sketch)
    }

    fn set_max(&mut self, index: u32, rank: u8) {
        match &mut self.registers {
            Registers::Dense(regs) => {
                let r = &mut regs[index as usize];
                if *r < rank {
                    *r = rank;
                }
            }
            Registers::Sparse(entries) => {
                match entries.binary_search_by_key(&index, |e| e >> RANK_BITS) {
                    Ok(pos) => {
                        if (entries[pos] & RANK_MASK) < u32::from(rank) {
                            entries[pos] = (index << RANK_BITS) | u32::from(rank);
                        }
                    }
                    Err(pos) => entries.insert(pos, (index << RANK_BITS) | u32::from(rank)),
                }
                if entries.len() > self.m() / 4 {
                    self.densify();
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Registers::Sparse(entries) = &self.registers {
            let mut regs = vec![0u8; self.m()];
            for e in entries {
                regs[(e >> RANK_BITS) as usize] = (e & RANK_MASK) as u8;
            }
            self.registers = Registers::Dense(regs);
        }
    }

    /// Union with `other` (register-wise max). Both must have the same precision.
    pub fn merge(&mut self, other: &HyperLogLog) -> Result<()> {
        if self.precision != other.precision {
            return Err(Error::Merge(format!(
                "HyperLogLog precisions differ ({} vs {})",
                self.precision, other.precision
            )));
        }
        match (&mut self.registers, &other.registers) {
            (Registers::Dense(ours), Registers::Sparse(entries)) => {
                for e in entries {
                    if let Some(r) = ours.get_mut((e >> RANK_BITS) as usize) {
                        *r = (*r).max((e & RANK_MASK) as u8);
                    }
                }
            }
            (Registers::Sparse(ours), Registers::Sparse(theirs)) => {
                // Both sorted by index: one merge pass, the higher rank where both have one.
                let mut merged = Vec::with_capacity(ours.len() + theirs.len());
                let (mut a, mut b) = (ours.iter().peekable(), theirs.iter().peekable());
                loop {
                    let next = match (a.peek(), b.peek()) {
                        (Some(&&x), Some(&&y)) => match (x >> RANK_BITS).cmp(&(y >> RANK_BITS)) {
                            std::cmp::Ordering::Less => a.next().copied(),
                            std::cmp::Ordering::Greater => b.next().copied(),
                            std::cmp::Ordering::Equal => {
                                a.next();
                                b.next();
                                Some(x.max(y))
                            }
                        },
                        (Some(_), None) => a.next().copied(),
                        (None, Some(_)) => b.next().copied(),
                        (None, None) => None,
                    };
                    match next {
                        Some(e) => merged.push(e),
                        None => break,
                    }
                }
                *ours = merged;
                if ours.len() > self.m() / 4 {
                    self.densify();
                }
            }
            (_, Registers::Dense(theirs)) => {
                self.densify();
                if let Registers::Dense(ours) = &mut self.registers {
                    for (a, b) in ours.iter_mut().zip(theirs) {
                        *a = (*a).max(*b);
                    }
                }
            }
        }
        Ok(())
    }

    /// Histogram of register values: `counts[k]` = registers holding `k`, for `k in 0..=q+1`.
    fn register_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; usize::from(self.max_rank()) + 1];
        match &self.registers {
            Registers::Dense(regs) => {
                for &r in regs {
                    counts[usize::from(r)] += 1;
                }
            }
            Registers::Sparse(entries) => {
                counts[0] = (self.m() - entries.len()) as u32;
                for e in entries {
                    counts[(e & RANK_MASK) as usize] += 1;
                }
            }
        }
        counts
    }

    /// Estimated number of distinct users inserted (Ertl's improved raw estimator).
    pub fn estimate(&self) -> f64 {
        let m = self.m() as f64;
        let q = usize::from(64 - self.precision);
        let c = self.register_counts();
        if c[0] as f64 == m {
            return 0.0;
        }
        let mut z = m * tau(1.0 - f64::from(c[q + 1]) / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + f64::from(c[k]));
        }
        z += m * sigma(f64::from(c[0]) / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        alpha_inf * m * m / z
    }

    /// Bytes of the postcard encoding (for sizing tests and benches).
    pub fn encoded_len(&self) -> usize {
        postcard::to_stdvec(self).map(|v| v.len()).unwrap_or(0)
    }
}

impl Default for HyperLogLog {
    fn default() -> Self {
        Self {
            precision: Self::DEFAULT_PRECISION,
            registers: Registers::Sparse(Vec::new()),
        }
    }
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let z_old = z;
        z += x * y;
        y += y;
        if z_old == z {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let z_old = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z_old == z {
            return z / 3.0;
        }
    }
}

impl From<HyperLogLog> for HllWire {
    fn from(h: HyperLogLog) -> Self {
        match h.registers {
            Registers::Sparse(entries) => HllWire::Sparse {
                precision: h.precision,
                deltas: delta_encode(&entries),
            },
            Registers::Dense(regs) => {
                let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), DENSE_COMPRESSION);
                // Writing to a Vec cannot fail; an error would surface at decode as a bad length.
                let _ = std::io::Write::write_all(&mut enc, &regs);
                let zlib = enc.finish().unwrap_or_default();
                HllWire::Dense {
                    precision: h.precision,
                    zlib,
                }
            }
        }
    }
}

impl TryFrom<HllWire> for HyperLogLog {
    type Error = Error;

    fn try_from(w: HllWire) -> Result<Self> {
        from_wire(w, &mut Decompress::new(true))
    }
}

/// Reusable state for encoding and merging many encoded sketches (the forecaster's store reads
/// and writes one per series row and batch): the zlib state lives as long as the codec instead
/// of being allocated per sketch. It reads and writes exactly the postcard encoding of
/// [`HyperLogLog`], with the same checks as decoding.
pub struct HllCodec {
    inflater: Decompress,
    deflater: Option<Compress>,
}

impl Default for HllCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HllCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HllCodec").finish_non_exhaustive()
    }
}

impl HllCodec {
    pub fn new() -> Self {
        Self {
            inflater: Decompress::new(true),
            deflater: None,
        }
    }

    /// The postcard encoding of `h` (the bytes `postcard::to_stdvec(h)` gives).
    pub fn encode(&mut self, h: &HyperLogLog) -> Result<Vec<u8>> {
        let wire = match &h.registers {
            Registers::Sparse(entries) => HllWire::Sparse {
                precision: h.precision,
                deltas: delta_encode(entries),
            },
            Registers::Dense(regs) => {
                let deflater = self
                    .deflater
                    .get_or_insert_with(|| Compress::new(DENSE_COMPRESSION, true));
                HllWire::Dense {
                    precision: h.precision,
                    zlib: deflate(deflater, regs)?,
                }
            }
        };
        postcard::to_stdvec(&wire).map_err(|e| Error::Merge(format!("encode HyperLogLog: {e}")))
    }

    /// Decode the postcard-encoded sketch `bytes` (checked like any decoding) and merge it into
    /// `into`. On error `into` is unchanged.
    pub fn merge_encoded(&mut self, into: &mut HyperLogLog, bytes: &[u8]) -> Result<()> {
        let wire: HllWire =
            postcard::from_bytes(bytes).map_err(|e| Error::invalid("hll", e.to_string()))?;
        into.merge(&from_wire(wire, &mut self.inflater)?)
    }
}

/// Level of the dense registers' zlib stream.
const DENSE_COMPRESSION: Compression = Compression::best();

fn delta_encode(entries: &[u32]) -> Vec<u32> {
    let mut prev = 0u32;
    entries
        .iter()
        .map(|&e| {
            let d = e - prev;
            prev = e;
            d
        })
        .collect()
}

/// Zlib-compress `data` with `deflater` (reset first).
fn deflate(deflater: &mut Compress, data: &[u8]) -> Result<Vec<u8>> {
    deflater.reset();
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(deflater.total_in()).unwrap_or(usize::MAX);
        let rest = data.get(consumed..).unwrap_or_default();
        let status = deflater
            .compress_vec(rest, &mut out, FlushCompress::Finish)
            .map_err(|e| Error::Merge(format!("compress HyperLogLog registers: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if out.capacity() > 2 * data.len() + 1024 {
            return Err(Error::Merge(
                "compress HyperLogLog registers: the stream does not end".into(),
            ));
        }
        out.reserve(out.capacity().max(64));
    }
}

/// A sketch from its wire form, every invariant checked.
fn from_wire(w: HllWire, inflater: &mut Decompress) -> Result<HyperLogLog> {
    match w {
        HllWire::Sparse { precision, deltas } => {
            let mut h =
                HyperLogLog::new(precision).map_err(|e| Error::invalid("hll", e.to_string()))?;
            if deltas.len() > h.m() {
                return Err(Error::invalid("hll", "more sparse entries than registers"));
            }
            let max_rank = u32::from(h.max_rank());
            let mut entries = Vec::with_capacity(deltas.len());
            let mut prev: Option<u32> = None;
            let mut acc = 0u32;
            for d in deltas {
                acc = acc
                    .checked_add(d)
                    .ok_or_else(|| Error::invalid("hll", "sparse entry overflows"))?;
                let (index, rank) = (acc >> RANK_BITS, acc & RANK_MASK);
                if index as usize >= h.m() || rank == 0 || rank > max_rank {
                    return Err(Error::invalid(
                        "hll",
                        format!("sparse entry {acc:#x} out of range"),
                    ));
                }
                if prev.is_some_and(|p| p >= index) {
                    return Err(Error::invalid(
                        "hll",
                        "sparse entries not strictly increasing",
                    ));
                }
                prev = Some(index);
                entries.push(acc);
            }
            let dense = entries.len() > h.sparse_limit();
            h.registers = Registers::Sparse(entries);
            if dense {
                h.densify();
            }
            Ok(h)
        }
        HllWire::Dense { precision, zlib } => {
            let mut h =
                HyperLogLog::new(precision).map_err(|e| Error::invalid("hll", e.to_string()))?;
            let m = h.m();
            // One register more than needed, so a stream that inflates too far shows.
            let mut regs = vec![0u8; m + 1];
            inflater.reset(true);
            let status = inflater
                .decompress(&zlib, &mut regs, FlushDecompress::Finish)
                .map_err(|e| Error::invalid("hll", format!("dense registers: {e}")))?;
            let inflated = usize::try_from(inflater.total_out()).unwrap_or(usize::MAX);
            if inflated > m {
                return Err(Error::invalid(
                    "hll",
                    format!("more than {m} dense registers"),
                ));
            }
            if status != Status::StreamEnd {
                return Err(Error::invalid("hll", "dense registers: incomplete stream"));
            }
            if inflated != m {
                return Err(Error::invalid(
                    "hll",
                    format!("{inflated} dense registers, expected {m}"),
                ));
            }
            regs.truncate(m);
            if let Some(i) = regs.iter().position(|&r| r > h.max_rank()) {
                return Err(Error::invalid(
                    "hll",
                    format!("register {i} holds {}, above the maximum rank", regs[i]),
                ));
            }
            h.registers = Registers::Dense(regs);
            Ok(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n: u64, p: u8, salt: u64) -> HyperLogLog {
        let mut h = HyperLogLog::new(p).unwrap();
        for i in 0..n {
            h.insert(i ^ salt);
        }
        h
    }

    #[test]
    fn registers_kept_elsewhere_give_the_same_sketch() {
        let precision = HyperLogLog::DEFAULT_PRECISION;
        let mut direct = HyperLogLog::new(precision).unwrap();
        let mut registers = vec![0u8; 1 << precision];
        for user in 0..5_000u64 {
            direct.insert(user * 7919);
            let (index, rank) = HyperLogLog::register_of(precision, user * 7919);
            registers[index] = registers[index].max(rank);
        }
        let rebuilt = HyperLogLog::from_registers(precision, &registers).unwrap();
        assert_eq!(rebuilt.estimate(), direct.estimate());
        assert!(HyperLogLog::from_registers(precision, &registers[1..]).is_err());
        let mut bad = registers.clone();
        bad[0] = 64;
        assert!(HyperLogLog::from_registers(precision, &bad).is_err());
    }

    #[test]
    fn empty_estimates_zero() {
        assert_eq!(HyperLogLog::default().estimate(), 0.0);
    }

    #[test]
    fn rejects_bad_precision() {
        assert!(HyperLogLog::new(3).is_err());
        assert!(HyperLogLog::new(15).is_err());
    }

    #[test]
    fn estimates_within_error_bounds_across_range() {
        // Standard error at p=10 is ~3.3 %; allow ~4 sigma, plus exactness at tiny counts.
        for &n in &[1u64, 10, 100, 1_000, 5_000, 20_000, 100_000, 1_000_000] {
            let h = filled(n, 10, 0x5eed);
            let est = h.estimate();
            let rel = (est - n as f64).abs() / n as f64;
            let tol = if n <= 100 { 0.05 } else { 0.13 };
            assert!(
                rel <= tol,
                "n={n}: estimate {est:.1} off by {:.1} %",
                rel * 100.0
            );
        }
    }

    #[test]
    fn duplicates_do_not_count() {
        let mut h = HyperLogLog::default();
        for _ in 0..10 {
            for i in 0..500u64 {
                h.insert(i);
            }
        }
        let est = h.estimate();
        assert!((est - 500.0).abs() / 500.0 < 0.1, "{est}");
    }

    #[test]
    fn merge_equals_union() {
        let mut a = filled(30_000, 10, 0);
        let b = {
            let mut h = HyperLogLog::default();
            for i in 20_000..60_000u64 {
                h.insert(i);
            }
            h
        };
        let mut direct = HyperLogLog::default();
        for i in 0..60_000u64 {
            direct.insert(i);
        }
        a.merge(&b).unwrap();
        // Register-wise max of the parts is exactly the sketch of the union.
        let mut a_dense = a.clone();
        a_dense.densify();
        let mut d_dense = direct.clone();
        d_dense.densify();
        assert_eq!(a_dense, d_dense);
    }

    #[test]
    fn sparse_merge_into_sparse_and_dense_agree() {
        let mut a = filled(50, 10, 1);
        let b = filled(60, 10, 2);
        let mut dense_a = a.clone();
        dense_a.densify();
        a.merge(&b).unwrap();
        dense_a.merge(&b).unwrap();
        assert_eq!(a.estimate(), dense_a.estimate());
    }

    #[test]
    fn merge_rejects_precision_mismatch() {
        let mut a = HyperLogLog::new(10).unwrap();
        let b = HyperLogLog::new(11).unwrap();
        assert!(matches!(a.merge(&b), Err(Error::Merge(_))));
    }

    #[test]
    fn wire_roundtrip_sparse_and_dense() {
        for n in [0u64, 5, 200, 100_000] {
            let h = filled(n, 10, 7);
            let bytes = postcard::to_stdvec(&h).unwrap();
            let back: HyperLogLog = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, h, "n={n}");
            assert_eq!(back.estimate(), h.estimate());
        }
    }

    #[test]
    fn wire_size_is_bounded() {
        let dense = filled(100_000, 10, 3);
        assert!(!dense.is_sparse());
        assert!(dense.encoded_len() <= 512, "{}", dense.encoded_len());
        // Just below the switch-over point sparse is still smaller than dense.
        let mut sparse = HyperLogLog::default();
        let mut i = 0u64;
        while sparse.is_sparse() {
            let before = sparse.clone();
            sparse.insert(i);
            i += 1;
            if !sparse.is_sparse() {
                assert!(before.encoded_len() < 600, "{}", before.encoded_len());
            }
        }
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn decoding_rejects_out_of_range_registers() {
        let reject = |w: HllWire| {
            let bytes = postcard::to_stdvec(&w).unwrap();
            assert!(postcard::from_bytes::<HyperLogLog>(&bytes).is_err());
        };
        reject(HllWire::Dense {
            precision: 4,
            zlib: zlib(&[61 + 1; 16]),
        });
        reject(HllWire::Dense {
            precision: 4,
            zlib: zlib(&[1; 15]),
        });
        reject(HllWire::Dense {
            precision: 4,
            zlib: zlib(&[1; 17]),
        });
        reject(HllWire::Dense {
            precision: 4,
            zlib: vec![0x78, 0x9c, 0xff],
        });
        reject(HllWire::Sparse {
            precision: 4,
            deltas: vec![(20 << 6) | 1],
        });
        reject(HllWire::Sparse {
            precision: 4,
            deltas: vec![(2 << 6) | 1, 0],
        });
        reject(HllWire::Sparse {
            precision: 4,
            deltas: vec![2 << 6],
        });
        reject(HllWire::Sparse {
            precision: 30,
            deltas: vec![],
        });
        // And the boundary value is accepted.
        let ok = postcard::to_stdvec(&HllWire::Dense {
            precision: 4,
            zlib: zlib(&[61; 16]),
        })
        .unwrap();
        assert!(postcard::from_bytes::<HyperLogLog>(&ok).is_ok());
    }

    #[test]
    fn codec_writes_and_merges_the_postcard_form() {
        let mut codec = HllCodec::new();
        for (n, salt) in [(0u64, 1u64), (40, 2), (200, 3), (5_000, 4), (100_000, 5)] {
            let h = filled(n, 10, salt);
            // Twice, so a reused deflater gives the same bytes as a fresh one.
            for _ in 0..2 {
                assert_eq!(
                    codec.encode(&h).unwrap(),
                    postcard::to_stdvec(&h).unwrap(),
                    "n={n}"
                );
            }
            for into in [filled(30, 10, 9), filled(3_000, 10, 9)] {
                let mut expected = into.clone();
                expected.merge(&h).unwrap();
                let mut merged = into.clone();
                codec
                    .merge_encoded(&mut merged, &postcard::to_stdvec(&h).unwrap())
                    .unwrap();
                assert_eq!(merged, expected, "n={n}");
            }
        }
        let mut into = filled(300, 10, 1);
        let before = into.clone();
        let bad = postcard::to_stdvec(&HllWire::Dense {
            precision: 10,
            zlib: zlib(&[70; 1024]),
        })
        .unwrap();
        assert!(codec.merge_encoded(&mut into, &bad).is_err());
        assert!(codec.merge_encoded(&mut into, &[0xff, 0xff]).is_err());
        let other_precision = postcard::to_stdvec(&filled(10, 11, 1)).unwrap();
        assert!(codec.merge_encoded(&mut into, &other_precision).is_err());
        assert_eq!(into, before);
    }

    #[test]
    fn merge_equals_inserting_both_sets() {
        // Sizes on both sides of the sparse limit (256 registers at p = 10), so sparse + sparse
        // stays sparse, turns dense, and sparse meets dense either way round.
        for (na, nb) in [
            (0, 10),
            (10, 0),
            (100, 100),
            (150, 150),
            (250, 40),
            (300, 5),
            (5, 300),
            (3_000, 200),
        ] {
            let users_a: Vec<u64> = (0..na).map(|i| i * 7919).collect();
            let users_b: Vec<u64> = (0..nb).map(|i| i * 104_729 + 3).collect();
            let mut a = HyperLogLog::default();
            users_a.iter().for_each(|&u| a.insert(u));
            let mut b = HyperLogLog::default();
            users_b.iter().for_each(|&u| b.insert(u));
            let mut both = HyperLogLog::default();
            users_a.iter().chain(&users_b).for_each(|&u| both.insert(u));
            let mut merged = a.clone();
            merged.merge(&b).unwrap();
            assert_eq!(merged, both, "{na} + {nb}");
            let mut merged = b.clone();
            merged.merge(&a).unwrap();
            assert_eq!(merged, both, "{nb} + {na}");
        }
    }
}
