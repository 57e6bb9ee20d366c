//! Bearer token strings: how they are made, parsed, hashed and checked.
//!
//! A token reads `rw<kind>_<id>_<secret>`. The `id` (12 hex digits) is
//! public and finds the stored record; the `secret` (32 random bytes,
//! base64url) is never stored. The store keeps only the SHA-256 of the
//! secret. A fast hash is enough because the secret has 256 bits of
//! entropy, so it cannot be guessed from its hash the way a password could.
//! The digest of a presented secret is compared with the stored digest in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The permission level of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read task results, live job state, peers and stored scripts.
    Read,
    /// Create and cancel tasks; includes `read`.
    Run,
    /// Manage the script store, tokens, enrollments and agent credentials,
    /// and read the audit log; includes `run` and `read`.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name as written in requests and on the command line.
    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }

    /// Returns true when a token holding `self` may do what `required`
    /// guards. Scopes are levels: `admin` covers `run`, which covers `read`.
    pub fn covers(self, required: Scope) -> bool {
        self >= required
    }
}

/// The kind of caller a token belongs to. The kind is part of the token
/// string, so an agent credential can never be used on the REST API and an
/// API token never opens an agent link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A REST API token with scopes.
    Api,
    /// A one-time token an agent presents once to receive its credential.
    Enrollment,
    /// An agent's own credential, bound to one peer id.
    Agent,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "rwt",
            TokenKind::Enrollment => "rwe",
            TokenKind::Agent => "rwa",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Enrollment => "enrollment",
            TokenKind::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<TokenKind> {
        [TokenKind::Api, TokenKind::Enrollment, TokenKind::Agent]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// A token just made: the string to hand out once, and what to store.
pub struct IssuedToken {
    pub token_id: String,
    /// The whole token string; shown to its owner once and never stored.
    pub token: String,
    /// Hex SHA-256 of the secret part.
    pub secret_hash: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

/// Makes a new random token of `kind` from the operating system's random
/// source.
///
/// # Errors
///
/// Fails only when the operating system has no random source.
pub fn issue(kind: TokenKind) -> Result<IssuedToken, getrandom::Error> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;

    let token_id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    Ok(IssuedToken {
        token: format!("{}_{token_id}_{secret}", kind.prefix()),
        secret_hash: hash_secret(&secret),
        token_id,
    })
}

/// A token string split into its parts; nothing is checked against the
/// store yet.
#[derive(PartialEq, Eq)]
pub struct PresentedToken<'a> {
    pub kind: TokenKind,
    pub token_id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for PresentedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedToken")
            .field("kind", &self.kind)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

/// Splits a token string, or returns `None` when it does not have the
/// shape of any Runwarden token.
pub fn parse(token: &str) -> Option<PresentedToken<'_>> {
    let (prefix, rest) = token.split_once('_')?;
    let kind = [TokenKind::Api, TokenKind::Enrollment, TokenKind::Agent]
        .into_iter()
        .find(|kind| kind.prefix() == prefix)?;
    let (token_id, secret) = rest.split_once('_')?;

    let id_ok = token_id.len() == ID_BYTES * 2 && token_id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(PresentedToken {
        kind,
        token_id,
        secret,
    })
}

/// Returns the hex SHA-256 of a token's secret part.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks a presented secret against a stored hash in constant time.
///
/// The time taken does not depend on how many leading bytes match, so
/// response times reveal nothing about the stored hash.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    let presented = Sha256::digest(secret.as_bytes());
    let Ok(stored) = hex::decode(stored_hash) else {
        return false;
    };
    stored.len() == presented.len() && bool::from(presented.as_slice().ct_eq(&stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_parses_and_matches() {
        let issued = issue(TokenKind::Api).unwrap();
        let presented = parse(&issued.token).unwrap();

        assert_eq!(presented.kind, TokenKind::Api);
        assert_eq!(presented.token_id, issued.token_id);
        assert!(secret_matches(presented.secret, &issued.secret_hash));
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let issued = issue(TokenKind::Agent).unwrap();
        let other = issue(TokenKind::Agent).unwrap();
        let presented = parse(&other.token).unwrap();

        assert!(!secret_matches(presented.secret, &issued.secret_hash));
    }

    #[test]
    fn kind_comes_from_the_prefix() {
        let enrollment = issue(TokenKind::Enrollment).unwrap();
        assert!(enrollment.token.starts_with("rwe_"));
        assert_eq!(
            parse(&enrollment.token).unwrap().kind,
            TokenKind::Enrollment
        );
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in [
            "",
            "rwt",
            "rwt_",
            "rwx_0123456789ab_abc",
            "rwt_0123_abc",
            "rwt_0123456789ab_",
            "rwt_0123456789ab_a b",
        ] {
            assert!(parse(token).is_none(), "{token:?} parsed");
        }
    }

    #[test]
    fn scopes_are_levels() {
        assert!(Scope::Admin.covers(Scope::Run));
        assert!(Scope::Run.covers(Scope::Read));
        assert!(!Scope::Read.covers(Scope::Run));
        assert!(!Scope::Run.covers(Scope::Admin));
    }
}
