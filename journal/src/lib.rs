//! The on-board journal of decided events and the bulk uploader that ships it to the cloud.
//!
//! - [`record`]: the record and batch format, re-exported from `reflex-records` (always
//!   built).
//! - [`store`] (feature `store`): the sled journal with group commit, quota and corruption
//!   recovery.
//! - [`upload`] (feature `upload`): the resumable bulk uploader and its HTTP contract.

/// The record and batch format (the `reflex-records` crate). A compatibility path: the
/// daemon names the format as `reflex_journal::record::…`; new code that needs only the
/// format (the cloud) depends on `reflex-records` directly.
pub use reflex_records as record;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "upload")]
pub mod upload;
