//! Who may do what: principals, their roles, and checking the secrets they present.
//!
//! A deployment lists its principals in a credentials file ([`mod@file`]); each has roles
//! ([`Role`]) and one or more secrets, stored only as argon2id hashes. A client presents
//! a [`Token`] (`om_<id>_<secret>`): over the binary protocol in AUTH, over HTTP as the
//! Basic user name (what Segment's SDKs send as their write key) or a Bearer token.
//! [`Authenticator::authenticate`] finds the secret by its id and checks the hash.
//!
//! Why a cache, and why it is safe: argon2 is slow on purpose (about 20 ms), which an
//! HTTP edge taking hundreds of batches a second cannot pay per request. Once a token
//! is verified, the authenticator remembers a keyed BLAKE2b MAC of it (the key is random
//! per process) under its id; the next presentation of the same token costs one MAC and
//! one constant-time comparison. The cache never holds a secret, only holds tokens
//! that verified, and is dropped with the authenticator when the file is re-read, so a
//! revoked secret stops working at the next reload.
//!
//! Failed attempts are slowed per client address ([`Throttle`]): after a few, each
//! attempt from that address waits its turn, longer each time, so guessing costs time
//! and parallel connections do not multiply the rate.
//!
//! This module knows nothing of sockets, the protocol or the engine: the server maps
//! operations to roles and asks.

pub mod file;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use blake2::digest::{KeyInit, Mac};
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

pub use file::{CredentialsError, CredentialsFile};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Send events: INGEST, INGEST_JSON, the Segment HTTP API.
    Ingest,
    /// Decide for one customer: DECIDE, FEEDBACK, PROFILE.
    Decide,
    /// Read aggregates: segments and STATS.
    Read,
    /// Run the server: RELOAD, FORGET.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Decide, Role::Read, Role::Admin];
    /// The role names, for messages.
    pub const NAMES: &'static str = "ingest, decide, read, admin";

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Decide => "decide",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// The roles as a bit set (bit 0 ingest, 1 decide, 2 read, 3 admin).
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn names(self) -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|r| self.contains(*r))
            .map(Role::name)
            .collect()
    }
}

/// Someone the credentials file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Roles,
}

/// A secret as clients present it: `om_<id>_<secret>`, the id 8 hex digits naming the
/// hash to check, the secret 64 hex digits (256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    // Never print the secret, even by accident in a log line or a panic.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token {{ id: {:?}, secret: <hidden> }}", self.id)
    }
}

impl Token {
    fn generate() -> Token {
        Token {
            id: file::random_hex(4),
            secret: file::random_hex(32),
        }
    }

    /// Reads `om_<id>_<secret>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Token> {
        let rest = text.strip_prefix("om_")?;
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        (id.len() == 8 && hex(id) && !secret.is_empty() && secret.len() <= 128 && hex(secret)).then(
            || Token {
                id: id.to_string(),
                secret: secret.to_string(),
            },
        )
    }

    /// The text a client sends.
    pub fn text(&self) -> String {
        format!("om_{}_{}", self.id, self.secret)
    }
}

/// Why a presented secret was not taken. The messages say what to do and never echo
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credential: this server requires one (a token `om_…`, from `omnia credentials add`)"
    )]
    Missing,
    #[error("the credential is not an omnia token (`om_` followed by an id and a secret)")]
    Malformed,
    #[error("the credential was refused: unknown, revoked, or mistyped")]
    Refused,
}

/// The secrets of one credentials file, ready to check, and what was verified.
pub struct Authenticator {
    /// By secret id: the principal's index and the argon2 PHC string.
    secrets: HashMap<String, (usize, String)>,
    principals: Vec<Arc<Principal>>,
    /// Keyed MACs of tokens verified against their hash, by secret id.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    mac_key: [u8; 32],
    /// Where the file was read from, for messages.
    pub source: std::path::PathBuf,
}

type Blake2bMac256 = blake2::Blake2bMac<blake2::digest::consts::U32>;

