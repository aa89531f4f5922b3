//! NICEPAY's current REST API ("NICEPAY Start", `/v1/…`). Only this module knows v1's paths,
//! field names, signatures, encodings and result codes.
//!
//! The manual leaves points open (V1.md, "Open questions"). Where it does, the safe reading is
//! chosen once, in [`choices`], and the README's "NICEPAY v1" section names each choice.

pub mod crypto;
pub mod keys;
pub mod settings;

pub use keys::{ClientKey, SecretKey};
pub use settings::{Auth, V1Settings};
