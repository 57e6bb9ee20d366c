//! The agent's credential: the token it presents to the coordinator.
//!
//! A new agent has a one-time enrollment token from its config. On its
//! first connection the coordinator exchanges it for the agent's own
//! credential, bound to its peer id, which the agent keeps in
//! `credential_file` (mode 0600) and presents from then on. The enrollment
//! token is not used again once that file exists.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

#[derive(Debug, Clone)]
pub struct Credentials {
    /// File that contains the agent's credential once it enrolled.
    pub path: PathBuf,
    /// Token to enroll with while `path` does not exist.
    enrollment_token: Option<String>,
}

impl Credentials {
    pub fn new(path: PathBuf, enrollment_token: &str) -> Credentials {
        let enrollment_token = enrollment_token.trim();
        Credentials {
            path,
            enrollment_token: (!enrollment_token.is_empty()).then(|| enrollment_token.to_owned()),
        }
    }

    /// Returns the token for the next connection: the stored credential if
    /// there is one, else the enrollment token, else none.
    ///
    /// # Errors
    ///
    /// Fails when the credential file exists but cannot be read.
    pub fn bearer(&self) -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(self.enrollment_token.clone())
            }
            Err(error) => Err(error).with_context(|| {
                format!(
                    "failed to read the agent credential `{}`; fix its permissions or delete it and enroll again",
                    self.path.display()
                )
            }),
        }
    }

    /// Stores the credential the coordinator issued, readable only by the
    /// agent's user. Writes a temporary file, syncs it and renames it, so a
    /// crash leaves either no credential or the whole one.
    ///
    /// # Errors
    ///
    /// Fails when the folder or file cannot be written.
    pub fn save(&self, credential: &str) -> anyhow::Result<()> {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(folder)
            .with_context(|| format!("failed to create `{}`", folder.display()))?;

        let temporary = self.path.with_extension("new");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("failed to create `{}`", temporary.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to restrict `{}`", temporary.display()))?;
        file.write_all(credential.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("failed to write `{}`", temporary.display()))?;
        std::fs::rename(&temporary, &self.path).with_context(|| {
            format!("failed to move the credential to `{}`", self.path.display())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_token_until_saved() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::new(dir.path().join("credential"), "rwe_x");

        assert_eq!(credentials.bearer().unwrap().as_deref(), Some("rwe_x"));
        credentials.save("rwa_y").unwrap();
        assert_eq!(credentials.bearer().unwrap().as_deref(), Some("rwa_y"));
    }

    #[test]
    fn saved_credential_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::new(dir.path().join("credential"), "");

        assert_eq!(credentials.bearer().unwrap(), None);
        credentials.save("rwa_y").unwrap();
        let mode = std::fs::metadata(&credentials.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