impl Authenticator {
    pub fn new(credentials: &CredentialsFile, source: std::path::PathBuf) -> Authenticator {
        let mut principals = Vec::new();
        let mut secrets = HashMap::new();
        for entry in &credentials.principals {
            let roles = file::parse_roles(&entry.roles).unwrap_or(Roles::NONE);
            let index = principals.len();
            principals.push(Arc::new(Principal {
                name: entry.name.clone(),
                roles,
            }));
            for s in &entry.secrets {
                secrets.insert(s.id.clone(), (index, s.hash.clone()));
            }
        }
        let mut mac_key = [0u8; 32];
        argon2::password_hash::rand_core::RngCore::fill_bytes(
            &mut argon2::password_hash::rand_core::OsRng,
            &mut mac_key,
        );
        Authenticator {
            secrets,
            principals,
            verified: Mutex::new(HashMap::new()),
            mac_key,
            source,
        }
    }

    /// Loads a credentials file.
    pub fn load(path: &std::path::Path) -> Result<Authenticator, CredentialsError> {
        let file = CredentialsFile::load(path)?;
        Ok(Authenticator::new(&file, path.to_path_buf()))
    }

    /// How many principals the file names.
    pub fn principals(&self) -> usize {
        self.principals.len()
    }

    fn mac(&self, token: &str) -> [u8; 32] {
        let mut mac = <Blake2bMac256 as KeyInit>::new_from_slice(&self.mac_key)
            .expect("a 32-byte key fits BLAKE2b");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a presented credential. Fast for a token verified before; otherwise one
    /// argon2 verification (about 20 ms of CPU: call it off the request threads).
    pub fn authenticate(&self, presented: &str) -> Result<Arc<Principal>, AuthError> {
        let token = Token::parse(presented.trim()).ok_or(AuthError::Malformed)?;
        let (index, hash) = self.secrets.get(&token.id).ok_or(AuthError::Refused)?;
        let principal = self.principals[*index].clone();
        let text = token.text();
        let mac = self.mac(&text);
        if let Some(known) = self.verified.lock().get(&token.id) {
            if bool::from(known.ct_eq(&mac)) {
                return Ok(principal);
            }
        }
        let hash = PasswordHash::new(hash).map_err(|_| AuthError::Refused)?;
        file::hasher()
            .verify_password(token.secret.as_bytes(), &hash)
            .map_err(|_| AuthError::Refused)?;
        self.verified.lock().insert(token.id, mac);
        Ok(principal)
    }

    /// Whether `presented` was verified before, so that [`authenticate`](Self::authenticate)
    /// answers at once (no argon2): callers may then check it on a request thread.
    pub fn is_known(&self, presented: &str) -> bool {
        let Some(token) = Token::parse(presented.trim()) else {
            return true; // refused at once, without a hash
        };
        if !self.secrets.contains_key(&token.id) {
            return true;
        }
        let mac = self.mac(&token.text());
        self.verified
            .lock()
            .get(&token.id)
            .is_some_and(|known| bool::from(known.ct_eq(&mac)))
    }

    /// The principal that holds secret `id` in this file, if it still does: how a
    /// connection authenticated under an earlier file learns its roles now, or that its
    /// secret was revoked.
    pub fn holder(&self, id: &str) -> Option<Arc<Principal>> {
        self.secrets
            .get(id)
            .map(|(index, _)| self.principals[*index].clone())
    }
}

/// Slows down failed authentications per client address: the first `free` failures
/// within [`Throttle::WINDOW`] cost nothing ([`Throttle::FREE`] by default); after that
/// each attempt from the address waits for its turn, the turns spaced twice as far apart
/// with every failure, from [`Throttle::FIRST_DELAY`] up to [`Throttle::MAX_DELAY`]. A
/// success clears the address.
pub struct Throttle {
    addresses: Mutex<HashMap<IpAddr, Failures>>,
    free: u32,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(Throttle::FREE)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next attempt from this address may be checked.
    next_turn: Instant,
}

impl Throttle {
    pub const FREE: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(60);
    pub const FIRST_DELAY: Duration = Duration::from_millis(100);
    pub const MAX_DELAY: Duration = Duration::from_secs(10);
    /// Addresses remembered at most; past it, the quietest are forgotten.
    const MAX_ADDRESSES: usize = 100_000;

