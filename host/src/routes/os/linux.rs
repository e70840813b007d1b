//! Linux: tun through tun-rs, routes through rtnetlink.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::types::{OsError, RouteEntry, TunConfig};

const MAIN_TABLE: u32 = 254;

pub fn create_tun(config: &TunConfig) -> Result<connector_tunnel::tun::AsyncDevice, OsError> {
    super::tun::create_tun_with_tun_rs(config)
}

/// The main routing table, through one netlink connection.
pub struct RouteTable {
    handle: Handle,
}

fn netlink_io(error: rtnetlink::Error) -> io::Error {
    io::Error::other(error.to_string())
}

impl RouteTable {
    pub async fn new() -> Result<Self, OsError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(OsError::Socket)?;
        tokio::spawn(connection);
        Ok(RouteTable { handle })
    }

    async fn interface_names(&self) -> io::Result<HashMap<u32, String>> {
        let mut links = self.handle.link().get().execute();
        let mut names = HashMap::new();
        while let Some(link) = links.try_next().await.map_err(netlink_io)? {
            for attr in &link.attributes {
                if let LinkAttribute::IfName(name) = attr {
                    names.insert(link.header.index, name.clone());
                }
            }
        }
        Ok(names)
    }

    async fn interface_index(&self, name: &str) -> io::Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) | Err(_) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {name}"),
            )),
        }
    }

    pub async fn list(&self) -> Result<Vec<RouteEntry>, OsError> {
        let names = self.interface_names().await.map_err(OsError::ListRoutes)?;
        let mut entries = Vec::new();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(query).execute();
            while let Some(route) = routes
                .try_next()
                .await
                .map_err(|e| OsError::ListRoutes(netlink_io(e)))?
            {
                if let Some(entry) = to_entry(&route, &names) {
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }

    fn message(destination: IpNet, index: u32) -> Result<RouteMessage, io::Error> {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(destination.addr(), destination.prefix_len())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(builder
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Static)
            .kind(RouteType::Unicast)
            .table_id(MAIN_TABLE)
            .build())
    }

    /// For deletion the kernel matches every field that is set; leave the
    /// protocol and scope open so a route on our tun that someone else added
    /// by hand (or an older version) is removed too.
    fn delete_message(destination: IpNet, index: u32) -> Result<RouteMessage, io::Error> {
        let mut message = Self::message(destination, index)?;
        message.header.protocol = RouteProtocol::Unspec;
        message.header.scope = RouteScope::NoWhere;
        Ok(message)
    }

    pub async fn add(&self, destination: IpNet, interface: &str) -> Result<(), OsError> {
        let err = |error| OsError::Route {
            op: "add",
            destination,
            interface: interface.to_owned(),
            error,
        };
        let index = self.interface_index(interface).await.map_err(err)?;
        let message = Self::message(destination, index).map_err(err)?;
        match self.handle.route().add(message).execute().await {
            Ok(()) => Ok(()),
            // Already there on our interface (e.g. re-applied): nothing to do.
            Err(e) if self.exists(destination, interface).await => {
                tracing::debug!(%destination, error = %e, "route already present");
                Ok(())
            }
            Err(e) => Err(err(netlink_io(e))),
        }
    }

    async fn exists(&self, destination: IpNet, interface: &str) -> bool {
        self.list().await.is_ok_and(|routes| {
            routes
                .iter()
                .any(|r| r.destination == destination && r.interface.as_deref() == Some(interface))
        })
    }

    pub async fn delete(&self, destination: IpNet, interface: &str) -> Result<(), OsError> {
        let err = |error| OsError::Route {
            op: "delete",
            destination,
            interface: interface.to_owned(),
            error,
        };
        // The kernel would match a route with the same prefix on another
        // interface if we got the index wrong; check ownership first.
        if !self.exists(destination, interface).await {
            return Ok(());
        }
        let index = self.interface_index(interface).await.map_err(err)?;
        let message = Self::delete_message(destination, index).map_err(err)?;
        self.handle
            .route()
            .del(message)
            .execute()
            .await
            .map_err(|e| err(netlink_io(e)))
    }
}

fn to_entry(route: &RouteMessage, names: &HashMap<u32, String>) -> Option<RouteEntry> {
    let mut table = u32::from(route.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                destination = Some(IpAddr::V4(*a))
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                destination = Some(IpAddr::V6(*a))
            }
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE || route.header.kind != RouteType::Unicast {
        return None;
    }
    let prefix = route.header.destination_prefix_length;
    let destination = match destination {
        Some(addr) => IpNet::new(addr, prefix).ok()?.trunc(),
        None if prefix == 0 => match route.header.address_family {
            rtnetlink::packet_route::AddressFamily::Inet6 => "::/0".parse().ok()?,
            _ => "0.0.0.0/0".parse().ok()?,
        },
        None => return None,
    };
    Some(RouteEntry {
        destination,
        interface: oif.and_then(|i| names.get(&i).cloned()),
        gateway,
    })
}
