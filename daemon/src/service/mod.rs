//! What runs beside the pipeline, each in a module of its own: the models it serves
//! ([`models`]), their hot reload ([`reload`]), the journal's opening and uploads
//! ([`journal`]), the systemd watchdog ([`watchdog`]) and the graceful shutdown
//! ([`shutdown`]).

pub mod journal;
pub mod models;
pub mod reload;
pub mod shutdown;
pub mod watchdog;
