//! The daemon's state directory: the host key pair (mode 0600).
//!
//! The daemon runs as root and tightens the directory's mode; `uninstall`
//! removes it. A mistyped `state_dir` must cost nothing: the directory is
//! ours only if it carries our marker file, or if we create it, or if it holds
//! nothing but files of ours (a directory from a version without the
//! marker). Anything else is refused before any chmod, and `uninstall` only
//! ever deletes our own files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use connector_tunnel::keys::{self, StaticSecret};

/// Marks a directory as connector's state directory.
pub const MARKER: &str = ".connector-state";
const MARKER_TEXT: &str =
    "connector's state directory (host key); `sudo connector uninstall` removes it\n";
/// Every file connector writes into the directory.
const OURS: [&str; 3] = [MARKER, "host.key", "host.key.tmp"];

/// Makes `dir` connector's state directory (mode 0700), creating it if
/// needed; refuses a directory that is not ours.
pub fn prepare_state_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "state_dir {} is a symbolic link; give the real path of a directory of connector's",
            dir.display()
        ),
        Ok(meta) if !meta.is_dir() => bail!(
            "state_dir {} exists and is not a directory; choose another state_dir",
            dir.display()
        ),
        Ok(_) if dir.join(MARKER).exists() => {}
        Ok(_) => {
            if let Some(other) = foreign_entry(dir)? {
                bail!(
                    "state_dir {} is not connector's: it has no {MARKER} marker and holds {other:?}; \
                     choose another state_dir (nothing was changed)",
                    dir.display()
                );
            }
        }
    }
    if !dir.join(MARKER).exists() {
        fs::write(dir.join(MARKER), MARKER_TEXT)
            .with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

/// The first entry of `dir` that connector did not write, if any.
fn foreign_entry(dir: &Path) -> Result<Option<String>> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !OURS.contains(&name.as_str()) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// What `uninstall` did with the state directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Absent,
    Removed,
    /// Our files were removed; the directory holds others and stays.
    Kept(String),
    /// No marker: not ours, nothing touched.
    NotOurs,
}

/// Removes connector's files from `dir`, and `dir` itself once empty.
pub fn remove_state_dir(dir: &Path) -> Result<Removal> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Absent),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(meta) if !meta.is_dir() => return Ok(Removal::NotOurs),
        Ok(_) => {}
    }
    if !dir.join(MARKER).exists() && foreign_entry(dir)?.is_some() {
        return Ok(Removal::NotOurs);
    }
    for name in OURS.iter().rev() {
        let path: PathBuf = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    if let Some(other) = foreign_entry(dir)? {
        return Ok(Removal::Kept(other));
    }
    fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    Ok(Removal::Removed)
}

/// Loads the host private key, creating it (and the directory, mode 0700) on
/// first start. A key file readable by others is tightened, not trusted as is.
pub fn load_or_create_host_key(state_dir: &Path, key_path: &Path) -> Result<StaticSecret> {
    prepare_state_dir(state_dir)?;
    match fs::read_to_string(key_path) {
        Ok(text) => {
            let mode = fs::metadata(key_path)?.permissions().mode() & 0o777;
            if mode != 0o600 {
                tracing::warn!(path = %key_path.display(), mode = format!("{mode:o}"), "host key had loose permissions; setting 0600");
                fs::set_permissions(key_path, fs::Permissions::from_mode(0o600))?;
            }
            keys::parse_private_key(&text).with_context(|| {
                format!(
                    "host key {} is corrupt; delete it to make a new one",
                    key_path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = keys::generate();
            let tmp = key_path.with_extension("key.tmp");
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(keys::encode_private(&key).as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, key_path)?;
            tracing::info!(path = %key_path.display(), "created host key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read host key {}", key_path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_tunnel::keys::PublicKey;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("connector-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let dir = temp("key");
        let path = dir.join("host.key");
        let first = load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(dir.join(MARKER).exists());
        let second = load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(
            PublicKey::from(&first).as_bytes(),
            PublicKey::from(&second).as_bytes()
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(mode(&path), 0o600);
        fs::write(&path, "garbage").unwrap();
        let err = format!("{:#}", load_or_create_host_key(&dir, &path).err().unwrap());
        assert!(err.contains("corrupt"), "{err}");
        assert_eq!(remove_state_dir(&dir).unwrap(), Removal::Removed);
        assert!(!dir.exists());
    }

    #[test]
    fn a_mistyped_state_dir_is_refused_and_left_as_it_was() {
        // state_dir = "/etc" by mistake: another directory with files.
        let dir = temp("foreign");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("passwd"), "root:x:0:0").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = format!(
            "{:#}",
            load_or_create_host_key(&dir, &dir.join("host.key"))
                .err()
                .unwrap()
        );
        assert!(
            err.contains("is not connector's") && err.contains("passwd"),
            "{err}"
        );
        assert_eq!(mode(&dir), 0o755);
        assert!(!dir.join("host.key").exists() && !dir.join(MARKER).exists());
        assert_eq!(remove_state_dir(&dir).unwrap(), Removal::NotOurs);
        assert!(dir.join("passwd").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_of_an_older_version_is_adopted_and_foreign_files_survive_uninstall() {
        let dir = temp("older");
        fs::create_dir_all(&dir).unwrap();
        let key = keys::generate();
        fs::write(dir.join("host.key"), keys::encode_private(&key)).unwrap();
        fs::set_permissions(dir.join("host.key"), fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = load_or_create_host_key(&dir, &dir.join("host.key")).unwrap();
        assert_eq!(
            PublicKey::from(&loaded).as_bytes(),
            PublicKey::from(&key).as_bytes()
        );
        assert!(dir.join(MARKER).exists());
        // The user dropped a file of theirs in our directory later.
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        assert_eq!(
            remove_state_dir(&dir).unwrap(),
            Removal::Kept("notes.txt".into())
        );
        assert!(dir.join("notes.txt").exists() && !dir.join("host.key").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_and_files_are_refused() {
        let dir = temp("link");
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("state");
        std::os::unix::fs::symlink("/tmp", &link).unwrap();
        let err = format!("{:#}", prepare_state_dir(&link).err().unwrap());
        assert!(err.contains("symbolic link"), "{err}");
        let file = dir.join("file");
        fs::write(&file, "").unwrap();
        let err = format!("{:#}", prepare_state_dir(&file).err().unwrap());
        assert!(err.contains("not a directory"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
