//! The routes subsystem: owns the host routes through the tun and applies
//! [`crate::routes::plan`] against a fresh Docker snapshot.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::config::NetworkFilter;
use crate::control::protocol::{RouteChange, Skipped, SyncReport};
use crate::routes::os::RouteTable;
use crate::routes::plan::{
    self, ConflictPolicy, DockerNetwork, Plan, PlanInput, SubnetDecision, TunnelNets,
};

pub struct Router {
    table: RouteTable,
    interface: String,
    tunnel: TunnelNets,
    filter: NetworkFilter,
    policy: ConflictPolicy,
    /// Which network each routed subnet came from, kept so a removal can be
    /// reported by name after the network is gone.
    origin: BTreeMap<IpNet, String>,
    last: Vec<SubnetDecision>,
}

impl Router {
    pub fn new(
        table: RouteTable,
        interface: String,
        tunnel: TunnelNets,
        filter: NetworkFilter,
        policy: ConflictPolicy,
    ) -> Self {
        Router {
            table,
            interface,
            tunnel,
            filter,
            policy,
            origin: BTreeMap::new(),
            last: Vec::new(),
        }
    }

    /// The tun the routes point at.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn decisions(&self) -> &[SubnetDecision] {
        &self.last
    }

    /// The subnets routed through the tun after the last sync.
    pub fn routed(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.last
            .iter()
            .filter(|d| d.skipped.is_none())
            .map(|d| d.subnet)
    }

    /// Reads the routing table, then adds and removes routes for the Docker
    /// `networks` (a snapshot taken just now) plus `extra`: subnets that are
    /// not Docker networks (kind pod and Service CIDRs), each named by its
    /// owner. Routes on the tun that are in neither are removed, so every
    /// sync must pass the full `extra` (the daemon's route reconcile does).
    pub async fn sync(
        &mut self,
        networks: &[DockerNetwork],
        extra: &[DockerNetwork],
    ) -> Result<SyncReport> {
        let host_routes = self
            .table
            .list()
            .await
            .context("reading the host routing table")?;
        let plan = plan::plan(&PlanInput {
            networks,
            filter: &self.filter,
            tunnel: self.tunnel,
            interface: &self.interface,
            host_routes: &host_routes,
            extra,
            policy: &self.policy,
        });
        Ok(self.apply(plan).await)
    }

    async fn apply(&mut self, plan: Plan) -> SyncReport {
        let mut report = SyncReport::default();
        let network_of = |subnet: &IpNet, origin: &BTreeMap<IpNet, String>| {
            plan.decisions
                .iter()
                .find(|d| d.subnet == *subnet)
                .map(|d| d.network.clone())
                .or_else(|| origin.get(subnet).cloned())
                .unwrap_or_else(|| "no longer a Docker network".into())
        };
        for subnet in &plan.remove {
            let network = network_of(subnet, &self.origin);
            match self.table.delete(*subnet, &self.interface).await {
                Ok(()) => {
                    tracing::info!(%subnet, %network, "route removed");
                    self.origin.remove(subnet);
                    report.removed.push(RouteChange {
                        network,
                        subnet: *subnet,
                    });
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for subnet in &plan.add {
            let network = network_of(subnet, &self.origin);
            match self.table.add(*subnet, &self.interface).await {
                Ok(()) => {
                    tracing::info!(%subnet, %network, interface = %self.interface, "route added");
                    self.origin.insert(*subnet, network.clone());
                    report.added.push(RouteChange {
                        network,
                        subnet: *subnet,
                    });
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for d in &plan.decisions {
            match &d.skipped {
                None => {
                    self.origin.insert(d.subnet, d.network.clone());
                    if !report
                        .errors
                        .iter()
                        .any(|e| e.contains(&d.subnet.to_string()))
                    {
                        report.routed.push(RouteChange {
                            network: d.network.clone(),
                            subnet: d.subnet,
                        });
                    }
                }
                Some(reason) => {
                    if !matches!(reason, plan::SkipReason::Excluded { .. }) {
                        tracing::warn!(network = %d.network, subnet = %d.subnet, %reason, "subnet not routed");
                    }
                    report.skipped.push(Skipped {
                        network: d.network.clone(),
                        subnet: d.subnet,
                        message: reason.to_string(),
                        reason: reason.clone(),
                    });
                }
            }
        }
        for e in &report.errors {
            tracing::error!(error = %e, "route change failed");
        }
        self.last = plan.decisions;
        report
    }

    /// Removes every route connector added (shutdown).
    pub async fn teardown(&mut self) -> Result<usize> {
        let routes = self.table.list().await?;
        let mut removed = 0;
        for r in routes {
            if r.interface.as_deref() == Some(self.interface.as_str())
                && !plan::is_interface_route(&r.destination, &self.tunnel)
            {
                match self.table.delete(r.destination, &self.interface).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(error = %e, "route removal failed"),
                }
            }
        }
        self.origin.clear();
        Ok(removed)
    }
}
