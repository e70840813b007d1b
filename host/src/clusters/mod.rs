//! Kubernetes clusters running in Docker, whose pod and Service ranges are
//! routed through the agent. kind is the one provider today; other
//! distributions go beside it.

pub mod kind;
