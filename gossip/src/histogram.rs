//! Latency histograms on the wire: HdrHistogram's V2 *compressed* (deflate) serialization, as
//! produced by the `hdrhistogram` crate's `V2DeflateSerializer`, kept as opaque bytes in the
//! sketch so encoding a sketch costs no histogram work.
//!
//! Decoding is done here rather than by the `hdrhistogram` deserializer, because that one trusts
//! the declared sizes (it allocates the declared payload length and the counts array of the
//! declared range up front). [`LatencyHistogram::to_histogram`] inflates at most
//! [`MAX_INFLATED`] bytes, checks both cookies, that the declared payload length matches what was
//! inflated, that the precision is at most [`MAX_SIGFIG`] significant figures (which bounds the
//! counts array at ~55k counters for any range), that the range is one `hdrhistogram` accepts,
//! and that every non-zero count lies inside the counts array the range declares. Histograms are
//! written at [`WIRE_SIGFIG`] = 2 significant figures (1 % resolution), or 1 if that would exceed
//! [`HISTOGRAM_BUDGET`], re-bucketing finer input ([`LatencyHistogram::from_histogram`]).
//!
//! Merging many histograms (the forecaster's store) goes through a [`HistogramSum`], which adds
//! the counts of encoded histograms counter by counter (exactly what `Histogram::add` of the
//! decoded histograms gives) without building them, and a [`HistogramCodec`], which keeps the
//! inflate and deflate state between histograms. A histogram that passed
//! [`LatencyHistogram::validate`] (the receiver validates every sketch it decodes) keeps the
//! inflated form validation produced, so merging it does not inflate it a second time.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};
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

/// Output buffer tried first when inflating: room for any 2-significant-figure histogram of up
/// to an hour. Larger ones are inflated again into a larger buffer, up to [`MAX_INFLATED`].
const FIRST_INFLATE_SIZE: usize = 32 * 1024;

/// A latency histogram in HdrHistogram V2 compressed form. On the wire it is just the bytes (a
/// newtype's encoding); equality compares the bytes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LatencyHistogram {
    #[serde(with = "serde_bytes_vec")]
    bytes: Vec<u8>,
    /// The inflated V2 form, kept by [`LatencyHistogram::validate`] so a later merge does not
    /// inflate again. Derived from `bytes`, which never change once built.
    #[serde(skip)]
    inflated: OnceLock<Arc<[u8]>>,
}

impl PartialEq for LatencyHistogram {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for LatencyHistogram {}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LatencyHistogram")
            .field(&self.bytes)
            .finish()
    }
}

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
                return Ok(Self::raw(out));
            }
            last = Some(out);
        }
        match last {
            Some(out) if out.len() <= MAX_COMPRESSED => Ok(Self::raw(out)),
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
            Ok(h) => Self::from_histogram(&h).unwrap_or(Self::raw(Vec::new())),
            Err(_) => Self::raw(Vec::new()),
        }
    }

    fn raw(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            inflated: OnceLock::new(),
        }
    }

    /// The V2 compressed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Take V2 compressed bytes from elsewhere (checked like wire input).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let h = Self::raw(bytes);
        h.validate()?;
        Ok(h)
    }

    /// Deserialize into a histogram (auto-resizing, so it can absorb others).
    pub fn to_histogram(&self) -> Result<Histogram<u64>> {
        with_thread_codec(|codec| codec.decode(self))
    }

    /// Check that the bytes are a well-formed, bounded V2 compressed histogram. Keeps the
    /// inflated form for later merges.
    pub fn validate(&self) -> Result<()> {
        if self.inflated.get().is_some() {
            return Ok(());
        }
        with_thread_codec(|codec| {
            let inflated = codec.checked_inflation(&self.bytes)?;
            let _ = self.inflated.set(Arc::from(inflated));
            Ok(())
        })
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
}

thread_local! {
    /// Decoding state reused by [`LatencyHistogram::to_histogram`] and
    /// [`LatencyHistogram::validate`] on this thread (the receiver validates every entry).
    static THREAD_CODEC: Cell<Option<HistogramCodec>> = const { Cell::new(None) };
}

fn with_thread_codec<T>(f: impl FnOnce(&mut HistogramCodec) -> T) -> T {
    let mut codec = THREAD_CODEC
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let out = f(&mut codec);
    let _ = THREAD_CODEC.try_with(|slot| slot.set(Some(codec)));
    out
}

