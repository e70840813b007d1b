//! Which Docker engine to talk to.
//!
//! Under launchd the daemon runs as root with no user environment, so the
//! engine cannot be found the way the `docker` CLI finds it. [`resolve`] works
//! through the places in a fixed order and says why it chose what it chose:
//!
//! 1. `docker_host` from connector's config;
//! 2. `DOCKER_HOST` in connector's environment;
//! 3. the docker context of the user at the Mac (owner of `/dev/console`;
//!    `SUDO_USER` when nobody is logged in there, and on Linux):
//!    `DOCKER_CONTEXT` or `currentContext` of `~/.docker/config.json`, whose
//!    endpoint is in `~/.docker/contexts/meta/<sha256(name)>/meta.json`;
//! 4. the first socket that answers among Docker Desktop
//!    (`~/.docker/run/docker.sock`), Colima (`~/.colima/<profile>/docker.sock`,
//!    the `default` profile first), Rancher Desktop (`~/.rd/docker.sock`),
//!    OrbStack (`~/.orbstack/run/docker.sock`) and `/var/run/docker.sock`.
//!
//! OrbStack already routes container IPs to the Mac; choosing it gives
//! [`DiscoveryError::OrbStack`] so the daemon can say connector is not needed
//! (rather than retry: nothing will change until the user switches engines).
//!
//! An endpoint the user gave connector (1, 2) that connector cannot use is an
//! error. The files of step 3 are the user's docker CLI state, which connector
//! only borrows: one that cannot be read or parsed is logged, noted in the
//! resolution's `why`, and the search goes on with step 4, rather than the
//! daemon failing (and launchd restarting it) until the file is fixed.
//!
//! Everything the resolution reads goes through [`DiscoveryEnv`], so tests run
//! it against a fake home directory.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest `config.json` or `meta.json` read. Docker's are a few KB; a file
/// far beyond is not one, and root should not read it whole.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The user whose Docker setup connector follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub home: PathBuf,
    /// How we know who it is, for the logs: "console user", "sudo user".
    pub role: &'static str,
}

/// What a probe of a socket path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketState {
    /// Something accepted a connection.
    Live,
    Missing,
    /// The path exists but is not a socket.
    NotSocket,
    /// A socket nobody listens on (engine stopped), or another error.
    Dead(String),
}

impl fmt::Display for SocketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketState::Live => f.write_str("answers"),
            SocketState::Missing => f.write_str("missing"),
            SocketState::NotSocket => f.write_str("not a socket"),
            SocketState::Dead(why) => write!(f, "does not answer: {why}"),
        }
    }
}

/// The world as discovery sees it. The provided methods use the real file
/// system; tests override the required ones and point them at a temp dir.
pub trait DiscoveryEnv {
    /// A variable of connector's own environment.
    fn var(&self, name: &str) -> Option<String>;

    /// The user at the machine, if any (see the module docs).
    fn user(&self) -> Option<User>;

    /// Prefix for system-wide paths such as `/var/run/docker.sock`.
    fn root(&self) -> PathBuf {
        PathBuf::from("/")
    }

    /// A regular file of at most [`MAX_FILE_BYTES`], as text. Opened without
    /// blocking, so a FIFO in the user's home cannot hang the daemon.
    fn read_file(&self, path: &Path) -> io::Result<String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        if text.len() > MAX_FILE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        Ok(text)
    }

    /// A file discovery could not use and went on without.
    fn skipped_file(&self, path: &Path, problem: &str) {
        warn_once(path, problem);
    }

    /// Names of the entries of a directory (empty when it cannot be read).
    fn dir_entries(&self, path: &Path) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(path) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// Where a path really points (symlinks followed), if it exists.
    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    /// Whether an engine listens on this unix socket.
    fn probe(&self, path: &Path) -> SocketState {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return SocketState::Missing,
            Err(e) => return SocketState::Dead(e.to_string()),
            Ok(m) if !m.file_type().is_socket() => return SocketState::NotSocket,
            Ok(_) => {}
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => SocketState::Live,
            Err(e) => SocketState::Dead(e.to_string()),
        }
    }
}

