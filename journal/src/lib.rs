//! The on-board journal of decided events and the bulk uploader that ships it to the cloud.
//!
//! - [`record`]: the record and batch format, re-exported from `reflex-records` (always
//!   built).
//! - [`store`] (feature `store`): the sled journal with group commit, quota and corruption
//!   recovery.
//! - [`upload`] (feature `upload`): the resumable bulk uploader and its HTTP contract.

/// The record and batch format (the `reflex-records` crate), which the store's API takes
/// and returns. Code that needs only the format (the cloud) depends on `reflex-records`.
pub use reflex_records as record;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "upload")]
pub mod upload;