/// Reusable state for decoding and encoding many histograms: the inflater, the deflater and the
/// buffers live as long as the codec instead of being allocated (and zeroed) per histogram.
/// Decoding applies every check of [`LatencyHistogram::validate`].
pub struct HistogramCodec {
    inflater: Decompress,
    inflated: Vec<u8>,
    /// `(value, count)` of each non-zero counter of the histogram decoded last.
    counts: Vec<(u64, u64)>,
    deflater: Option<Compress>,
    serializer: V2Serializer,
    plain: Vec<u8>,
}

impl Default for HistogramCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HistogramCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramCodec").finish_non_exhaustive()
    }
}

impl HistogramCodec {
    pub fn new() -> Self {
        Self {
            inflater: Decompress::new(true),
            inflated: Vec::new(),
            counts: Vec::new(),
            deflater: None,
            serializer: V2Serializer::new(),
            plain: Vec::new(),
        }
    }

    /// Decode `h` into a histogram of the range and precision it declares (auto-resizing, so
    /// it can absorb others).
    pub fn decode(&mut self, h: &LatencyHistogram) -> Result<Histogram<u64>> {
        let layout = self.collect_counts(h.inflated.get().map(|i| &i[..]), &h.bytes)?;
        self.histogram_of(layout)
    }

    /// [`HistogramCodec::decode`] of V2 compressed bytes from elsewhere (checked alike).
    pub fn decode_bytes(&mut self, bytes: &[u8]) -> Result<Histogram<u64>> {
        let layout = self.collect_counts(None, bytes)?;
        self.histogram_of(layout)
    }

    /// Serialize `h` at its own precision, with no size budget and no re-bucketing, so nothing
    /// merged into it is lost (the store keeps merged minutes this way). Fails if the result
    /// would not pass [`LatencyHistogram::validate`] (more than [`MAX_SIGFIG`] significant
    /// figures, or larger than [`MAX_INFLATED`] / [`MAX_COMPRESSED`]); callers
    /// can fall back to [`LatencyHistogram::from_histogram`].
    pub fn encode_exact(&mut self, h: &Histogram<u64>) -> Result<LatencyHistogram> {
        if h.sigfig() > MAX_SIGFIG {
            return Err(Error::Histogram(format!(
                "{} significant figures; at most {MAX_SIGFIG}",
                h.sigfig()
            )));
        }
        self.plain.clear();
        self.serializer
            .serialize(h, &mut self.plain)
            .map_err(|e| Error::Histogram(format!("serialize: {e:?}")))?;
        if self.plain.len() > MAX_INFLATED {
            return Err(Error::Histogram(format!(
                "serializes to {} bytes, past {MAX_INFLATED}",
                self.plain.len()
            )));
        }
        let deflater = self
            .deflater
            .get_or_insert_with(|| Compress::new(Compression::default(), true));
        deflater.reset();
        let mut out = Vec::with_capacity(8 + self.plain.len() / 2 + 64);
        out.extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        loop {
            let consumed = usize::try_from(deflater.total_in()).unwrap_or(usize::MAX);
            let rest = self.plain.get(consumed..).unwrap_or_default();
            let status = deflater
                .compress_vec(rest, &mut out, FlushCompress::Finish)
                .map_err(|e| Error::Histogram(format!("deflate: {e}")))?;
            if status == Status::StreamEnd {
                break;
            }
            if out.capacity() > MAX_COMPRESSED {
                // Out of room (or no progress): past the limit either way.
                return Err(Error::Histogram(format!(
                    "compressed form is more than {MAX_COMPRESSED} bytes"
                )));
            }
            out.reserve(out.capacity().max(256));
        }
        if out.len() > MAX_COMPRESSED {
            return Err(Error::Histogram(format!(
                "compressed form is more than {MAX_COMPRESSED} bytes"
            )));
        }
        let len = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&len.to_be_bytes());
        Ok(LatencyHistogram::raw(out))
    }

    /// Check and inflate `bytes` (unless `inflated` holds their checked inflation already),
    /// parse the V2 header and collect the non-zero counts into `self.counts` as
    /// `(value, count)`. Returns the declared layout.
    fn collect_counts(&mut self, inflated: Option<&[u8]>, bytes: &[u8]) -> Result<Layout> {
        let inflated = match inflated {
            Some(inflated) => inflated,
            None => inflate_checked(&mut self.inflater, &mut self.inflated, bytes)?,
        };
        let (layout, payload) = parse_v2(inflated)?;
        self.counts.clear();
        let counts = &mut self.counts;
        for_each_count(&layout, payload, |index, count| {
            counts.push((value_of(&layout, index)?, count));
            Ok(())
        })?;
        Ok(layout)
    }

    /// Inflate and fully check `bytes`; returns the inflated form.
    fn checked_inflation(&mut self, bytes: &[u8]) -> Result<&[u8]> {
        let inflated = inflate_checked(&mut self.inflater, &mut self.inflated, bytes)?;
        let (layout, payload) = parse_v2(inflated)?;
        check_counts(&layout, payload)?;
        Ok(inflated)
    }

    fn histogram_of(&self, layout: Layout) -> Result<Histogram<u64>> {
        let mut h = Histogram::<u64>::new_with_bounds(layout.low, layout.high, layout.sigfig)
            .map_err(|e| Error::Histogram(format!("range: {e:?}")))?;
        h.auto(true);
        self.record_counts(&mut h)?;
        Ok(h)
    }

    fn record_counts(&self, into: &mut Histogram<u64>) -> Result<()> {
        for &(value, count) in &self.counts {
            into.record_n(value, count)
                .map_err(|e| Error::Merge(format!("histograms: {e:?}")))?;
        }
        Ok(())
    }
}

