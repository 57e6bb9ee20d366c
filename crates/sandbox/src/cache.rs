//! On-disk cache of precompiled plugins.
//!
//! Compiling a plugin takes from milliseconds to seconds; loading a
//! precompiled one takes microseconds. Entries are keyed by the module's
//! sha256 and the engine's compatibility hash, so a wasmtime upgrade or a
//! different engine configuration misses instead of loading code built for
//! another engine.
//!
//! # Trust
//!
//! Loading precompiled code runs it without validation, so an entry must be
//! exactly what this process wrote. Each entry has a sidecar file with the
//! sha256 of its bytes, and the cache folder must belong to this user and be
//! writable by no one else. An entry whose checksum does not match, or that
//! fails to load, is a miss: it is compiled again and overwritten.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where precompiled plugins are kept.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating if needed) a private cache folder. Returns `None`,
    /// with a warning, when the folder cannot be made private, in which case
    /// plugins are compiled at every start.
    pub fn open(dir: &Path) -> Option<ArtifactCache> {
        match prepare_private_dir(dir) {
            Ok(()) => Some(ArtifactCache {
                dir: dir.to_owned(),
            }),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "plugin cache disabled; plugins are compiled at every start");
                None
            }
        }
    }

    fn entry_path(&self, engine: &Engine, module_sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{module_sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads a cached component, or `None` on any kind of miss.
    pub fn load(&self, engine: &Engine, module_sha256: &str) -> Option<Component> {
        let path = self.entry_path(engine, module_sha256);
        let bytes = std::fs::read(&path).ok()?;
        let recorded = std::fs::read_to_string(checksum_path(&path)).ok()?;

        if hex::encode(Sha256::digest(&bytes)) != recorded.trim() {
            tracing::warn!(path = %path.display(), "cached plugin does not match its checksum; compiling again");
            return None;
        }

        // SAFETY: the bytes are exactly what `store` wrote for this module
        // and engine: the checksum above matches, and the folder is private
        // to this user (checked in `open`), so no other user can have
        // replaced both files.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cached plugin failed to load; compiling again");
                None
            }
        }
    }

    /// Stores a precompiled component, replacing any old entry atomically.
    /// Failures are logged, since the cache only saves time.
    pub fn store(&self, engine: &Engine, module_sha256: &str, precompiled: &[u8]) {
        let path = self.entry_path(engine, module_sha256);
        let checksum = hex::encode(Sha256::digest(precompiled));

        let written = write_atomically(&path, precompiled)
            .and_then(|()| write_atomically(&checksum_path(&path), checksum.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "failed to cache precompiled plugin");
        }
    }
}

fn checksum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut staged = tempfile::NamedTempFile::new_in(dir)?;
    staged.write_all(bytes)?;
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|error| error.error)?;
    Ok(())
}

fn prepare_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    let me = nix_euid();

    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "the folder belongs to uid {}, not this process's uid {me}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
