//! Logging through the host's `log` import.

use crate::Level;

/// Writes `message` to the host's log at `level`, tagged by the host with the
/// plugin's name. The host drops and counts lines past its rate limit.
///
/// On targets other than wasm32, where the host import does not exist, the
/// line goes to standard error, so that plugin logic can be unit-tested
/// natively.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::validator::runwarden::plugin::host::log(level, message);

    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Formats its arguments like `format!` and logs them at level `trace`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Trace, &::std::format!($($arg)+))
    };
}

/// Formats its arguments like `format!` and logs them at level `debug`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Formats its arguments like `format!` and logs them at level `info`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Info, &::std::format!($($arg)+))
    };
}

/// Formats its arguments like `format!` and logs them at level `warn`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Formats its arguments like `format!` and logs them at level `error`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Error, &::std::format!($($arg)+))
    };
}