/// An exact running sum of histograms: the histogram that adding each addend's decoded form into
/// the first one's gives (`Histogram::add`, auto-resizing), without decoding them. While the
/// addends share the first one's precision and unit (the normal case: every proxy writes the
/// same), counts add counter by counter into one array; otherwise the sum turns into a
/// [`Histogram`] and takes each count at its counter's value, as `Histogram::add` does.
#[derive(Clone, Debug, Default)]
pub struct HistogramSum(Sum);

#[derive(Clone, Debug, Default)]
enum Sum {
    #[default]
    Empty,
    /// Counters indexed as `layout` indexes them; no longer than up to the last non-zero one.
    Counts {
        layout: Layout,
        counts: Vec<u64>,
    },
    Histogram(Histogram<u64>),
}

impl HistogramSum {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `h`. Inflates it with `codec` unless it was validated (which kept its inflated
    /// form). Every check runs before the sum is touched, so on error it is unchanged.
    pub fn add(&mut self, h: &LatencyHistogram, codec: &mut HistogramCodec) -> Result<()> {
        match h.inflated.get() {
            Some(inflated) => self.add_inflated(inflated, true),
            None => {
                let inflated = inflate_checked(&mut codec.inflater, &mut codec.inflated, &h.bytes)?;
                self.add_inflated(inflated, false)
            }
        }
    }

    /// [`HistogramSum::add`] of V2 compressed bytes from elsewhere (checked alike).
    pub fn add_bytes(&mut self, bytes: &[u8], codec: &mut HistogramCodec) -> Result<()> {
        let inflated = inflate_checked(&mut codec.inflater, &mut codec.inflated, bytes)?;
        self.add_inflated(inflated, false)
    }

    /// Add an inflated V2 histogram; `checked` if it passed [`check_counts`] before.
    fn add_inflated(&mut self, inflated: &[u8], checked: bool) -> Result<()> {
        let (layout, payload) = parse_v2(inflated)?;
        if !checked {
            check_counts(&layout, payload)?;
        }
        // Past the checks above nothing below fails for well-formed counts.
        match &mut self.0 {
            Sum::Empty => {
                let mut counts = vec![0; layout.len];
                add_checked_counts(&mut counts, payload);
                self.0 = Sum::Counts { layout, counts };
            }
            Sum::Counts {
                layout: ours,
                counts,
            } if ours.same_counters(&layout) => {
                if layout.high > ours.high {
                    *ours = Layout::new(ours.low, layout.high, ours.sigfig)?;
                    counts.resize(ours.len.max(counts.len()), 0);
                }
                add_checked_counts(counts, payload);
            }
            Sum::Counts { .. } | Sum::Histogram(_) => {
                let sum = self.histogram_mut()?;
                for_each_count(&layout, payload, |index, count| {
                    sum.record_n(value_of(&layout, index)?, count)
                        .map_err(|e| Error::Merge(format!("histograms: {e:?}")))
                })?;
            }
        }
        Ok(())
    }

    /// The sum as a [`Histogram`], from now on.
    fn histogram_mut(&mut self) -> Result<&mut Histogram<u64>> {
        if !matches!(self.0, Sum::Histogram(_)) {
            self.0 = Sum::Histogram(self.to_histogram()?);
        }
        match &mut self.0 {
            Sum::Histogram(h) => Ok(h),
            _ => Err(Error::Merge("histogram sum in an unexpected state".into())),
        }
    }

    /// The sum as a histogram (auto-resizing); an empty sum is [`LatencyHistogram::empty`]'s.
    pub fn to_histogram(&self) -> Result<Histogram<u64>> {
        let err = |e: &dyn std::fmt::Debug| Error::Merge(format!("histograms: {e:?}"));
        match &self.0 {
            Sum::Empty => {
                let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, WIRE_SIGFIG)
                    .map_err(|e| err(&e))?;
                h.auto(true);
                Ok(h)
            }
            Sum::Counts { layout, counts } => {
                let mut h =
                    Histogram::<u64>::new_with_bounds(layout.low, layout.high, layout.sigfig)
                        .map_err(|e| err(&e))?;
                h.auto(true);
                for (index, &count) in counts.iter().enumerate() {
                    if count > 0 {
                        h.record_n(value_of(layout, index)?, count)
                            .map_err(|e| err(&e))?;
                    }
                }
                Ok(h)
            }
            Sum::Histogram(h) => Ok(h.clone()),
        }
    }

