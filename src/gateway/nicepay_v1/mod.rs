//! NICEPAY's current REST API ("NICEPAY Start", `/v1/…`). Only this module knows v1's paths,
//! field names, signatures, encodings and result codes.
//!
//! The manual leaves points open (V1.md, "Open questions"). Where it does, the safe reading is
//! chosen once, in [`choices`], and the README's "NICEPAY v1" section names each choice.

pub mod answer;
pub mod choices;
pub mod client;
pub mod codes;
pub mod crypto;
pub mod fields;
pub mod gateway;
pub mod keys;
pub mod settings;
pub mod types;

pub use answer::{ApprovalReading, Paid, Reading, read_approval, read_lookup};
pub use client::{BuildError, V1Approval, V1ApproveRequest, V1CallError, V1Client, V1Reply};
pub use codes::{Call, classify, classify_http};
pub use keys::{ClientKey, SecretKey};
pub use settings::{Auth, V1Settings};
