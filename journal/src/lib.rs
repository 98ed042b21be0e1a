//! The on-board journal of decided events and the bulk uploader that ships it to the cloud.
//!
//! - [`record`]: the record and batch format (always built; the cloud depends on this crate
//!   with `default-features = false` to decode uploads).
//! - [`store`] (feature `store`): the sled journal with group commit, quota and corruption
//!   recovery.
//! - [`upload`] (feature `upload`): the resumable bulk uploader and its HTTP contract.

pub mod record;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "upload")]
pub mod upload;
