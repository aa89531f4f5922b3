//! Payment gateways nicebill speaks to. Today only NICEPAY.

pub mod nicepay;
