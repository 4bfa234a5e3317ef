//! Login tokens: HS256 JWTs with an expiry, an optional start of validity (`nbf`), an optional
//! room grant and a publish grant.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// Bytes of randomness in a generated token-signing secret.
pub const SECRET_LEN: usize = 32;

/// The claims qrelay reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user ID the token was issued to; a login must name the same user.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, in seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Not before: the token is refused until this second (since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Rooms the token grants; absent means every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Whether the holder may send messages (a listen-only token has `false`).
    #[serde(default = "default_publish")]
    pub publish: bool,
}

fn default_publish() -> bool {
    true
}

impl Claims {
    /// Whether the token grants `room`.
    pub fn grants_room(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }

    /// Whether the token has expired at `now` (valid through its `exp` second, as the JWT
    /// validation that admitted it).
    pub fn expired_at(&self, now: SystemTime) -> bool {
        unix_seconds(now) > self.exp
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Missing, malformed, not HS256, not signed with this secret, or with an `aud` claim.
    #[error("the token is missing, malformed or not signed by this server's secret")]
    Invalid,
    /// Its `nbf` (not before) has not come yet.
    #[error("the token is not valid yet: its nbf (not before) is in the future")]
    NotYetValid,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
}

impl TokenError {
    /// The result code a refused login or renewal carries.
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Invalid | TokenError::NotYetValid => ErrorCode::TOKEN_INVALID,
            TokenError::Expired => ErrorCode::TOKEN_EXPIRED,
        }
    }
}

/// The shared secret that signs and verifies tokens.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from raw secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry and start are exact: the relay and the token issuer are expected to share a
        // clock source.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The key of a secret file (see [`read_secret`]).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::new(&read_secret(path)?))
    }

    /// Signs a token for `user`, valid for `ttl`, granting `rooms` (all if `None`).
    pub fn mint(
        &self,
        user: &str,
        rooms: Option<Vec<String>>,
        publish: bool,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_seconds(SystemTime::now());
        let claims = Claims {
            sub: user.to_owned(),
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: None,
            rooms,
            publish,
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (for tests and tools that need a specific expiry).
    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// Verifies a token's signature, expiry and start (`nbf`) and returns its claims; the
    /// error says why a token was refused, and [`TokenError::code`] gives its result code.
    pub fn check(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid,
            })
    }

    /// [`TokenKey::check`] with only the result code of a refusal.
    pub fn verify(&self, token: &str) -> Result<Claims, ErrorCode> {
        self.check(token).map_err(TokenError::code)
    }
}

/// Reads a secret file: hex text, as [`generate_secret`] writes it.
pub fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    hex::decode(text.trim()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a hex secret: {e}", path.display()),
        )
    })
}

/// Writes a new random secret of [`SECRET_LEN`] bytes to `path` as hex (readable by the owner
/// only) and returns it.
pub fn generate_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let secret: [u8; SECRET_LEN] = rand::random();
    crate::certs::write_private(path, hex::encode(secret).as_bytes())?;
    Ok(secret.to_vec())
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token =
            key.mint("alice", Some(vec!["a".into()]), true, Duration::from_secs(60)).unwrap();
        let claims = key.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(claims.grants_room("a"));
        assert!(!claims.grants_room("b"));
        assert!(claims.publish);
    }

    #[test]
    fn expired_wrong_key_and_garbage_are_refused() {
        let key = TokenKey::new(b"one secret");
        let now = unix_seconds(SystemTime::now());
        let expired = key
            .sign(&Claims {
                sub: "a".into(),
                exp: now - 1,
                iat: now - 100,
                nbf: None,
                rooms: None,
                publish: true,
            })
            .unwrap();
        assert_eq!(key.verify(&expired), Err(ErrorCode::TOKEN_EXPIRED));
        assert_eq!(key.check(&expired), Err(TokenError::Expired));
        let other = TokenKey::new(b"another secret").mint("a", None, true, Duration::from_secs(60));
        assert_eq!(key.verify(&other.unwrap()), Err(ErrorCode::TOKEN_INVALID));
        assert_eq!(key.verify("not.a.jwt"), Err(ErrorCode::TOKEN_INVALID));
        assert_eq!(key.verify(""), Err(ErrorCode::TOKEN_INVALID));
    }

    #[test]
    fn a_token_is_refused_before_its_nbf_and_accepted_from_it() {
        let key = TokenKey::new(b"one secret");
        let now = unix_seconds(SystemTime::now());
        let starting = |nbf: Option<u64>| {
            key.sign(&Claims {
                sub: "a".into(),
                exp: now + 600,
                iat: now,
                nbf,
                rooms: None,
                publish: true,
            })
            .unwrap()
        };
        let later = starting(Some(now + 60));
        assert_eq!(key.check(&later), Err(TokenError::NotYetValid));
        assert_eq!(key.verify(&later), Err(ErrorCode::TOKEN_INVALID));
        assert!(TokenError::NotYetValid.to_string().contains("not valid yet"));
        assert_eq!(key.check(&starting(Some(now - 1))).unwrap().nbf, Some(now - 1));
        assert!(key.check(&starting(Some(now))).is_ok(), "valid from second nbf on");
        assert!(key.check(&starting(None)).is_ok(), "nbf is optional");
    }
}
