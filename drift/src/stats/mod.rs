//! The drift statistics, pure functions on samples, [`Cdf`](crate::Cdf)s and profiles; one
//! module per statistic, each opening with its exact definition.

pub mod jensen_shannon;
pub mod kolmogorov;
pub mod ks;
pub mod psi;
pub mod verdict;
pub mod wasserstein;