/// Where the endpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Config,
    DockerHostEnv,
    Context { name: String },
    DockerDesktop,
    Colima { profile: String },
    RancherDesktop,
    SystemSocket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `unix:///path` or `tcp://host:port` (or `http://`).
    pub endpoint: String,
    pub source: Source,
    /// One sentence for the log: what was chosen and why.
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "Docker is provided by OrbStack ({endpoint}, {via}); OrbStack already routes container IPs \
         to the Mac, so connector is not needed. To use another engine anyway, set docker_host \
         in connector's config"
    )]
    OrbStack { endpoint: String, via: String },
    #[error("no Docker engine found; tried:\n{}", bullet_list(.tried))]
    NotFound { tried: Vec<String> },
    #[error("Docker endpoint {endpoint:?} ({via}) is not supported: connector speaks unix:// and tcp://")]
    Unsupported { endpoint: String, via: String },
}

fn bullet_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pick the Docker endpoint; see the module docs for the order.
pub fn resolve(
    configured: Option<&str>,
    env: &dyn DiscoveryEnv,
) -> Result<Resolved, DiscoveryError> {
    if let Some(host) = configured.map(str::trim).filter(|h| !h.is_empty()) {
        return explicit(
            host,
            Source::Config,
            "docker_host in connector's config".into(),
            env,
        );
    }
    if let Some(host) = env.var("DOCKER_HOST").filter(|h| !h.trim().is_empty()) {
        return explicit(
            host.trim(),
            Source::DockerHostEnv,
            "DOCKER_HOST in connector's environment".into(),
            env,
        );
    }

    let user = env.user();
    let mut tried = vec![
        "docker_host in connector's config: not set".to_owned(),
        "DOCKER_HOST: not set".to_owned(),
    ];
    match &user {
        Some(user) => {
            if let Some(found) = from_context(user, env, &mut tried)? {
                return Ok(found);
            }
        }
        None => tried
            .push("docker context: no user at the console (nobody logged in, no SUDO_USER)".into()),
    }

    for candidate in socket_candidates(user.as_ref(), env) {
        let state = env.probe(&candidate.path);
        if state != SocketState::Live {
            tried.push(format!(
                "{} {}: {state}",
                candidate.label,
                candidate.path.display()
            ));
            continue;
        }
        let endpoint = unix_endpoint(&candidate.path);
        let real = env.canonicalize(&candidate.path);
        if candidate.orbstack || real.as_deref().is_some_and(is_orbstack_path) {
            return Err(DiscoveryError::OrbStack {
                endpoint,
                via: candidate.label,
            });
        }
        let mut why = format!("{} {} answers", candidate.label, candidate.path.display());
        if let Some(real) = real.filter(|r| *r != candidate.path) {
            why.push_str(&format!(" (it leads to {})", real.display()));
        }
        // The misses before it explain why an earlier engine was not chosen.
        let misses: Vec<&String> = tried.iter().skip(2).collect();
        if !misses.is_empty() {
            why.push_str("; before it: ");
            why.push_str(
                &misses
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        return Ok(Resolved {
            endpoint,
            source: candidate.source,
            why,
        });
    }
    Err(DiscoveryError::NotFound { tried })
}

/// An endpoint the user named: taken as is (the engine may not be up yet),
/// after checking that connector can speak it and that it is not OrbStack.
fn explicit(
    host: &str,
    source: Source,
    via: String,
    env: &dyn DiscoveryEnv,
) -> Result<Resolved, DiscoveryError> {
    let endpoint = if host.starts_with('/') {
        format!("unix://{host}")
    } else {
        host.to_owned()
    };
    let supported = ["unix://", "tcp://", "http://"]
        .iter()
        .any(|s| endpoint.starts_with(s));
    if !supported {
        return Err(DiscoveryError::Unsupported { endpoint, via });
    }
    if let Some(path) = endpoint.strip_prefix("unix://") {
        let path = Path::new(path);
        let real = env.canonicalize(path);
        if is_orbstack_path(path) || real.as_deref().is_some_and(is_orbstack_path) {
            return Err(DiscoveryError::OrbStack { endpoint, via });
        }
    }
    Ok(Resolved {
        why: format!("{endpoint} from {via}"),
        endpoint,
        source,
    })
}

fn is_orbstack_path(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == ".orbstack")
}

fn unix_endpoint(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// Hex SHA-256 of a context name: the directory docker keeps its metadata in.
pub fn context_dir_name(name: &str) -> String {
    Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The endpoint of the user's current docker context, if they chose one
/// other than `default` (which means "the default socket"). A file that cannot
/// be used is skipped (see the module docs).
fn from_context(
    user: &User,
    env: &dyn DiscoveryEnv,
    tried: &mut Vec<String>,
) -> Result<Option<Resolved>, DiscoveryError> {
    let who = format!("{} {}", user.role, user.name);
    let docker_dir = user.home.join(".docker");
    let config_path = docker_dir.join("config.json");
    let mut skip = |path: &Path, problem: String| {
        env.skipped_file(path, &problem);
        tried.push(format!(
            "docker context of {who}: cannot use {}: {problem}",
            path.display()
        ));
        Ok(None)
    };

    let (name, chosen_by) = match env.var("DOCKER_CONTEXT").filter(|c| !c.trim().is_empty()) {
        Some(name) => (
            name.trim().to_owned(),
            "DOCKER_CONTEXT in connector's environment".to_owned(),
        ),
        None => match env.read_file(&config_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tried.push(format!(
                    "docker context of {who}: no {}",
                    config_path.display()
                ));
                return Ok(None);
            }
            Err(e) => return skip(&config_path, e.to_string()),
            Ok(text) => match current_context(&text) {
                Err(problem) => return skip(&config_path, problem),
                Ok(Some(name)) => (
                    name,
                    format!("currentContext of {who} in {}", config_path.display()),
                ),
                Ok(None) => {
                    tried.push(format!(
                        "docker context of {who}: none set in {}",
                        config_path.display()
                    ));
                    return Ok(None);
                }
            },
        },
    };
    if name == "default" {
        tried.push(format!(
            "docker context of {who}: \"default\" (the default sockets below)"
        ));
        return Ok(None);
    }

    let meta_path = docker_dir
        .join("contexts")
        .join("meta")
        .join(context_dir_name(&name))
        .join("meta.json");
    let host = match env
        .read_file(&meta_path)
        .map_err(|e| e.to_string())
        .and_then(|text| context_host(&text))
    {
        Ok(host) => host,
        Err(problem) => {
            return skip(
                &meta_path,
                format!("the meta file of context {name:?} ({chosen_by}): {problem}"),
            )
        }
    };

    let via = format!("docker context {name:?}, {chosen_by}");
    if name == "orbstack" {
        return Err(DiscoveryError::OrbStack {
            endpoint: host,
            via,
        });
    }
    explicit(&host, Source::Context { name: name.clone() }, via, env).map(Some)
}

/// `currentContext` of a docker `config.json`; `None` when unset or blank.
fn current_context(text: &str) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(rename = "currentContext")]
        current_context: Option<String>,
    }
    let config: DockerConfig =
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))?;
    Ok(config
        .current_context
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty()))
}

