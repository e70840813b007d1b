//! Building the agent image on the user's machine from the sources shipped
//! with the Homebrew formula, when the release image can be neither found nor
//! pulled (offline, private registry, unreleased version).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures_util::StreamExt;

use crate::progress::{build_step, Phase, Progress};

/// Entries of the build context, relative to the source directory.
const CONTEXT: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "host",
    "protocol",
    "tunnel",
    "vm-agent",
];
const DOCKERFILE: &str = "vm-agent/Dockerfile";

/// Where the agent sources are: `CONNECTOR_AGENT_SRC`, else Homebrew's
/// `<prefix>/share/connector/agent-src` next to the binary.
pub fn source_dir() -> Option<PathBuf> {
    let candidates = std::env::var_os("CONNECTOR_AGENT_SRC")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("share/connector/agent-src"))),
        );
    candidates
        .into_iter()
        .find(|dir| dir.join(DOCKERFILE).is_file())
}

/// A tar of the build context (no `target/` directories).
pub fn context_tar(dir: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for entry in CONTEXT {
        let path = dir.join(entry);
        if path.is_dir() {
            append_dir(&mut builder, &path, Path::new(entry))?;
        } else {
            builder
                .append_path_with_name(&path, entry)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
    }
    Ok(builder.into_inner()?)
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, dir: &Path, name: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let file_name = entry.file_name();
        if file_name == "target" {
            continue;
        }
        let (path, inner) = (entry.path(), name.join(&file_name));
        if entry.file_type()?.is_dir() {
            append_dir(builder, &path, &inner)?;
        } else {
            builder.append_path_with_name(&path, &inner)?;
        }
    }
    Ok(())
}

/// Docker's architecture name → the Dockerfile's `TARGETARCH`.
pub fn target_arch(engine_arch: &str) -> Option<&'static str> {
    match engine_arch {
        "amd64" | "x86_64" => Some("amd64"),
        "arm64" | "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// Builds `image` from `dir`, logging the build's progress and reporting
/// its steps to `progress`.
pub async fn build(docker: &Docker, image: &str, dir: &Path, progress: &Progress) -> Result<()> {
    let arch = docker
        .version()
        .await
        .context("cannot read the engine version")?
        .arch
        .unwrap_or_default();
    let Some(target) = target_arch(&arch) else {
        bail!("cannot build the agent for the engine's architecture {arch:?}");
    };
    tracing::info!(%image, source = %dir.display(), arch = target, "building the agent image (once; this takes a few minutes)");
    progress.set(Phase::Building { step: 0, of: 0 });
    let context = context_tar(dir)?;
    let mut steps = docker.build_image(
        BuildImageOptions {
            dockerfile: DOCKERFILE.to_owned(),
            t: Some(image.to_owned()),
            rm: true,
            buildargs: Some(HashMap::from([(
                "TARGETARCH".to_owned(),
                target.to_owned(),
            )])),
            ..Default::default()
        },
        None,
        Some(bollard::body_full(context.into())),
    );
    while let Some(step) = steps.next().await {
        let info = step.with_context(|| format!("building {image}"))?;
        if let Some(detail) = info.error_detail {
            bail!(
                "building {image} failed: {}",
                detail.message.unwrap_or_default()
            );
        }
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if let Some((step, of)) = build_step(line) {
                progress.set(Phase::Building { step, of });
            }
            progress.message(line);
            tracing::info!(target: "connector::agent::image", "{line}");
        }
    }
    tracing::info!(%image, "agent image built");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_holds_the_workspace_and_skips_target() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let tar = context_tar(repo).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.iter().any(|n| n == DOCKERFILE), "{names:?}");
        assert!(names.iter().any(|n| n == "Cargo.lock"));
        // Every workspace member: cargo cannot load the workspace without one.
        let manifest: toml::Table = std::fs::read_to_string(repo.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        for member in manifest["workspace"]["members"].as_array().unwrap() {
            let cargo_toml = format!("{}/Cargo.toml", member.as_str().unwrap());
            assert!(names.contains(&cargo_toml), "{cargo_toml} missing");
        }
        assert!(!names
            .iter()
            .any(|n| n.contains("/target/") || n.starts_with("target/")));
    }

    #[test]
    fn arch_names_map_to_targetarch() {
        assert_eq!(target_arch("arm64"), Some("arm64"));
        assert_eq!(target_arch("x86_64"), Some("amd64"));
        assert_eq!(target_arch("s390x"), None);
    }

    #[test]
    fn source_dir_honours_the_environment_override() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        std::env::set_var("CONNECTOR_AGENT_SRC", repo);
        assert_eq!(source_dir().as_deref(), Some(repo));
        std::env::remove_var("CONNECTOR_AGENT_SRC");
    }
}
