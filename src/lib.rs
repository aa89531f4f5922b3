//! nicebill: recurring card billing on NICEPAY billkeys.
//!
//! See `ARCHITECTURE.md` for the map of modules and the rules between them.
#![forbid(unsafe_code)]

pub mod clock;
pub mod domain;
pub mod gateway;
