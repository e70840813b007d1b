//! Test-only support shared by several modules' tests.

pub mod alloc_meter;
pub mod json_of;
