//! Payment gateways nicebill speaks to: NICEPAY's legacy web API and its current REST API (v1).

pub mod nicepay;
pub mod nicepay_v1;
