//! What runs beside the pipeline, each in a module of its own: the models it serves
//! ([`models`]), the cache of their start-up checks ([`model_cache`]) and the background
//! verification of a start on that cache ([`verify`]), their hot reload ([`reload`]), the
//! journal's opening and uploads ([`journal`]), the systemd watchdog ([`watchdog`]) and
//! the graceful shutdown ([`shutdown`]).

pub mod journal;
pub mod model_cache;
pub mod models;
pub mod reload;
pub mod shutdown;
pub mod verify;
pub mod watchdog;
