//! Capped capture of a job's stdout and stderr.

use std::sync::Mutex;

/// Output captured so far from one job, shared between the reader tasks and
/// live queries.
#[derive(Debug)]
pub struct LiveOutput {
    pub stdout: Mutex<CappedBuffer>,
    pub stderr: Mutex<CappedBuffer>,
}

impl LiveOutput {
    /// Creates empty buffers that each keep at most `max_bytes`.
    pub fn new(max_bytes: usize) -> LiveOutput {
        LiveOutput {
            stdout: Mutex::new(CappedBuffer::new(max_bytes)),
            stderr: Mutex::new(CappedBuffer::new(max_bytes)),
        }
    }
}

/// Bytes kept up to a cap, with a count of the bytes dropped past it.
#[derive(Debug, Clone, Default)]
pub struct CappedBuffer {
    kept: Vec<u8>,
    max_bytes: usize,
    dropped: u64,
}

impl CappedBuffer {
    pub fn new(max_bytes: usize) -> CappedBuffer {
        CappedBuffer {
            kept: Vec::new(),
            max_bytes,
            dropped: 0,
        }
    }

    /// Appends what fits under the cap and counts the rest as dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = self.max_bytes.saturating_sub(self.kept.len());
        let (kept, dropped) = bytes.split_at(room.min(bytes.len()));
        self.kept.extend_from_slice(kept);
        self.dropped += dropped.len() as u64;
    }

    pub fn kept(&self) -> &[u8] {
        &self.kept
    }

    /// Bytes dropped past the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
