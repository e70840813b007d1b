//! Values the daemon writes on the agent's command line and the agent reads
//! back: one definition, so the two cannot spell them differently.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the agent does with the source address of host traffic in the VM
/// (`--nat`, and `nat` in the daemon's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatMode {
    /// Source-NAT to the bridge gateway: containers see the gateway, and
    /// replies from containers on several networks always come back.
    Masquerade,
    /// Containers see the host's tunnel address; they must route it back
    /// via the VM.
    Routed,
}

impl NatMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NatMode::Masquerade => "masquerade",
            NatMode::Routed => "routed",
        }
    }
}

impl fmt::Display for NatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NatMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "masquerade" => Ok(NatMode::Masquerade),
            "routed" => Ok(NatMode::Routed),
            other => Err(format!(
                "unknown NAT mode {other:?} (expected masquerade or routed)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_modes_read_back_as_written() {
        for mode in [NatMode::Masquerade, NatMode::Routed] {
            assert_eq!(mode.as_str().parse::<NatMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
        }
        assert_eq!(
            "bridge".parse::<NatMode>().unwrap_err(),
            "unknown NAT mode \"bridge\" (expected masquerade or routed)"
        );
    }
}
