//! Per-call store data: WASI context, memory accounting and the plugin's
//! log limiter.
//!
//! A fresh [`wasmtime::Store`] holding a [`CallState`] is made for every hook
//! call, so nothing a plugin does in one call is visible in the next.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::Level;
use crate::bindings::validator::runwarden::plugin::host;

/// Log lines a plugin may write per call before further lines are dropped.
pub const LOG_BURST: u32 = 100;

/// Longest log line kept, in bytes; longer lines are cut.
pub const LOG_LINE_MAX_BYTES: usize = 4096;

pub struct CallState {
    pub plugin: String,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryLimiter,
    pub log: LogLimiter,
    /// Wall-clock deadline of the call, checked at each epoch tick.
    pub deadline: Instant,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.admit() {
            return;
        }
        let message = truncate_utf8(&message, LOG_LINE_MAX_BYTES);
        let plugin = self.plugin.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "runwarden::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "runwarden::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "runwarden::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "runwarden::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "runwarden::plugin", plugin, "{message}"),
        }
    }
}

impl crate::bindings::validator::runwarden::plugin::types::Host for CallState {}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Caps the plugin's memory, summed over all of its linear memories and
/// tables, and records the peak.
#[derive(Debug)]
pub struct MemoryLimiter {
    pub limit_bytes: usize,
    pub used_bytes: usize,
    pub peak_bytes: usize,
    /// Set when a growth was refused, so the error can say why.
    pub hit_limit: bool,
}

impl MemoryLimiter {
    pub fn new(limit_bytes: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            used_bytes: 0,
            peak_bytes: 0,
            hit_limit: false,
        }
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let added = desired.saturating_sub(current);
        let total = self.used_bytes.saturating_add(added);
        if total > self.limit_bytes {
            self.hit_limit = true;
            return false;
        }
        self.used_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        true
    }
}

/// Table elements are counted at this many bytes each, roughly what the host
/// spends on one.
const TABLE_ELEMENT_BYTES: usize = 16;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let current = current.saturating_mul(TABLE_ELEMENT_BYTES);
        let desired = desired.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(current, desired))
    }
}

/// Admits up to [`LOG_BURST`] lines per call and counts the rest.
#[derive(Debug, Default)]
pub struct LogLimiter {
    admitted: u32,
    pub dropped: u64,
}

impl LogLimiter {
    fn admit(&mut self) -> bool {
        if self.admitted < LOG_BURST {
            self.admitted += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// A wall clock stuck at the Unix epoch, so plugins learn nothing about the
/// host's time.
pub struct FixedWallClock;

impl wasmtime_wasi::HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that advances one microsecond per read, so time seems to
/// pass for loops that wait on it, but reveals nothing about the host.
#[derive(Default)]
pub struct CountingClock {
    ticks: std::sync::atomic::AtomicU64,
}

impl wasmtime_wasi::HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        self.ticks
            .fetch_add(1_000, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_sums_all_memories() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.grow(0, 60));
        assert!(limiter.grow(0, 40));
        assert!(!limiter.grow(40, 41));
        assert!(limiter.hit_limit);
        assert_eq!(limiter.peak_bytes, 100);
    }

    #[test]
    fn log_limiter_drops_past_burst() {
        let mut limiter = LogLimiter::default();
        let admitted = (0..LOG_BURST + 5).filter(|_| limiter.admit()).count();
        assert_eq!(admitted, LOG_BURST as usize);
        assert_eq!(limiter.dropped, 5);
    }

    #[test]
    fn truncate_keeps_char_boundary() {
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("abc", 5), "abc");
    }
}