    /// Total count (saturating).
    pub fn len(&self) -> u64 {
        match &self.0 {
            Sum::Empty => 0,
            Sum::Counts { counts, .. } => counts.iter().fold(0u64, |a, &c| a.saturating_add(c)),
            Sum::Histogram(h) => h.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Add the counts of a V2 payload that passed [`check_counts`] into `counts`, which holds at
/// least the counters of the payload's layout. The hot loop of merging: one pass, no value
/// computed; anything malformed would end it early (it cannot, once checked).
fn add_checked_counts(counts: &mut [u64], payload: &[u8]) {
    let mut at = 0;
    let mut index = 0usize;
    while let Some(&b) = payload.get(at) {
        let raw = if b < 0x80 {
            at += 1;
            u64::from(b)
        } else {
            match read_varint(&payload[at..]) {
                Ok((raw, used)) => {
                    at += used;
                    raw
                }
                Err(_) => return,
            }
        };
        // ZigZag: even is a count of raw / 2, odd a run of (raw + 1) / 2 zero counters.
        if raw & 1 == 0 {
            let count = raw >> 1;
            if count > 0 {
                if let Some(c) = counts.get_mut(index) {
                    *c = c.saturating_add(count);
                }
            }
            index = index.saturating_add(1);
        } else {
            index = index.saturating_add(usize::try_from((raw >> 1) + 1).unwrap_or(usize::MAX));
        }
    }
}

/// The value of counter `index`, or an error if it would not fit a u64.
fn value_of(layout: &Layout, index: usize) -> Result<u64> {
    layout
        .value_at(index)
        .ok_or_else(|| Error::Histogram(format!("counter {index} lies beyond the largest value")))
}

/// Every check decoding makes on the counts of a V2 payload.
fn check_counts(layout: &Layout, payload: &[u8]) -> Result<()> {
    for_each_count(layout, payload, |index, _| {
        value_of(layout, index).map(|_| ())
    })
}

/// Check the compressed envelope of `bytes` and inflate its zlib stream into `buffer` (at most
/// [`MAX_INFLATED`] bytes). Returns the inflated V2 bytes.
fn inflate_checked<'b>(
    inflater: &mut Decompress,
    buffer: &'b mut Vec<u8>,
    bytes: &[u8],
) -> Result<&'b [u8]> {
    if bytes.len() > MAX_COMPRESSED {
        return Err(Error::Histogram(format!(
            "{} compressed bytes is too many",
            bytes.len()
        )));
    }
    let (Some(cookie), Some(declared)) = (be32(bytes, 0), be32(bytes, 4)) else {
        return Err(Error::Histogram(
            "shorter than the V2 compressed header".into(),
        ));
    };
    if cookie != V2_COMPRESSED_COOKIE {
        return Err(Error::Histogram(format!(
            "cookie {cookie:#x} is not V2 compressed"
        )));
    }
    let stream = &bytes[8..];
    if declared as usize != stream.len() {
        return Err(Error::Histogram(format!(
            "declares {declared} compressed bytes, carries {}",
            stream.len()
        )));
    }
    let mut size = FIRST_INFLATE_SIZE;
    loop {
        if buffer.len() < size {
            buffer.resize(size, 0);
        }
        inflater.reset(true);
        // Finish on the first call inflates in one go straight into the buffer; it reports
        // anything but the stream's end when the stream is cut short or does not fit.
        let status = inflater
            .decompress(stream, &mut buffer[..size], FlushDecompress::Finish)
            .map_err(|e| Error::Histogram(format!("inflate: {e}")))?;
        let inflated = usize::try_from(inflater.total_out()).unwrap_or(usize::MAX);
        if status == Status::StreamEnd && inflated <= MAX_INFLATED {
            return Ok(&buffer[..inflated]);
        }
        if size > MAX_INFLATED {
            return Err(Error::Histogram(format!(
                "inflates past {MAX_INFLATED} bytes (or the stream is incomplete)"
            )));
        }
        size = (size * 4).min(MAX_INFLATED + 1);
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_be_bytes(a))
}

/// Parse the V2 header of `inflated`, checked like `hdrhistogram`'s deserializer checks it (plus
/// [`MAX_SIGFIG`]). Returns the layout and the encoded counts.
fn parse_v2(inflated: &[u8]) -> Result<(Layout, &[u8])> {
    let header = |at: usize| be32(inflated, at);
    let wide = |at: usize| be64(inflated, at);
    let (
        Some(cookie),
        Some(payload),
        Some(normalizing_offset),
        Some(sigfig),
        Some(low),
        Some(high),
        Some(ratio),
    ) = (
        header(0),
        header(4),
        header(8),
        header(12),
        wide(16),
        wide(24),
        wide(32),
    )
    else {
        return Err(Error::Histogram(
            "inflated payload shorter than the V2 header".into(),
        ));
    };
    if cookie != V2_COOKIE {
        return Err(Error::Histogram("inner cookie is not V2".into()));
    }
    let counts = &inflated[V2_HEADER_SIZE..];
    if payload as usize != counts.len() {
        return Err(Error::Histogram(format!(
            "declares a {payload}-byte payload, carries {}",
            counts.len()
        )));
    }
    if sigfig > u32::from(MAX_SIGFIG) {
        return Err(Error::Histogram(format!(
            "{sigfig} significant figures; at most {MAX_SIGFIG}"
        )));
    }
    if normalizing_offset != 0 {
        return Err(Error::Histogram(format!(
            "normalizing index offset {normalizing_offset} is not supported"
        )));
    }
    if f64::from_bits(ratio) != 1.0 {
        return Err(Error::Histogram(
            "integer-to-double conversion ratio is not supported".into(),
        ));
    }
    Ok((Layout::new(low, high, sigfig as u8)?, counts))
}

/// The counts array a V2 header declares, derived exactly as `Histogram::new_with_bounds` and
/// `Histogram::resize` derive it (floating-point magnitudes included), so a counter index means
/// the same value here as in `hdrhistogram`, without allocating the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    low: u64,
    high: u64,
    sigfig: u8,
    unit_magnitude: u32,
    sub_bucket_half_count_magnitude: u32,
    /// Counters in the array (`Histogram::distinct_values`).
    len: usize,
}

