//! The commands a user runs against the system or the daemon, apart from
//! `run`: `doctor`, `uninstall`, and rendering `status`.

pub mod doctor;
mod icmp;
pub mod status;
pub mod uninstall;
