//! Standardisation: per-dimension mean and spread of the samples, in one pass that also rejects
//! non-finite values.
//!
//! Invariants: `scale[d]` is finite and > 0 and exactly representable as f32 (the model
//! publishes f32, and every distance the builder computes uses the same rounded values); a
//! dimension whose spread is (near) zero gets scale 1 and is marked `flat`, so nothing divides
//! by ~0 and no name is drawn from it.

use crate::BuildError;

/// A dimension is flat when its standard deviation is at most this times `max(1, |mean|)`:
/// f32 inputs carry ~6e-8 relative rounding, so anything below 1e-6 is noise, not behavior.
const FLAT_SPREAD: f64 = 1e-6;

#[derive(Debug)]
pub(crate) struct Scaling {
    /// f32-rounded means, held as f64.
    pub mean: Vec<f64>,
    /// f32-rounded scales (standard deviation, or 1 for flat dimensions), held as f64.
    pub scale: Vec<f64>,
    /// Population standard deviation in feature units (0 for a flat dimension).
    pub std: Vec<f64>,
    pub flat: Vec<bool>,
}

impl Scaling {
    /// One pass over the samples (Welford's update in f64 per dimension).
    pub fn measure(dim: usize, features: &[f32]) -> Result<Scaling, BuildError> {
        let mut mean = vec![0.0f64; dim];
        let mut m2 = vec![0.0f64; dim];
        for (row_index, row) in features.chunks_exact(dim).enumerate() {
            let n = (row_index + 1) as f64;
            for (d, &x) in row.iter().enumerate() {
                if !x.is_finite() {
                    return Err(BuildError::NonFinite {
                        index: row_index * dim + d,
                    });
                }
                let x = f64::from(x);
                let delta = x - mean[d];
                mean[d] += delta / n;
                m2[d] += delta * (x - mean[d]);
            }
        }
        let users = (features.len() / dim) as f64;
        let mut scaling = Scaling {
            mean: Vec::with_capacity(dim),
            scale: Vec::with_capacity(dim),
            std: Vec::with_capacity(dim),
            flat: Vec::with_capacity(dim),
        };
        for d in 0..dim {
            let std = (m2[d].max(0.0) / users).sqrt();
            let rounded_mean = f64::from(to_f32(mean[d]));
            // Finite inputs give a finite std (squares of f32 values fit f64).
            let flat = std <= FLAT_SPREAD * rounded_mean.abs().max(1.0);
            let scale = if flat { 1.0 } else { f64::from(to_f32(std)) };
            scaling.mean.push(rounded_mean);
            scaling.scale.push(scale);
            scaling.std.push(if flat { 0.0 } else { std });
            scaling.flat.push(flat);
        }
        Ok(scaling)
    }

    pub fn to_raw(&self, d: usize, scaled: f64) -> f64 {
        scaled * self.scale[d] + self.mean[d]
    }
}

/// Nearest f32, clamped to the finite range (means and spreads of f32 values fit, but f64
/// rounding at the very edge must not turn into infinity).
pub(crate) fn to_f32(x: f64) -> f32 {
    x.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32
}