impl Layout {
    fn new(low: u64, high: u64, sigfig: u8) -> Result<Self> {
        let bad = |why: &str| Err(Error::Histogram(format!("range {low}..{high}: {why}")));
        if low < 1 {
            return bad("the lowest value is zero");
        }
        if low > u64::MAX / 2 {
            return bad("the lowest value is too large");
        }
        if high < 2 * low {
            return bad("the highest value is below twice the lowest");
        }
        if sigfig > 5 {
            return bad("more than 5 significant figures");
        }
        let largest = 2 * 10_u32.pow(u32::from(sigfig));
        let unit_magnitude = (low as f64).log2().floor() as u32;
        let sub_bucket_count_magnitude = f64::from(largest).log2().ceil() as u32;
        if unit_magnitude + sub_bucket_count_magnitude > 63 {
            return bad("the precision cannot be represented above the lowest value");
        }
        let sub_bucket_half_count_magnitude = sub_bucket_count_magnitude - 1;
        // Histogram::buckets_to_cover(high).
        let mut smallest_untrackable = (1u64 << sub_bucket_count_magnitude) << unit_magnitude;
        let mut buckets = 1usize;
        while smallest_untrackable <= high {
            if smallest_untrackable > u64::MAX / 2 {
                buckets += 1;
                break;
            }
            smallest_untrackable <<= 1;
            buckets += 1;
        }
        Ok(Self {
            low,
            high,
            sigfig,
            unit_magnitude,
            sub_bucket_half_count_magnitude,
            len: (buckets + 1) << sub_bucket_half_count_magnitude,
        })
    }

