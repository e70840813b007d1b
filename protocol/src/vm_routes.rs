//! The routes the daemon wants in the VM (kind pod and Service ranges via the
//! node that owns them), as the control channel carries them.
//!
//! Requests, one per line:
//! - `{"op":"set-routes","routes":[{"destination":"10.244.1.0/24","via":"172.18.0.3"}]}`:
//!   the agent makes its routes exactly this set. Reply:
//!   `{"ok":true,"applied":[…],"removed":[…],"errors":[{"destination","via","error"}]}`
//!   (`applied`: requested routes now in place; `errors`: those refused).
//! - `{"op":"get-routes"}` → `{"ok":true,"routes":[…],"protocol":N}`.
//!
//! A request that cannot be carried out at all gets `{"ok":false,"error":"…"}`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The agent listens here, on its tunnel address.
pub const CONTROL_PORT: u16 = 51872;
/// Longest request line (newline excluded): far more than any VM route set
/// (a few per kind node).
pub const MAX_REQUEST: usize = 1 << 20;
/// Longest reply line the daemon reads.
pub const MAX_REPLY: usize = 4 << 20;
/// Most routes in one `set-routes`.
pub const MAX_ROUTES: usize = 4096;
/// Longest error text in a reply: serde's messages quote the offending input,
/// which must not make a reply as long as the request.
pub const MAX_ERROR: usize = 300;

/// One route in the VM: `destination` via the gateway `via` (on the bridge).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmRoute {
    pub destination: Ipv4Net,
    pub via: Ipv4Addr,
}

impl fmt::Display for VmRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.destination, self.via)
    }
}

/// `10.244.1.0/24 via 172.18.0.3`, as [`VmRoute`] displays.
impl FromStr for VmRoute {
    type Err = String;

    fn from_str(text: &str) -> Result<VmRoute, String> {
        let (destination, via) = text
            .split_once(" via ")
            .ok_or_else(|| format!("{text:?} is not `<destination> via <gateway>`"))?;
        Ok(VmRoute {
            destination: destination
                .trim()
                .parse()
                .map_err(|e| format!("destination {destination:?}: {e}"))?,
            via: via
                .trim()
                .parse()
                .map_err(|e| format!("gateway {via:?}: {e}"))?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    SetRoutes { routes: Vec<VmRoute> },
    GetRoutes,
}

/// A route the agent could not put in place, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteFailure {
    pub destination: String,
    pub via: String,
    pub error: String,
}

impl RouteFailure {
    pub fn new(route: &VmRoute, error: impl Into<String>) -> RouteFailure {
        RouteFailure {
            destination: route.destination.to_string(),
            via: route.via.to_string(),
            error: error.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<Vec<VmRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<VmRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RouteFailure>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<VmRoute>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A refusal, its text cut at [`MAX_ERROR`] characters.
    pub fn error(message: impl Into<String>) -> Reply {
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR) {
            message.truncate(cut);
            message.push('…');
        }
        Reply {
            ok: false,
            error: Some(message),
            ..Default::default()
        }
    }

    pub fn too_long() -> Reply {
        Reply::error(format!("request line of more than {MAX_REQUEST} bytes"))
    }
}

/// A request line (without its newline) as the agent reads it; the error is
/// the text of the reply.
pub fn decode_request(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(Reply::too_long().error.unwrap_or_default());
    }
    match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Err(format!("bad request: {e}")),
        Ok(Request::SetRoutes { routes }) if routes.len() > MAX_ROUTES => Err(format!(
            "{} routes in one request; at most {MAX_ROUTES}",
            routes.len()
        )),
        Ok(request) => Ok(request),
    }
}

/// A reply line as the daemon reads it.
pub fn decode_reply(line: &str) -> Result<Reply, serde_json::Error> {
    serde_json::from_str(line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::encode;
    use proptest::prelude::*;

    fn route(d: &str, v: &str) -> VmRoute {
        format!("{d} via {v}").parse().unwrap()
    }

    #[test]
    fn requests_are_the_documented_json_lines() {
        let set = Request::SetRoutes {
            routes: vec![route("10.244.1.0/24", "172.18.0.3")],
        };
        assert_eq!(
            encode(&set).unwrap(),
            "{\"op\":\"set-routes\",\"routes\":[{\"destination\":\"10.244.1.0/24\",\"via\":\"172.18.0.3\"}]}\n"
        );
        assert_eq!(
            encode(&Request::GetRoutes).unwrap(),
            "{\"op\":\"get-routes\"}\n"
        );
    }

    #[test]
    fn replies_leave_out_what_they_do_not_carry() {
        let reply = Reply {
            ok: true,
            applied: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(encode(&reply).unwrap(), "{\"ok\":true,\"applied\":[]}\n");
        assert_eq!(decode_reply("{\"ok\":true,\"applied\":[]}").unwrap(), reply);
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(decode_request("{\"op\":\"drop-table\"}")
            .unwrap_err()
            .starts_with("bad request: unknown variant `drop-table`"));
        let many = Request::SetRoutes {
            routes: vec![route("10.244.1.0/24", "172.18.0.3"); MAX_ROUTES + 1],
        };
        assert_eq!(
            decode_request(&encode(&many).unwrap()).unwrap_err(),
            format!(
                "{} routes in one request; at most {MAX_ROUTES}",
                MAX_ROUTES + 1
            )
        );
    }

    #[test]
    fn a_route_that_does_not_read_is_named() {
        assert_eq!(
            "10.0.0.0/8 to 1.2.3.4".parse::<VmRoute>().unwrap_err(),
            "\"10.0.0.0/8 to 1.2.3.4\" is not `<destination> via <gateway>`"
        );
        assert!("10.0.0.0/33 via 1.2.3.4"
            .parse::<VmRoute>()
            .unwrap_err()
            .starts_with("destination \"10.0.0.0/33\""));
    }

    #[test]
    fn error_text_is_cut() {
        let reply = Reply::error("x".repeat(10_000));
        assert_eq!(reply.error.unwrap().chars().count(), MAX_ERROR + 1);
    }

    fn any_route() -> impl Strategy<Value = VmRoute> {
        (any::<u32>(), 0u8..=32, any::<u32>()).prop_map(|(d, p, v)| VmRoute {
            destination: Ipv4Net::new(d.into(), p).unwrap(),
            via: v.into(),
        })
    }

    proptest! {
        #[test]
        fn routes_read_back_as_displayed(route in any_route()) {
            prop_assert_eq!(route.to_string().parse::<VmRoute>().unwrap(), route);
        }

        #[test]
        fn requests_round_trip(routes in proptest::collection::vec(any_route(), 0..20)) {
            let request = Request::SetRoutes { routes };
            prop_assert_eq!(decode_request(&encode(&request).unwrap()).unwrap(), request);
        }

        #[test]
        fn replies_round_trip(
            applied in proptest::option::of(proptest::collection::vec(any_route(), 0..8)),
            error in proptest::option::of(".{0,40}"),
            protocol in proptest::option::of(any::<u8>()),
        ) {
            let reply = Reply { ok: error.is_none(), applied, error, protocol, ..Default::default() };
            prop_assert_eq!(decode_reply(&encode(&reply).unwrap()).unwrap(), reply);
        }

        /// Arbitrary text never panics either decoder, and an error stays short.
        #[test]
        fn arbitrary_lines_are_refused_or_decoded(line in ".{0,300}") {
            if let Err(e) = decode_request(&line) {
                prop_assert!(e.len() < 2 * MAX_ERROR + 200);
            }
            let _ = decode_reply(&line);
        }
    }
}
