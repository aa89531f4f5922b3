//! Charging subscriptions: the pure planner (`plan`) and the engine that drives it (`engine`).

pub mod aimd;
pub mod engine;
pub mod model;
pub mod plan;