    /// Whether counter indexes mean the same values in both (`high` only sets how many there are).
    fn same_counters(&self, other: &Layout) -> bool {
        self.sigfig == other.sigfig && self.unit_magnitude == other.unit_magnitude
    }

    /// The lowest value counted by counter `index` (`Histogram::value_for`), if it fits a u64.
    fn value_at(&self, index: usize) -> Option<u64> {
        let half_magnitude = self.sub_bucket_half_count_magnitude;
        let half = 1u64 << half_magnitude;
        let (bucket, sub_bucket) = match (index >> half_magnitude) as u64 {
            0 => (0, index as u64 & (half - 1)),
            b => (b - 1, (index as u64 & (half - 1)) + half),
        };
        let shift = u32::try_from(bucket).ok()? + self.unit_magnitude;
        let value = sub_bucket.checked_shl(shift)?;
        (value >> shift == sub_bucket).then_some(value)
    }
}

/// Call `f(index, count)` for every non-zero counter of a V2 payload: ZigZag LEB128 varints (the
/// ninth byte of a varint carries 8 bits), a negative number being a run of zero counters.
/// Rejects what `hdrhistogram`'s deserializer rejects: a truncated varint, a run overflowing the
/// index, a non-zero count past the counts array.
fn for_each_count(
    layout: &Layout,
    payload: &[u8],
    mut f: impl FnMut(usize, u64) -> Result<()>,
) -> Result<()> {
    let mut at = 0;
    let mut index = 0usize;
    while at < payload.len() {
        let (raw, used) = read_varint(&payload[at..])?;
        at += used;
        let number = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        if number < 0 {
            let zeros = number
                .checked_neg()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| Error::Histogram("run of zero counters overflows".into()))?;
            index = index
                .checked_add(zeros)
                .ok_or_else(|| Error::Histogram("run of zero counters overflows".into()))?;
        } else {
            if number > 0 {
                if index >= layout.len {
                    return Err(Error::Histogram(format!(
                        "counter {index} is past the {} counters of the declared range",
                        layout.len
                    )));
                }
                f(index, number as u64)?;
            }
            index = index
                .checked_add(1)
                .ok_or_else(|| Error::Histogram("counter index overflows".into()))?;
        }
    }
    Ok(())
}

