//! How captured output bytes travel in JSON.
//!
//! JSON strings hold text, but a script may print any bytes. Each stream is
//! carried as two fields:
//!
//! - `stdout` / `stderr`: the bytes decoded as UTF-8, with each invalid
//!   sequence replaced by U+FFFD. Always present, good for reading.
//! - `stdoutBase64` / `stderrBase64`: present only when the bytes are not
//!   valid UTF-8, and then holding the exact bytes in standard base64 with
//!   padding.
//!
//! So the exact bytes are `base64` decoded when that field is present, and
//! the UTF-8 text field otherwise. [`decode_stream`] does this.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Encodes captured bytes as `(text, base64)`, where `base64` is `None` when
/// `text` already holds the bytes exactly.
pub fn encode_stream(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(STANDARD.encode(bytes)),
        ),
    }
}

/// Recovers the exact bytes of a stream from its two JSON fields.
///
/// # Errors
///
/// Returns an error when `base64` is present but not valid standard base64.
pub fn decode_stream(text: &str, base64: Option<&str>) -> Result<Vec<u8>, base64::DecodeError> {
    match base64 {
        Some(encoded) => STANDARD.decode(encoded),
        None => Ok(text.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_output_has_no_base64() {
        let (text, base64) = encode_stream("ò\n".as_bytes());
        assert_eq!(text, "ò\n");
        assert_eq!(base64, None);
    }

    #[test]
    fn invalid_utf8_round_trips() {
        let bytes = [0x84, 0xff, 0x0a];
        let (text, base64) = encode_stream(&bytes);
        assert_eq!(text, "\u{fffd}\u{fffd}\n");
        let decoded = decode_stream(&text, base64.as_deref()).unwrap();
        assert_eq!(decoded, bytes);
    }
}