/// `Endpoints.docker.Host` of a docker context's `meta.json`.
fn context_host(text: &str) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Meta {
        #[serde(rename = "Endpoints")]
        endpoints: Option<Endpoints>,
    }
    #[derive(Deserialize)]
    struct Endpoints {
        docker: Option<Endpoint>,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "Host")]
        host: Option<String>,
    }
    let meta: Meta =
        serde_json::from_str(text).map_err(|e| format!("not a context meta.json: {e}"))?;
    meta.endpoints
        .and_then(|e| e.docker)
        .and_then(|d| d.host)
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no Endpoints.docker.Host".to_owned())
}

/// Files already warned about, with the problem (see [`warn_once`]).
static WARNED: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// Logs a skipped file once per path and problem: discovery runs every few
/// seconds while the daemon waits for Docker, and a broken file stays broken.
fn warn_once(path: &Path, problem: &str) {
    let mut logged = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    if logged.iter().any(|(p, m)| p == path && m == problem) {
        tracing::debug!(path = %path.display(), problem, "skipping a docker file");
        return;
    }
    // A handful of files can be broken at once; forget the oldest beyond that.
    if logged.len() >= 8 {
        logged.remove(0);
    }
    logged.push((path.to_owned(), problem.to_owned()));
    drop(logged);
    tracing::warn!(
        path = %path.display(),
        problem,
        "cannot use a docker file; looking for the engine elsewhere"
    );
}

struct Candidate {
    label: String,
    path: PathBuf,
    source: Source,
    orbstack: bool,
}

