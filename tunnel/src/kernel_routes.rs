//! The kernel's main routing table as both ends read it (Linux, rtnetlink):
//! the daemon to find routes that would conflict with the ones it adds
//! towards its tun, the agent to find its own routes and foreign ones.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

/// The id of the main routing table.
pub const MAIN_TABLE: u32 = 254;

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainRoute {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Outgoing interface name, when the kernel reports one.
    pub interface: Option<String>,
    /// Who installed it (`RTPROT_*`, or a daemon's own number).
    pub protocol: u8,
    pub priority: u32,
    /// A unicast route (not a blackhole, unreachable, prohibit, …).
    pub unicast: bool,
}

/// Which address families to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    V4,
    Both,
}

/// Interface index → name, for every link.
pub async fn interface_names(handle: &Handle) -> Result<HashMap<u32, String>, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut names = HashMap::new();
    while let Some(link) = links.try_next().await? {
        for attr in &link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                names.insert(link.header.index, name.clone());
            }
        }
    }
    Ok(names)
}

/// Every route of the main table, of the families asked for.
pub async fn main_table(
    handle: &Handle,
    families: Families,
) -> Result<Vec<MainRoute>, rtnetlink::Error> {
    let names = interface_names(handle).await?;
    let mut queries = vec![RouteMessageBuilder::<Ipv4Addr>::new().build()];
    if families == Families::Both {
        queries.push(RouteMessageBuilder::<Ipv6Addr>::new().build());
    }
    let mut out = Vec::new();
    for query in queries {
        let mut routes = handle.route().get(query).execute();
        while let Some(message) = routes.try_next().await? {
            out.extend(parse(&message, &names));
        }
    }
    Ok(out)
}

/// One dumped route message, if it is a route of the main table.
pub fn parse(message: &RouteMessage, names: &HashMap<u32, String>) -> Option<MainRoute> {
    let mut table = u32::from(message.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut priority = 0;
    let mut oif = None;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => destination = address(a),
            RouteAttribute::Gateway(a) => gateway = address(a),
            RouteAttribute::Priority(p) => priority = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    // A default route carries no destination attribute.
    let destination = destination.or(match message.header.address_family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    })?;
    let destination = IpNet::new(destination, message.header.destination_prefix_length)
        .ok()?
        .trunc();
    Some(MainRoute {
        destination,
        gateway,
        interface: oif.and_then(|i| names.get(&i).cloned()),
        protocol: u8::from(message.header.protocol),
        priority,
        unicast: message.header.kind == RouteType::Unicast,
    })
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteProtocol;

    fn message(family: AddressFamily, prefix: u8, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        m.header.destination_prefix_length = prefix;
        m.header.table = MAIN_TABLE as u8;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::Static;
        m.attributes = attrs;
        m
    }

    #[test]
    fn routes_of_the_main_table_are_read_with_their_interface() {
        let names = HashMap::from([(7, "utun4".to_owned())]);
        let m = message(
            AddressFamily::Inet,
            16,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("172.18.9.9".parse().unwrap())),
                RouteAttribute::Oif(7),
                RouteAttribute::Priority(100),
            ],
        );
        let r = parse(&m, &names).unwrap();
        assert_eq!(r.destination, "172.18.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(r.interface.as_deref(), Some("utun4"));
        assert_eq!((r.priority, r.unicast, r.gateway), (100, true, None));
    }

    #[test]
    fn default_routes_of_both_families_and_other_tables() {
        let v6 = message(
            AddressFamily::Inet6,
            0,
            vec![RouteAttribute::Gateway(RouteAddress::Inet6(
                "fe80::1".parse().unwrap(),
            ))],
        );
        let r = parse(&v6, &HashMap::new()).unwrap();
        assert_eq!(r.destination, "::/0".parse::<IpNet>().unwrap());
        assert_eq!(r.gateway, Some("fe80::1".parse().unwrap()));
        let v4 = message(AddressFamily::Inet, 0, vec![]);
        assert_eq!(
            parse(&v4, &HashMap::new()).unwrap().destination,
            "0.0.0.0/0".parse::<IpNet>().unwrap()
        );
        let local = message(AddressFamily::Inet, 32, vec![RouteAttribute::Table(255)]);
        assert_eq!(parse(&local, &HashMap::new()), None);
        let mut blackhole = message(AddressFamily::Inet, 8, vec![]);
        blackhole.header.kind = RouteType::BlackHole;
        assert!(!parse(&blackhole, &HashMap::new()).unwrap().unicast);
    }
}
