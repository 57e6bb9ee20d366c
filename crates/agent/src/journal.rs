//! The agent's on-disk journal of accepted jobs and undelivered results.
//!
//! One JSON file per job, `<data_dir>/journal/<job id>.json`, written
//! atomically (temporary file, fsync, rename) before the agent tells the
//! coordinator anything about the job:
//!
//! - when the agent accepts a job, the file holds the request;
//! - when the job ends, the file gains the result;
//! - when the coordinator confirms it stored the result, the file goes.
//!
//! On start, an agent reads the journal. A job with a result has its result
//! sent again. A job without one was queued or running when the previous
//! agent process died, so its outcome is unknown: it is reported `lost`.
//! Results are therefore delivered at least once, and the coordinator keeps
//! the first copy of each.
//!
//! The journal never contains secret environment values, because an entry's
//! request is a [`Redacted`] value, which cannot be built without replacing
//! them. A job that has to be read back from the journal is reported `lost`,
//! not run again, so it never needs them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use runwarden_protocol::api::{JobRequest, ResCmd};
use runwarden_protocol::secret::Redacted;
use runwarden_protocol::status::JobStatus;
use serde::{Deserialize, Serialize};

/// One job as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The job's request with secret values redacted.
    pub req: Redacted<JobRequest>,
    /// `None` while the job is queued or running.
    pub result: Option<JournalResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalResult {
    pub status: JobStatus,
    pub res_cmd: ResCmd,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating if needed) the journal folder under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Journal> {
        let dir = data_dir.join("journal");
        std::fs::create_dir_all(&dir)?;
        Ok(Journal { dir })
    }

    fn path_of(&self, job_id: &str) -> PathBuf {
        // Job ids come from the coordinator; keep only characters that are
        // safe in a file name so that an odd id cannot leave the folder.
        let safe: String = job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Writes the entry of a job, replacing any earlier one, and returns once
    /// it is on disk.
    pub fn write(&self, entry: &JournalEntry) -> std::io::Result<()> {
        let path = self.path_of(&entry.req.jobid);
        let text = serde_json::to_vec(entry).map_err(std::io::Error::other)?;

        let mut staged = tempfile::NamedTempFile::new_in(&self.dir)?;
        staged.write_all(&text)?;
        staged.as_file().sync_all()?;
        staged.persist(&path).map_err(|error| error.error)?;
        sync_dir(&self.dir)
    }

    /// Forgets a job whose result the coordinator stored.
    pub fn remove(&self, job_id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_of(job_id)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Reads every entry. Files that cannot be read or parsed are logged and
    /// moved aside with a `.bad` suffix, so one damaged file cannot stop the
    /// agent from starting.
    pub fn load(&self) -> Vec<JournalEntry> {
        let Ok(files) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<JournalEntry>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "journal entry unreadable; moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                }
            }
        }
        entries
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use runwarden_protocol::api::ScriptContent;

    use super::*;

    fn request(job_id: &str) -> Redacted<JobRequest> {
        Redacted::new(JobRequest {
            taskid: "t".into(),
            jobid: job_id.into(),
            name: String::new(),
            creater: String::new(),
            content: ScriptContent::default(),
        })
    }

    #[test]
    fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal
            .write(&JournalEntry {
                req: request("a"),
                result: None,
            })
            .unwrap();
        let done = JournalEntry {
            req: request("b"),
            result: Some(JournalResult {
                status: JobStatus::Success,
                res_cmd: ResCmd::default(),
            }),
        };
        journal.write(&done).unwrap();

        let mut loaded = Journal::open(dir.path()).unwrap().load();
        loaded.sort_by(|x, y| x.req.jobid.cmp(&y.req.jobid));

        assert_eq!(loaded.len(), 2);
        assert!(loaded[0].result.is_none());
        assert_eq!(
            loaded[1].result.as_ref().unwrap().status,
            JobStatus::Success
        );
    }

    #[test]
    fn entry_file_holds_no_secret_value() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut content = ScriptContent::default();
        content.secret_env.insert("TOKEN", "journal-secret-value");
        let req = Redacted::new(JobRequest {
            content,
            ..request("s").into_inner()
        });

        journal.write(&JournalEntry { req, result: None }).unwrap();

        let text = std::fs::read_to_string(dir.path().join("journal/s.json")).unwrap();
        assert!(!text.contains("journal-secret-value"), "{text}");
        assert!(text.contains("TOKEN"), "{text}");
    }

    #[test]
    fn removed_entry_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal
            .write(&JournalEntry {
                req: request("a"),
                result: None,
            })
            .unwrap();

        journal.remove("a").unwrap();
        journal.remove("a").unwrap();

        assert!(journal.load().is_empty());
    }

    #[test]
    fn damaged_entry_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("journal/x.json"), b"{not json").unwrap();

        assert!(journal.load().is_empty());
        assert!(dir.path().join("journal/x.json.bad").exists());
    }

    #[test]
    fn odd_job_id_stays_in_folder() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();

        let path = journal.path_of("../../etc/passwd");

        assert!(path.starts_with(dir.path().join("journal")));
    }
}