/// The well-known sockets, in the order they are tried.
fn socket_candidates(user: Option<&User>, env: &dyn DiscoveryEnv) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(user) = user {
        let home = &user.home;
        let of = |what: &str| format!("{what} socket of {} {}", user.role, user.name);
        out.push(Candidate {
            label: of("Docker Desktop"),
            path: home.join(".docker/run/docker.sock"),
            source: Source::DockerDesktop,
            orbstack: false,
        });
        // Colima keeps one directory per profile; `_lima` and friends are its own.
        let colima = home.join(".colima");
        let mut profiles: Vec<String> = env
            .dir_entries(&colima)
            .into_iter()
            .filter(|p| p != "default" && !p.starts_with('_') && !p.starts_with('.'))
            .collect();
        profiles.sort();
        profiles.insert(0, "default".into());
        for profile in profiles {
            out.push(Candidate {
                label: of(&format!("Colima ({profile})")),
                path: colima.join(&profile).join("docker.sock"),
                source: Source::Colima { profile },
                orbstack: false,
            });
        }
        out.push(Candidate {
            label: of("Rancher Desktop"),
            path: home.join(".rd/docker.sock"),
            source: Source::RancherDesktop,
            orbstack: false,
        });
        out.push(Candidate {
            label: of("OrbStack"),
            path: home.join(".orbstack/run/docker.sock"),
            source: Source::SystemSocket,
            orbstack: true,
        });
    }
    out.push(Candidate {
        label: "system socket".into(),
        path: env.root().join("var/run/docker.sock"),
        source: Source::SystemSocket,
        orbstack: false,
    });
    out
}

/// The real machine.
pub struct SystemEnv;

impl DiscoveryEnv for SystemEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn user(&self) -> Option<User> {
        #[cfg(target_os = "macos")]
        {
            if let Some(user) = console_user() {
                return Some(user);
            }
        }
        let name = std::env::var("SUDO_USER").ok().filter(|n| !n.is_empty())?;
        let home = home_of(&name)?;
        Some(User {
            name,
            home,
            role: "sudo user",
        })
    }
}

/// The owner of `/dev/console` is whoever is logged in at the Mac's screen;
/// root means the login window (nobody).
#[cfg(target_os = "macos")]
fn console_user() -> Option<User> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/dev/console").ok()?.uid();
    if uid == 0 {
        return None;
    }
    let user = nix::unistd::User::from_uid(uid.into()).ok()??;
    Some(User {
        name: user.name,
        home: user.dir,
        role: "console user",
    })
}

