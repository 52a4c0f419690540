//! The one error type of the profile builder: every way `build` refuses its input.

use linfa_clustering::KMeansError;

/// Why a model could not be built. Each names what is wrong; none is a panic or a silent default.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{found} sampled users, at least {min} are needed to learn profiles")]
    TooFewUsers { found: usize, min: usize },
    #[error("{what} has {found} entries, expected {expected}")]
    WrongDimension {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("samples.features has {len} values, which is not a multiple of dim {dim}")]
    RaggedSamples { len: usize, dim: usize },
    /// `index` is the position in `samples.features` (user `index / dim`, feature `index % dim`).
    #[error("samples.features[{index}] is not a finite number")]
    NonFinite { index: usize },
    #[error("bad build parameters: {0}")]
    BadParams(String),
    /// The previous model handed in for stable identities is inconsistent.
    #[error("previous model: {0}")]
    BadPrevious(String),
    #[error("k-means with k = {k} failed")]
    Clustering {
        k: usize,
        #[source]
        source: KMeansError,
    },
}