#[inline]
fn read_varint(bytes: &[u8]) -> Result<(u64, usize)> {
    // Most counts and runs take one byte.
    if let Some(&b) = bytes.first() {
        if b < 0x80 {
            return Ok((u64::from(b), 1));
        }
    }
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(9).enumerate() {
        if i == 8 {
            return Ok((value | (u64::from(b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(Error::Histogram("payload ends inside a count".into()))
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
    use hdrhistogram::serialization::Deserializer;

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
            assert!(LatencyHistogram::raw(bad).to_histogram().is_err());
        }
        // Truncate a valid one at every length: never panics, always an error.
        let good = LatencyHistogram::from_histogram(&sample_histogram(100))
            .unwrap()
            .bytes;
        for cut in 0..good.len() {
            assert!(
                LatencyHistogram::raw(good[..cut].to_vec())
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
        let err = LatencyHistogram::raw(bytes).to_histogram().unwrap_err();
        assert!(
            err.to_string().contains("inflates past") || err.to_string().contains("too many"),
            "{err}"
        );
    }

    /// Counts by value, total count, largest value.
    type Summary = (Vec<(u64, u64)>, u64, u64);

    /// hdrhistogram's own decoding of uncompressed V2 bytes.
    fn reference(plain: &[u8]) -> Option<Summary> {
        let h: Histogram<u64> = Deserializer::new().deserialize(&mut &plain[..]).ok()?;
        let counts = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        Some((counts, h.len(), h.max()))
    }

    fn ours(h: &Histogram<u64>) -> Summary {
        let counts = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        (counts, h.len(), h.max())
    }

    fn plain_v2(h: &Histogram<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        V2Serializer::new().serialize(h, &mut out).unwrap();
        out
    }

    fn compressed(plain: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut enc, plain).unwrap();
        let z = enc.finish().unwrap();
        let mut bytes = V2_COMPRESSED_COOKIE.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(z.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&z);
        bytes
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn varied_histograms() -> Vec<Histogram<u64>> {
        let mut out = Vec::new();
        let mut seed = 7u64;
        for (low, high, sigfig) in [
            (1, 60_000_000, 3),
            (1, 60_000_000, 2),
            (1, 3_600_000_000, 1),
            (1, 2, 0),
            (1000, 1 << 40, 2),
            (3, 1 << 62, 3),
            (1, u64::MAX, 2),
        ] {
            let mut h = Histogram::<u64>::new_with_bounds(low, high, sigfig).unwrap();
            for _ in 0..500 {
                let v = (lcg(&mut seed) << (lcg(&mut seed) % 30)).min(high);
                h.record_n(v, 1 + lcg(&mut seed) % 1000).unwrap();
            }
            h.record(high).unwrap();
            out.push(h);
        }
        out
    }

    #[test]
    fn decoding_agrees_with_hdrhistogram() {
        let mut codec = HistogramCodec::new();
        for h in varied_histograms() {
            let plain = plain_v2(&h);
            let decoded = codec.decode_bytes(&compressed(&plain)).unwrap();
            assert_eq!(Some(ours(&decoded)), reference(&plain), "{h:?}");
            assert_eq!(
                (decoded.low(), decoded.high(), decoded.sigfig()),
                (h.low(), h.high(), h.sigfig())
            );
        }
    }

    #[test]
    fn layout_matches_hdrhistogram() {
        for h in varied_histograms() {
            let layout = Layout::new(h.low(), h.high(), h.sigfig()).unwrap();
            assert_eq!(layout.len, h.distinct_values(), "{h:?}");
            // Every counter's value lands back in that counter.
            let step = (layout.len / 300).max(1);
            for index in (0..layout.len).step_by(step) {
                let Some(value) = layout.value_at(index) else {
                    continue;
                };
                let mut one = Histogram::<u64>::new_from(&h);
                one.record(value).unwrap();
                let mut seen = Vec::new();
                let plain = plain_v2(&one);
                for_each_count(&layout, &plain[V2_HEADER_SIZE..], |i, c| {
                    seen.push((i, c));
                    Ok(())
                })
                .unwrap();
                assert_eq!(seen, [(index, 1)], "value {value}");
            }
        }
    }

    #[test]
    fn sums_equal_adding_decoded_histograms() {
        let mut codec = HistogramCodec::new();
        let mut hs = varied_histograms();
        // Same precision and unit as the first, a wider range: still counter by counter.
        let mut wider = Histogram::<u64>::new_with_bounds(1, 1 << 50, 3).unwrap();
        wider.record_n(1 << 45, 7).unwrap();
        wider.record_n(12_345, 2).unwrap();
        hs.insert(1, wider);
        for a in &hs {
            for b in &hs {
                for c in &hs[..3] {
                    let mut expected = a.clone();
                    expected.auto(true);
                    expected.add(b).unwrap();
                    expected.add(c).unwrap();
                    let mut sum = HistogramSum::new();
                    for h in [a, b, c] {
                        sum.add_bytes(&compressed(&plain_v2(h)), &mut codec)
                            .unwrap();
                    }
                    let total = sum.to_histogram().unwrap();
                    let (got, want) = (ours(&total), ours(&expected));
                    assert_eq!((&got.0, got.1), (&want.0, want.1));
                    // The largest value agrees but at u64::MAX, which `add` reports one higher.
                    assert!(
                        got.2 == want.2 || want.2 == u64::MAX,
                        "{} {}",
                        got.2,
                        want.2
                    );
                    assert_eq!(total.sigfig(), a.sigfig());
                    assert_eq!(sum.len(), expected.len());
                }
            }
        }
        // A failed add leaves the sum as it was.
        let mut sum = HistogramSum::new();
        sum.add_bytes(&compressed(&plain_v2(&hs[0])), &mut codec)
            .unwrap();
        let before = ours(&sum.to_histogram().unwrap());
        assert!(sum.add_bytes(&[0xff; 40], &mut codec).is_err());
        // A run of a million zero counters, then a count of 1: past the end of any counts
        // array these ranges declare.
        let mut past_the_end = plain_v2(&hs[3]);
        let mut zigzag = 2 * 1_000_000 - 1u64;
        while zigzag >= 0x80 {
            past_the_end.push(zigzag as u8 | 0x80);
            zigzag >>= 7;
        }
        past_the_end.extend_from_slice(&[zigzag as u8, 2]);
        let payload = (past_the_end.len() - V2_HEADER_SIZE) as u32;
        past_the_end[4..8].copy_from_slice(&payload.to_be_bytes());
        assert!(sum
            .add_bytes(&compressed(&past_the_end), &mut codec)
            .is_err());
        assert_eq!(ours(&sum.to_histogram().unwrap()), before);
        assert!(HistogramSum::new().is_empty());
    }

    #[test]
    fn exact_encoding_keeps_every_bucket() {
        let mut codec = HistogramCodec::new();
        // Wide enough that the wire form falls back to 1 significant figure.
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        let (mut v, mut seed) = (100.0f64, 5u64);
        while v < 10_000_000.0 {
            h.record_n(v as u64, 1 + lcg(&mut seed) % 50).unwrap();
            v *= 1.003;
        }
        assert_eq!(
            LatencyHistogram::from_histogram(&h)
                .unwrap()
                .to_histogram()
                .unwrap()
                .sigfig(),
            1
        );
        let exact = codec.encode_exact(&h).unwrap();
        assert!(exact.as_bytes().len() > HISTOGRAM_BUDGET);
        let back = exact.to_histogram().unwrap();
        assert_eq!(back.sigfig(), 2);
        assert_eq!(ours(&back), ours(&h));
        // Same bytes as hdrhistogram's own serializer, so stored and wire forms are one format.
        assert_eq!(exact.as_bytes(), serialize(&h).unwrap().as_slice());
        // Beyond the decoding limits it refuses rather than writing something unreadable.
        let fine = Histogram::<u64>::new_with_bounds(1, 1000, 4).unwrap();
        assert!(codec.encode_exact(&fine).is_err());
    }

    #[test]
    fn mutated_payloads_are_decoded_like_hdrhistogram_or_rejected() {
        let mut codec = HistogramCodec::new();
        let mut seed = 99u64;
        let (mut agreed, mut rejected) = (0, 0);
        for h in varied_histograms() {
            let plain = plain_v2(&h);
            for _ in 0..300 {
                let mut bad = plain.clone();
                for _ in 0..1 + lcg(&mut seed) % 3 {
                    let at =
                        V2_HEADER_SIZE + (lcg(&mut seed) as usize) % (bad.len() - V2_HEADER_SIZE);
                    bad[at] = lcg(&mut seed) as u8;
                }
                let ours_result = codec.decode_bytes(&compressed(&bad)).map(|h| ours(&h));
                let theirs = std::panic::catch_unwind(|| reference(&bad)).unwrap_or(None);
                match (ours_result, theirs) {
                    (Ok(a), Some(b)) => {
                        assert_eq!(a, b);
                        agreed += 1;
                    }
                    // Stricter only where hdrhistogram would hold a counter for a value past u64.
                    (Err(e), Some(_)) => {
                        assert!(e.to_string().contains("beyond the largest value"), "{e}");
                        rejected += 1;
                    }
                    (Ok(_), None) => panic!("accepted what hdrhistogram rejects"),
                    (Err(_), None) => rejected += 1,
                }
            }
        }
        assert!(
            agreed > 100 && rejected > 100,
            "{agreed} agreed, {rejected} rejected"
        );
    }

    #[test]
    fn wire_form_is_the_bare_bytes_and_validation_keeps_the_inflation() {
        /// The type's encoding before it carried the inflated form.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before(#[serde(with = "serde_bytes_vec")] Vec<u8>);
        let h = LatencyHistogram::from_histogram(&sample_histogram(1000)).unwrap();
        let encoded = postcard::to_stdvec(&h).unwrap();
        assert_eq!(
            encoded,
            postcard::to_stdvec(&Before(h.bytes.clone())).unwrap()
        );
        let back: LatencyHistogram = postcard::from_bytes(&encoded).unwrap();
        assert_eq!(back, h);
        assert!(back.inflated.get().is_none());

        back.validate().unwrap();
        assert!(back.inflated.get().is_some());
        assert_eq!(back, h, "equality ignores the inflated form");
        let mut codec = HistogramCodec::new();
        let (mut via_cache, mut via_bytes) = (HistogramSum::new(), HistogramSum::new());
        for _ in 0..2 {
            via_cache.add(&back, &mut codec).unwrap();
            via_bytes.add(&h, &mut codec).unwrap();
        }
        let (via_cache, via_bytes) = (
            via_cache.to_histogram().unwrap(),
            via_bytes.to_histogram().unwrap(),
        );
        assert_eq!(ours(&via_cache), ours(&via_bytes));
        assert_eq!(via_cache.len(), 2000);
        assert_eq!(
            ours(&codec.decode(&back).unwrap()),
            ours(&h.to_histogram().unwrap())
        );

        // Garbage is rejected and nothing is kept.
        let bad = LatencyHistogram::raw(vec![0xff; 64]);
        assert!(bad.validate().is_err());
        assert!(bad.inflated.get().is_none());
    }
}