fn home_of(name: &str) -> Option<PathBuf> {
    nix::unistd::User::from_name(name)
        .ok()?
        .map(|user| user.dir)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A machine whose user home and `/` are directories of a temp dir.
    struct Fake {
        _dir: TempDir,
        vars: HashMap<&'static str, String>,
        user: Option<User>,
        home: PathBuf,
        root: PathBuf,
        /// Listeners kept open so their sockets answer.
        live: Vec<UnixListener>,
        /// What `skipped_file` was told, as "path: problem".
        warnings: RefCell<Vec<String>>,
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Fake {
        fn new() -> Fake {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            // Short paths: unix socket paths are limited to ~100 bytes.
            let dir = std::env::temp_dir().join(format!(
                "cd{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let home = dir.join("h");
            let root = dir.join("r");
            std::fs::create_dir_all(&home).unwrap();
            std::fs::create_dir_all(root.join("var/run")).unwrap();
            Fake {
                _dir: TempDir(dir),
                vars: HashMap::new(),
                user: Some(User {
                    name: "alice".into(),
                    home: home.clone(),
                    role: "console user",
                }),
                home,
                root,
                live: Vec::new(),
                warnings: RefCell::default(),
            }
        }

        fn nobody(mut self) -> Fake {
            self.user = None;
            self
        }

        fn var(mut self, k: &'static str, v: &str) -> Fake {
            self.vars.insert(k, v.into());
            self
        }

        fn file(self, rel: &str, text: &str) -> Fake {
            let p = self.home.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }

        fn socket_at(mut self, path: PathBuf, live: bool) -> Fake {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let listener = UnixListener::bind(&path).unwrap();
            if live {
                self.live.push(listener);
            }
            self
        }

        fn socket(self, rel: &str, live: bool) -> Fake {
            let p = self.home.join(rel);
            self.socket_at(p, live)
        }

        fn context(self, name: &str, host: &str) -> Fake {
            let rel = format!(".docker/contexts/meta/{}/meta.json", context_dir_name(name));
            let meta = format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
            );
            self.file(&rel, &meta)
        }

        fn current_context(self, name: &str) -> Fake {
            self.file(
                ".docker/config.json",
                &format!(r#"{{"auths":{{}},"currentContext":"{name}"}}"#),
            )
        }

        fn sock(&self, rel: &str) -> String {
            format!("unix://{}", self.home.join(rel).display())
        }
    }

    trait IsOrbStack {
        fn is_orbstack_error(&self) -> bool;
    }
    impl IsOrbStack for DiscoveryError {
        fn is_orbstack_error(&self) -> bool {
            matches!(self, DiscoveryError::OrbStack { .. })
        }
    }

    impl DiscoveryEnv for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn user(&self) -> Option<User> {
            self.user.clone()
        }
        fn root(&self) -> PathBuf {
            self.root.clone()
        }
        fn skipped_file(&self, path: &Path, problem: &str) {
            self.warnings
                .borrow_mut()
                .push(format!("{}: {problem}", path.display()));
        }
    }

    #[test]
    fn context_dir_is_sha256_of_the_name() {
        // Known digests: sha256("default") and the FIPS 180-2 "abc" vector.
        assert_eq!(
            context_dir_name("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
        assert_eq!(
            context_dir_name("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn config_wins_over_everything() {
        let env = Fake::new()
            .var("DOCKER_HOST", "tcp://1.2.3.4:2375")
            .socket(".docker/run/docker.sock", true);
        let r = resolve(Some("unix:///tmp/x.sock"), &env).unwrap();
        assert_eq!(r.endpoint, "unix:///tmp/x.sock");
        assert_eq!(r.source, Source::Config);
        assert!(r.why.contains("config"), "{}", r.why);
    }

    #[test]
    fn bare_path_becomes_unix_endpoint() {
        let env = Fake::new();
        let r = resolve(Some("/var/run/other.sock"), &env).unwrap();
        assert_eq!(r.endpoint, "unix:///var/run/other.sock");
    }

    #[test]
    fn docker_host_env_is_second() {
        let env = Fake::new()
            .var("DOCKER_HOST", "tcp://127.0.0.1:2375")
            .current_context("colima")
            .context("colima", "unix:///nowhere.sock");
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.endpoint, "tcp://127.0.0.1:2375");
        assert_eq!(r.source, Source::DockerHostEnv);
        assert!(r.why.contains("DOCKER_HOST"));
        // Empty config value and empty DOCKER_HOST count as unset.
        let env = Fake::new()
            .var("DOCKER_HOST", " ")
            .socket(".docker/run/docker.sock", true);
        assert_eq!(
            resolve(Some(""), &env).unwrap().source,
            Source::DockerDesktop
        );
    }

    #[test]
    fn current_context_of_the_user() {
        let env = Fake::new()
            .current_context("colima")
            .context("colima", "unix:///Users/alice/.colima/default/docker.sock")
            .socket(".docker/run/docker.sock", true);
        let r = resolve(None, &env).unwrap();
        assert_eq!(
            r.endpoint,
            "unix:///Users/alice/.colima/default/docker.sock"
        );
        assert_eq!(
            r.source,
            Source::Context {
                name: "colima".into()
            }
        );
        assert!(r.why.contains("console user alice"), "{}", r.why);
        assert!(r.why.contains("currentContext"), "{}", r.why);
    }

    #[test]
    fn docker_context_env_overrides_current_context() {
        let env = Fake::new()
            .var("DOCKER_CONTEXT", "rd")
            .current_context("colima")
            .context("colima", "unix:///c.sock")
            .context("rd", "unix:///rd.sock");
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.endpoint, "unix:///rd.sock");
        assert!(r.why.contains("DOCKER_CONTEXT"));
    }

    #[test]
    fn default_context_falls_through_to_sockets() {
        let env = Fake::new()
            .current_context("default")
            .socket(".docker/run/docker.sock", true);
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.source, Source::DockerDesktop);
        assert_eq!(r.endpoint, env.sock(".docker/run/docker.sock"));
    }

    #[test]
    fn config_without_context_falls_through() {
        let env = Fake::new()
            .file(
                ".docker/config.json",
                r#"{"auths":{},"credsStore":"desktop"}"#,
            )
            .socket(".docker/run/docker.sock", true);
        assert_eq!(resolve(None, &env).unwrap().source, Source::DockerDesktop);
    }

    /// Resolves `env`, expecting Docker Desktop's socket after `file` was
    /// skipped: warned about once, naming the file and `problem`, and named
    /// in the resolution's `why`.
    fn falls_through_past(env: &Fake, file: &str, problem: &str) {
        let r = resolve(None, env).unwrap();
        assert_eq!(r.source, Source::DockerDesktop, "{}", r.why);
        let path = env.home.join(file).display().to_string();
        assert!(
            r.why.contains(&path) && r.why.contains(problem),
            "{}",
            r.why
        );
        let warnings = env.warnings.take();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&path) && warnings[0].contains(problem),
            "{warnings:?}"
        );
    }

    #[test]
    fn broken_docker_files_are_skipped_with_a_warning() {
        let meta =
            |name: &str| format!(".docker/contexts/meta/{}/meta.json", context_dir_name(name));
        // config.json that is not JSON, not an object, or has a bad field.
        for (text, problem) in [
            (
                "{not json",
                "not a docker config.json: key must be a string",
            ),
            ("[1]", "not a docker config.json: invalid type"),
            (r#"{"currentContext": 7}"#, "invalid type: integer `7`"),
            ("\u{0}\u{1}", "not a docker config.json"),
        ] {
            let env = Fake::new()
                .file(".docker/config.json", text)
                .socket(".docker/run/docker.sock", true);
            falls_through_past(&env, ".docker/config.json", problem);
        }
        // A context without its meta file, or with one that does not say
        // where the engine is.
        let env = Fake::new()
            .current_context("gone")
            .socket(".docker/run/docker.sock", true);
        falls_through_past(&env, &meta("gone"), "context \"gone\"");
        falls_through_past(&env, &meta("gone"), "No such file");
        for text in [
            r#"{"Name":"x","Endpoints":{}}"#,
            "{",
            r#"{"Endpoints":{"docker":{"Host":["x"]}}}"#,
        ] {
            let env = Fake::new()
                .var("DOCKER_CONTEXT", "x")
                .file(&meta("x"), text)
                .socket(".docker/run/docker.sock", true);
            falls_through_past(&env, &meta("x"), "DOCKER_CONTEXT");
        }
        let env = Fake::new()
            .current_context("x")
            .file(&meta("x"), r#"{"Endpoints":{"docker":{"Host":" "}}}"#)
            .socket(".docker/run/docker.sock", true);
        falls_through_past(&env, &meta("x"), "no Endpoints.docker.Host");
    }

    #[test]
    fn unreadable_docker_files_are_skipped_too() {
        // A directory, a FIFO (must not block the daemon), a huge file, and
        // bytes that are not UTF-8.
        let env = Fake::new().socket(".docker/run/docker.sock", true);
        std::fs::create_dir_all(env.home.join(".docker/config.json")).unwrap();
        falls_through_past(&env, ".docker/config.json", "not a regular file");

        let env = Fake::new().socket(".docker/run/docker.sock", true);
        let fifo =
            std::ffi::CString::new(env.home.join(".docker/config.json").display().to_string())
                .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        falls_through_past(&env, ".docker/config.json", "not a regular file");

        let big = format!(
            r#"{{"currentContext":"x","pad":"{}"}}"#,
            "x".repeat(MAX_FILE_BYTES)
        );
        let env = Fake::new()
            .file(".docker/config.json", &big)
            .socket(".docker/run/docker.sock", true);
        falls_through_past(
            &env,
            ".docker/config.json",
            &format!("larger than {MAX_FILE_BYTES} bytes"),
        );

        let env = Fake::new().socket(".docker/run/docker.sock", true);
        std::fs::write(env.home.join(".docker/config.json"), b"{\"a\":\"\xff\"}").unwrap();
        falls_through_past(&env, ".docker/config.json", "UTF-8");
    }

    #[test]
    fn a_skipped_file_is_listed_when_nothing_answers() {
        let env = Fake::new().file(".docker/config.json", "{not json");
        let e = resolve(None, &env).unwrap_err();
        let DiscoveryError::NotFound { tried } = &e else {
            panic!("{e}")
        };
        assert!(
            tried
                .iter()
                .any(|t| t.contains("config.json") && t.contains("not a docker config.json")),
            "{tried:?}"
        );
        assert!(e.to_string().contains("Docker Desktop"), "{e}");
    }

    #[test]
    fn a_host_the_user_gave_connector_stays_an_error() {
        let env = Fake::new()
            .file(".docker/config.json", "{not json")
            .socket(".docker/run/docker.sock", true);
        for configured in ["ssh://me@box", "docker.example:2375"] {
            let e = resolve(Some(configured), &env).unwrap_err();
            assert!(matches!(e, DiscoveryError::Unsupported { .. }), "{e}");
        }
        let env = env.var("DOCKER_HOST", "npipe:////./pipe/docker_engine");
        let e = resolve(None, &env).unwrap_err();
        assert!(matches!(e, DiscoveryError::Unsupported { .. }), "{e}");
        assert!(
            env.warnings.borrow().is_empty(),
            "the docker files were not read"
        );
    }

    #[test]
    fn warnings_are_logged_once_per_file_and_problem() {
        // The real `skipped_file`: the daemon resolves every few seconds while
        // it waits for Docker.
        let path = Path::new("/nonexistent/warn-once/config.json");
        for _ in 0..3 {
            warn_once(path, "problem a");
        }
        warn_once(path, "problem b");
        let logged = WARNED.lock().unwrap().clone();
        assert_eq!(
            logged.iter().filter(|(p, _)| p == path).count(),
            2,
            "{logged:?}"
        );
    }

    #[test]
    fn ssh_context_is_unsupported() {
        let env = Fake::new()
            .current_context("remote")
            .context("remote", "ssh://me@box");
        let e = resolve(None, &env).unwrap_err();
        assert!(
            matches!(&e, DiscoveryError::Unsupported { endpoint, .. } if endpoint == "ssh://me@box"),
            "{e}"
        );
    }

    #[test]
    fn docker_desktop_socket_first() {
        let env = Fake::new()
            .socket(".docker/run/docker.sock", true)
            .socket(".colima/default/docker.sock", true);
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.source, Source::DockerDesktop);
        assert!(r.why.contains("Docker Desktop"), "{}", r.why);
    }

    #[test]
    fn dead_sockets_are_skipped_and_explained() {
        let env = Fake::new()
            .socket(".docker/run/docker.sock", false)
            .socket(".colima/default/docker.sock", true);
        let r = resolve(None, &env).unwrap();
        assert_eq!(
            r.source,
            Source::Colima {
                profile: "default".into()
            }
        );
        assert!(
            r.why.contains("Docker Desktop"),
            "the why names the skipped socket: {}",
            r.why
        );
        assert!(r.why.contains("does not answer"), "{}", r.why);
    }

    #[test]
    fn colima_default_profile_before_others() {
        let env = Fake::new()
            .socket(".colima/work/docker.sock", true)
            .socket(".colima/default/docker.sock", true);
        assert_eq!(
            resolve(None, &env).unwrap().source,
            Source::Colima {
                profile: "default".into()
            }
        );

        let env = Fake::new()
            .socket(".colima/zeta/docker.sock", true)
            .socket(".colima/alpha/docker.sock", true)
            .file(".colima/_lima/x", "");
        let r = resolve(None, &env).unwrap();
        assert_eq!(
            r.source,
            Source::Colima {
                profile: "alpha".into()
            }
        );
        assert_eq!(r.endpoint, env.sock(".colima/alpha/docker.sock"));
    }

    #[test]
    fn rancher_desktop_then_system_socket() {
        let env = Fake::new().socket(".rd/docker.sock", true);
        assert_eq!(resolve(None, &env).unwrap().source, Source::RancherDesktop);

        let env = Fake::new();
        let sys = env.root.join("var/run/docker.sock");
        let env = env.socket_at(sys.clone(), true);
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.source, Source::SystemSocket);
        assert_eq!(r.endpoint, format!("unix://{}", sys.display()));
    }

    #[test]
    fn no_user_means_system_socket_only() {
        let env = Fake::new().nobody().socket(".docker/run/docker.sock", true);
        let e = resolve(None, &env).unwrap_err();
        let DiscoveryError::NotFound { tried } = &e else {
            panic!("{e}")
        };
        assert!(tried.iter().any(|t| t.contains("no user")), "{tried:?}");
        assert!(
            tried.iter().any(|t| t.contains("system socket")),
            "{tried:?}"
        );
        assert!(
            !tried.iter().any(|t| t.contains("Docker Desktop")),
            "{tried:?}"
        );
    }

    #[test]
    fn nothing_found_lists_everything_tried() {
        let env = Fake::new().file(".docker/run/docker.sock", "not a socket");
        let e = resolve(None, &env).unwrap_err();
        let text = e.to_string();
        for needle in [
            "docker_host",
            "DOCKER_HOST",
            "Docker Desktop",
            "not a socket",
            "Colima (default)",
            "Rancher Desktop",
            "OrbStack",
            "system socket",
            "missing",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    #[test]
    fn orbstack_socket_is_detected() {
        let env = Fake::new().socket(".orbstack/run/docker.sock", true);
        let e = resolve(None, &env).unwrap_err();
        assert!(e.is_orbstack_error(), "{e}");
        assert!(e.to_string().contains("connector is not needed"), "{e}");
    }

    #[test]
    fn other_engines_win_over_orbstack() {
        let env = Fake::new()
            .socket(".orbstack/run/docker.sock", true)
            .socket(".rd/docker.sock", true);
        assert_eq!(resolve(None, &env).unwrap().source, Source::RancherDesktop);
    }

    #[test]
    fn system_socket_leading_to_orbstack_is_detected() {
        // /var/run/docker.sock is OrbStack's symlink; with no user known, it is
        // the only candidate, and following it must reveal OrbStack.
        let env = Fake::new().socket(".orbstack/run/docker.sock", true);
        let target = env.home.join(".orbstack/run/docker.sock");
        std::os::unix::fs::symlink(&target, env.root.join("var/run/docker.sock")).unwrap();
        let env = env.nobody();
        let e = resolve(None, &env).unwrap_err();
        assert!(e.is_orbstack_error(), "{e}");
    }

    #[test]
    fn orbstack_context_or_host_is_detected() {
        let env = Fake::new()
            .current_context("orbstack")
            .context("orbstack", "unix:///Users/alice/.orbstack/run/docker.sock");
        assert!(resolve(None, &env).unwrap_err().is_orbstack_error());

        let env = Fake::new().var(
            "DOCKER_HOST",
            "unix:///Users/alice/.orbstack/run/docker.sock",
        );
        assert!(resolve(None, &env).unwrap_err().is_orbstack_error());
    }

    #[test]
    fn system_socket_symlink_is_explained() {
        let env = Fake::new().socket(".docker/run/docker.sock", true);
        let target = env.home.join(".docker/run/docker.sock");
        std::os::unix::fs::symlink(&target, env.root.join("var/run/docker.sock")).unwrap();
        let env = env.nobody();
        let r = resolve(None, &env).unwrap();
        assert_eq!(r.source, Source::SystemSocket);
        assert!(r.why.contains("leads to"), "{}", r.why);
    }

    #[test]
    fn home_of_root_is_found() {
        // The password database lookup works on the test machine.
        let home = home_of("root").expect("root has a passwd entry");
        assert!(home.is_absolute());
        assert_eq!(home_of("no-such-user-connector"), None);
    }

    use crate::testing::alloc_meter::measure;
    use crate::testing::json_of::json_of;
    use proptest::prelude::*;
    use serde_json::json;

    /// JSON made of the names docker's files use, in any shape.
    fn docker_json() -> impl Strategy<Value = String> {
        const WORDS: &[&str] = &[
            "currentContext",
            "Endpoints",
            "docker",
            "Host",
            "Name",
            "Metadata",
            "auths",
            "credsStore",
            "desktop",
            "unix:///var/run/docker.sock",
            "",
            " ",
        ];
        json_of(WORDS, 4, 5).prop_map(|v| v.to_string())
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            docker_json(),
            prop::collection::vec(any::<char>(), 0..256).prop_map(String::from_iter),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_file_content_is_read_or_refused_in_bounded_memory(text in any_text()) {
            let (_, peak) = measure(|| (current_context(&text), context_host(&text)));
            prop_assert!(peak <= 4 * text.len() + 4096, "{peak} for {} bytes", text.len());
        }

    }

    proptest! {
        // Round trips of generated values: fewer cases than arbitrary input.
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn current_context_is_read_back(
            name in prop::option::of(".{0,20}"),
            extra in prop::collection::vec(("[a-zA-Z]{1,8}", docker_json()), 0..3),
        ) {
            let mut config = json!({"auths": {}, "credsStore": "desktop"});
            for (key, value) in &extra {
                if key != "currentContext" {
                    config[key] = serde_json::from_str(value).unwrap();
                }
            }
            if let Some(name) = &name {
                config["currentContext"] = json!(name);
            }
            let expected = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            prop_assert_eq!(current_context(&config.to_string()), Ok(expected));
        }

        #[test]
        fn context_host_is_read_back(host in ".{0,40}", name in ".{0,12}") {
            let meta = json!({
                "Name": name,
                "Metadata": {"Description": "x"},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}},
            });
            let got = context_host(&meta.to_string());
            if host.trim().is_empty() {
                prop_assert_eq!(got, Err("no Endpoints.docker.Host".to_owned()));
            } else {
                prop_assert_eq!(got, Ok(host.trim().to_owned()));
            }
        }
    }
}
