//! `reflex-models`: loads a model and its manifest, verifies the checksum, builds the
//! tract plan and exposes one `predict` call. (Being built: see issue 3.)
