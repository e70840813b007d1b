//! Linux: tun through tun-rs, routes through rtnetlink.

use std::io;
use std::net::IpAddr;

use connector_tunnel::kernel_routes::{self, Families, MAIN_TABLE};
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::types::{OsError, RouteEntry, TunConfig};

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
        let routes = kernel_routes::main_table(&self.handle, Families::Both)
            .await
            .map_err(|e| OsError::ListRoutes(netlink_io(e)))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.unicast)
            .map(|r| RouteEntry {
                destination: r.destination,
                interface: r.interface,
                gateway: r.gateway,
            })
            .collect())
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
