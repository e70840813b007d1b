//! `connector uninstall`: removes everything connector ever set up on this
//! machine and in the Docker VM, and says what it removed.

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{RemoveContainerOptions, StopContainerOptions};
use bollard::Docker;

use crate::agent::{LABEL_MANAGED, LABEL_OWNER};
use crate::config::Config;
use crate::routes::os::RouteTable;

/// Removes agent containers, leftover VM rules, routes, the state directory
/// and the control socket. Refuses while a daemon is running.
pub async fn run(config: &Config) -> Result<Vec<String>> {
    if crate::control::request(
        &config.control_socket,
        &crate::control::protocol::Request::Status,
    )
    .await
    .is_ok()
    {
        bail!(
            "the daemon is running (it answers on {}); stop it first: `sudo brew services stop connector` \
             (it removes its routes and agent itself on stop)",
            config.control_socket.display()
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("uninstall removes routes and the state directory: run it with sudo");
    }
    let mut done = Vec::new();

    let docker = crate::engine::connect_configured(config.docker_host.as_deref())
        .await
        .ok()
        .map(|engine| engine.docker);
    match docker {
        None => done.push("Docker is unreachable: agent containers and VM rules were NOT removed; run uninstall again when Docker runs".to_owned()),
        Some(docker) => {
            done.extend(remove_agents(&docker, config).await?);
            done.extend(remove_leftover_rules(&docker, config).await);
        }
    }

    let tun = if cfg!(target_os = "linux") {
        Some("connector0")
    } else {
        None
    };
    if let (Some(tun), Ok(table)) = (tun, RouteTable::new().await) {
        for route in table.list().await.unwrap_or_default() {
            if route.interface.as_deref() == Some(tun)
                && table.delete(route.destination, tun).await.is_ok()
            {
                done.push(format!("removed route {} dev {tun}", route.destination));
            }
        }
    }

    let dir = config.state_dir.display();
    match crate::state::remove_state_dir(&config.state_dir)? {
        crate::state::Removal::Absent => {}
        crate::state::Removal::Removed => {
            done.push(format!("removed state directory {dir} (the host key)"))
        }
        crate::state::Removal::Kept(other) => done.push(format!(
            "removed connector's files from {dir}; kept the directory, it also holds {other:?}"
        )),
        crate::state::Removal::NotOurs => done.push(format!(
            "left {dir} alone: it is not connector's state directory (no {} marker)",
            crate::state::MARKER
        )),
    }
    // Only a socket: a mistyped control_socket must not delete a file.
    if std::fs::symlink_metadata(&config.control_socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        std::fs::remove_file(&config.control_socket)?;
        done.push(format!(
            "removed stale control socket {}",
            config.control_socket.display()
        ));
    }
    if done.is_empty() {
        done.push("nothing to remove".to_owned());
    }
    Ok(done)
}

/// This machine's agents: the configured name, and any agent labelled with
/// this daemon's host key. Other daemons' agents on a shared engine stay.
async fn remove_agents(docker: &Docker, config: &Config) -> Result<Vec<String>> {
    let owner = std::fs::read_to_string(config.host_key_path())
        .ok()
        .and_then(|text| connector_tunnel::keys::parse_private_key(&text).ok())
        .map(|key| {
            connector_tunnel::keys::encode_public(&connector_tunnel::keys::PublicKey::from(&key))
        });
    let ours = crate::engine::containers_labelled(docker, &[format!("{LABEL_MANAGED}=true")], true)
        .await?;
    let mut done = Vec::new();
    for c in ours.into_iter().filter(|c| {
        let named = c
            .names
            .iter()
            .flatten()
            .any(|n| n.trim_start_matches('/') == config.agent_name);
        let owned =
            owner.is_some() && c.labels.as_ref().and_then(|l| l.get(LABEL_OWNER)) == owner.as_ref();
        named || owned
    }) {
        let id = c.id.unwrap_or_default();
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .unwrap_or_else(|| id.clone());
        // SIGTERM first: the agent removes its firewall rules and VM routes.
        let _ = docker
            .stop_container(
                &id,
                Some(StopContainerOptions {
                    t: Some(10),
                    signal: None,
                }),
            )
            .await;
        docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .with_context(|| format!("cannot remove {name}"))?;
        done.push(format!(
            "removed agent container {} (its VM firewall rules went with it)",
            name.trim_start_matches('/')
        ));
    }
    Ok(done)
}

/// Rules an agent killed with SIGKILL could not remove: a one-off agent
/// container deletes every rule carrying the tag.
async fn remove_leftover_rules(docker: &Docker, config: &Config) -> Vec<String> {
    if docker.inspect_image(&config.agent_image).await.is_err() {
        return vec![format!(
            "agent image {} is absent: could not look for leftover VM rules tagged {:?}",
            config.agent_image,
            crate::agent::rule_tag(&config.agent_name)
        )];
    }
    let name = format!("{}-uninstall", config.agent_name);
    let body = ContainerCreateBody {
        image: Some(config.agent_image.clone()),
        cmd: Some(vec![
            "cleanup".into(),
            "--tag".into(),
            crate::agent::rule_tag(&config.agent_name),
        ]),
        host_config: Some(HostConfig {
            devices: None,
            ..crate::agent::agent_host_config()
        }),
        ..Default::default()
    };
    let result = async {
        docker
            .create_container(
                Some(bollard::query_parameters::CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        docker.start_container(&name, None).await?;
        let mut wait = docker.wait_container(
            &name,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        while let Some(step) = futures_util::StreamExt::next(&mut wait).await {
            step?;
        }
        let logs = docker.logs(
            &name,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                ..Default::default()
            }),
        );
        let lines: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(logs)
            .await
            .into_iter()
            .filter_map(|l| l.ok())
            .map(|l| format!("VM: {}", l.to_string().trim()))
            .filter(|l| l.len() > 4)
            .collect();
        anyhow::Ok(lines)
    }
    .await;
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    match result {
        Ok(lines) => lines,
        Err(e) => vec![format!("could not clean leftover VM rules: {e:#}")],
    }
}