    /// A throttle that lets `free` failures per address and minute pass unslowed.
    pub fn new(free: u32) -> Throttle {
        Throttle {
            addresses: Mutex::new(HashMap::new()),
            free,
        }
    }

    /// How long an attempt from `addr` arriving at `now` must wait before it is checked.
    pub fn wait(&self, addr: IpAddr, now: Instant) -> Duration {
        let mut addresses = self.addresses.lock();
        let Some(f) = addresses.get_mut(&addr) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(f.last) > Self::WINDOW {
            addresses.remove(&addr);
            return Duration::ZERO;
        }
        if f.count < self.free {
            return Duration::ZERO;
        }
        let turn = f.next_turn.max(now);
        f.next_turn = turn + self.delay(f.count);
        turn - now
    }

    fn delay(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(self.free).min(16);
        (Self::FIRST_DELAY * 2u32.pow(doublings)).min(Self::MAX_DELAY)
    }

    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let mut addresses = self.addresses.lock();
        if addresses.len() >= Self::MAX_ADDRESSES && !addresses.contains_key(&addr) {
            addresses.retain(|_, f| now.saturating_duration_since(f.last) <= Self::WINDOW);
            if addresses.len() >= Self::MAX_ADDRESSES {
                addresses.clear();
            }
        }
        let f = addresses.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
            next_turn: now,
        });
        f.count += 1;
        f.last = now;
    }

    pub fn succeeded(&self, addr: IpAddr) {
        self.addresses.lock().remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(roles: &[&str]) -> (Authenticator, Token) {
        let mut file = CredentialsFile::default();
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let token = file.add("shop", &roles, "2026-12-03T10:00:00Z").unwrap();
        (Authenticator::new(&file, "c.toml".into()), token)
    }

    #[test]
    fn a_token_is_verified_once_then_known_and_a_wrong_one_refused() {
        let (auth, token) = authenticator(&["ingest", "read"]);
        assert!(!auth.is_known(&token.text()));
        let principal = auth.authenticate(&token.text()).unwrap();
        assert_eq!(principal.name, "shop");
        assert_eq!(principal.roles.names(), ["ingest", "read"]);
        assert!(auth.is_known(&token.text()));
        assert_eq!(auth.authenticate(&token.text()).unwrap(), principal);
        // The same id with another secret: refused, and not taken for the known one.
        let mut wrong = token.clone();
        wrong.secret = "0".repeat(64);
        assert!(!auth.is_known(&wrong.text()));
        assert_eq!(auth.authenticate(&wrong.text()), Err(AuthError::Refused));
        assert_eq!(auth.authenticate("om_00000000_ab"), Err(AuthError::Refused));
        assert_eq!(auth.authenticate("write-key"), Err(AuthError::Malformed));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn failures_past_the_free_ones_wait_longer_each_time_and_success_clears() {
        let throttle = Throttle::default();
        let addr: IpAddr = "10.0.0.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..Throttle::FREE {
            assert_eq!(throttle.wait(addr, t0), Duration::ZERO);
            throttle.failed(addr, t0);
        }
        // Turns: now, then 100 ms later, then 100 ms after that (the count is still 5).
        assert_eq!(throttle.wait(addr, t0), Duration::ZERO);
        assert_eq!(throttle.wait(addr, t0), Duration::from_millis(100));
        throttle.failed(addr, t0);
        assert_eq!(throttle.wait(addr, t0), Duration::from_millis(200));
        // Another address is not slowed; a quiet minute forgives.
        assert_eq!(
            throttle.wait("10.0.0.8".parse().unwrap(), t0),
            Duration::ZERO
        );
        assert_eq!(
            throttle.wait(addr, t0 + Duration::from_secs(61)),
            Duration::ZERO
        );
        for _ in 0..10 {
            throttle.failed(addr, t0);
        }
        throttle.succeeded(addr);
        assert_eq!(throttle.wait(addr, t0), Duration::ZERO);
    }
}
