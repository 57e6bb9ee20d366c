//! The wasmtime engine shared by every plugin of a sandbox, and the thread
//! that advances its epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Time between epoch ticks. A call that runs past its deadline traps at the
/// next tick, so deadlines fire up to this late, plus the time the guest
/// spends in one host call (host calls are not interrupted).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Plugin instances that may exist at once across all calls; further calls
/// wait for a free slot.
pub const MAX_CONCURRENT_INSTANCES: u32 = 64;

/// Guest stack limit; recursion past it traps.
pub const MAX_WASM_STACK_BYTES: usize = 512 * 1024;

/// Builds the engine: epoch interruption always on, fuel when any plugin has
/// a budget, and the pooling allocator sized for `max_memory_bytes` per
/// instance. Falls back to on-demand allocation, with a warning, when the
/// machine cannot reserve the pool (for example under a tight address-space
/// limit).
pub fn build_engine(max_memory_bytes: u64, use_fuel: bool) -> anyhow::Result<Engine> {
    let mut config = base_config(use_fuel);

    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES)
        .total_core_instances(MAX_CONCURRENT_INSTANCES * 4)
        .total_memories(MAX_CONCURRENT_INSTANCES * 2)
        .total_tables(MAX_CONCURRENT_INSTANCES * 4)
        .max_memory_size(usize::try_from(max_memory_bytes).unwrap_or(usize::MAX))
        .total_stacks(MAX_CONCURRENT_INSTANCES);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    match Engine::new(&config) {
        Ok(engine) => {
            tracing::debug!(max_memory_bytes, "plugin engine uses the pooling allocator");
            Ok(engine)
        }
        Err(error) => {
            tracing::warn!(%error, "pooling allocator unavailable; plugins use on-demand allocation, which is slower to instantiate");
            Ok(Engine::new(&base_config(use_fuel))?)
        }
    }
}

fn base_config(use_fuel: bool) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .consume_fuel(use_fuel)
        .max_wasm_stack(MAX_WASM_STACK_BYTES);
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the plugin epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
