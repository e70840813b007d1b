//! Host routes: which routes should exist ([`plan`], pure), making the host's
//! table match ([`router`]), and the per-OS facade for the tun device and the
//! routing table ([`os`]).

pub mod os;
pub mod plan;
pub mod router;
