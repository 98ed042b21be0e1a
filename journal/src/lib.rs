//! The on-board journal of decided events and the bulk uploader that ships it to the cloud.
