//! The daemon's state directory: the host key pair (mode 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use connector_tunnel::keys::{self, StaticSecret};

/// Loads the host private key, creating it (and the directory, mode 0700) on
/// first start. A key file readable by others is tightened, not trusted as is.
pub fn load_or_create_host_key(state_dir: &Path, key_path: &Path) -> Result<StaticSecret> {
    fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", state_dir.display()))?;
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

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let dir = std::env::temp_dir().join(format!("connector-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("host.key");
        let first = load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let second = load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(
            PublicKey::from(&first).as_bytes(),
            PublicKey::from(&second).as_bytes()
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create_host_key(&dir, &path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&path, "garbage").unwrap();
        let err = format!("{:#}", load_or_create_host_key(&dir, &path).err().unwrap());
        assert!(err.contains("corrupt"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
