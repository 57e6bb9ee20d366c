//! Secret environment values (`content.secretEnv`) and their redaction.
//!
//! A secret value travels from the client to the coordinator, stays in the
//! coordinator's memory until its job reaches the agent, travels over the
//! agent link, and ends in the environment of the job's process. Everywhere
//! else a request is stored or shown, each secret value is replaced by
//! [`REDACTED`], and the variable names stay, so a reader still sees which
//! variables were set.
//!
//! How the types relate:
//!
//! - [`SecretEnv`] contains the variables. Its `Debug` output shows names only,
//!   so a `{:?}` of a request never prints a value.
//! - [`Redact`] is implemented by every request type that contains a
//!   [`SecretEnv`]: [`ScriptContent`](crate::api::ScriptContent),
//!   [`ScriptRequest`](crate::api::ScriptRequest) and
//!   [`JobRequest`](crate::api::JobRequest). Each of them also has an
//!   inherent `redacted(&self)` that returns a redacted copy.
//! - [`Redacted<T>`] is a value that went through [`Redact::redact`]. Stores
//!   (the coordinator's database, the agent's journal) and API responses
//!   that show a request store this type, so a caller cannot hand them a
//!   request with secret values by accident. The only ways to build a
//!   `Redacted<T>` are [`Redacted::new`] and deserialization, and both
//!   redact.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The text that replaces a secret value wherever a request is stored or
/// shown.
pub const REDACTED: &str = "<redacted>";

/// Environment variables whose values are secret, by name.
///
/// Serializes as a JSON object of strings, like `content.env`. A value that
/// is not a string fails to deserialize with a message that names no value,
/// so a mistyped secret is not echoed into an error.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SecretEnv(BTreeMap<String, String>);

impl SecretEnv {
    pub fn new() -> SecretEnv {
        SecretEnv::default()
    }

    /// Sets `name` to `value` and returns the earlier value, if any.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns the variable names, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Returns the variables as `(name, value)` pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Returns true when both hold the same variable names, whatever their
    /// values.
    pub fn same_names(&self, other: &SecretEnv) -> bool {
        self.0.keys().eq(other.0.keys())
    }
}

impl Redact for SecretEnv {
    fn redact(&mut self) {
        for value in self.0.values_mut() {
            if value != REDACTED {
                *value = REDACTED.to_owned();
            }
        }
    }
}

impl FromIterator<(String, String)> for SecretEnv {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> SecretEnv {
        SecretEnv(iter.into_iter().collect())
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name, REDACTED)))
            .finish()
    }
}

impl<'de> Deserialize<'de> for SecretEnv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretEnv, D::Error> {
        deserializer.deserialize_map(SecretEnvVisitor)
    }
}

struct SecretEnvVisitor;

impl<'de> Visitor<'de> for SecretEnvVisitor {
    type Value = SecretEnv;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of environment variable names to string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretEnv, A::Error> {
        let mut variables = BTreeMap::new();
        while let Some((name, SecretValue(value))) = map.next_entry::<String, SecretValue>()? {
            variables.insert(name, value);
        }
        Ok(SecretEnv(variables))
    }
}

/// One secret value while it is parsed. It requests any type, so that its
/// visitor receives numbers and booleans and rejects them itself, because
/// serde_json's own error for a non-string quotes the value. This needs a
/// self-describing format such as JSON.
struct SecretValue(String);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretValue, D::Error> {
        deserializer.deserialize_any(SecretValueVisitor)
    }
}

struct SecretValueVisitor;

impl SecretValueVisitor {
    fn not_a_string<E: de::Error>(kind: &str) -> E {
        E::custom(format!(
            "invalid type: {kind}, expected a string (the value is not shown because it is secret)"
        ))
    }
}

impl Visitor<'_> for SecretValueVisitor {
    type Value = SecretValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<SecretValue, E> {
        Ok(SecretValue(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<SecretValue, E> {
        Ok(SecretValue(value))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretValue, E> {
        Err(Self::not_a_string("boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretValue, E> {
        Err(Self::not_a_string("integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<SecretValue, E> {
        Err(Self::not_a_string("integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretValue, E> {
        Err(Self::not_a_string("integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<SecretValue, E> {
        Err(Self::not_a_string("integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretValue, E> {
        Err(Self::not_a_string("floating point number"))
    }
}

/// A type that can replace its secret values by [`REDACTED`], in place.
///
/// Redacting twice gives the same result as redacting once.
pub trait Redact {
    fn redact(&mut self);
}

/// A value whose secret values were replaced by [`REDACTED`].
///
/// Build one with [`Redacted::new`]. Deserializing one redacts too, so a
/// store that read back an unredacted value (for example a row written by a
/// broken older version) still hands out a redacted one. Read the value
/// through `Deref`, or take it with [`Redacted::into_inner`]. It serializes
/// exactly as the inner value.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted<T>(T);

impl<T: Redact> Redacted<T> {
    /// Redacts `value` and wraps it.
    pub fn new(mut value: T) -> Redacted<T> {
        value.redact();
        Redacted(value)
    }
}

impl<T> Redacted<T> {
    /// Returns the redacted value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Redacted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Serialize> Serialize for Redacted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de> + Redact> Deserialize<'de> for Redacted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Redacted<T>, D::Error> {
        T::deserialize(deserializer).map(Redacted::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> SecretEnv {
        [("TOKEN".to_owned(), "s3cr3t-value".to_owned())]
            .into_iter()
            .collect()
    }

    #[test]
    fn debug_shows_names_only() {
        let text = format!("{:?}", secrets());
        assert!(text.contains("TOKEN"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
    }

    #[test]
    fn redact_keeps_names() {
        let mut env = secrets();
        env.redact();
        assert_eq!(env.get("TOKEN"), Some(REDACTED));
        assert_eq!(env.len(), 1);
    }

    #[test]
    fn redacted_wrapper_redacts_on_deserialize() {
        let value: Redacted<SecretEnv> =
            serde_json::from_str(r#"{"TOKEN":"s3cr3t-value"}"#).expect("a string map deserializes");
        assert_eq!(value.get("TOKEN"), Some(REDACTED));
    }

    #[test]
    fn non_string_value_is_not_echoed() {
        for body in [
            r#"{"PIN":918273}"#,
            r#"{"PIN":-918273}"#,
            r#"{"PIN":9182.73}"#,
        ] {
            let error = serde_json::from_str::<SecretEnv>(body).unwrap_err();
            let text = error.to_string();
            assert!(!text.contains("9182"), "{text}");
            assert!(text.contains("expected a string"), "{text}");
        }

        let value = serde_json::json!({ "PIN": 918273 });
        let error = serde_json::from_value::<SecretEnv>(value).unwrap_err();
        assert!(!error.to_string().contains("918273"), "{error}");
    }
}
