//! The credentials file: who may connect, with which secrets, in which roles.
//!
//! ```toml
//! # omnia credentials (docs/security.md)
//! [[principal]]
//! name = "web-tracker"
//! roles = ["ingest"]
//!
//! [[principal.secret]]
//! id = "3f9a1c0d"
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! added = "2026-12-03T10:00:00Z"
//! ```
//!
//! A secret is stored only as its argon2id hash (PHC string); the secret itself is shown
//! once, by `omnia credentials add`, as a token `om_<id>_<64 hex digits>`. The id is not
//! secret: it names which hash to check, so a token costs one hash verification, not
//! one per principal. A principal may hold several secrets, so a key is rotated by
//! adding a new one, moving its clients over, and revoking the old.
//!
//! Invariants of a file that [`CredentialsFile::parse`] accepted: names are unique and
//! made of `[a-z0-9_.-]`, every principal has at least one role and one secret, secret
//! ids are unique across the file, and every hash is a valid argon2 PHC string.

use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use serde::{Deserialize, Serialize};

use super::{Role, Roles, Token};

/// The file as written: principals in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    pub name: String,
    pub roles: Vec<String>,
    #[serde(default, rename = "secret")]
    pub secrets: Vec<SecretEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    pub id: String,
    pub hash: String,
    /// When it was added (RFC 3339), for people rotating keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<String>,
}

/// Why a credentials file cannot be used: the file, and what is wrong where.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the credentials file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credentials file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the credentials file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Argon2id with the parameters OWASP recommends as a minimum (19 MiB, 2 passes, 1
/// lane): about 20 ms per check here, which a server pays once per secret it sees (it
/// remembers what it verified) and an attacker pays for every guess.
pub(super) fn hasher() -> argon2::Argon2<'static> {
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

impl CredentialsFile {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<CredentialsFile, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        CredentialsFile::parse(path, &text)
    }

    /// Reads a file if it exists; an empty one if it does not (for `credentials add`).
    pub fn load_or_empty(path: &Path) -> Result<CredentialsFile, CredentialsError> {
        if path.exists() {
            CredentialsFile::load(path)
        } else {
            Ok(CredentialsFile::default())
        }
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<CredentialsFile, CredentialsError> {
        let file: CredentialsFile = toml::from_str(text).map_err(|e| CredentialsError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        file.validate()
            .map_err(|message| CredentialsError::Invalid {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(file)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for (i, p) in self.principals.iter().enumerate() {
            let at = format!("principal {} (`{}`)", i + 1, p.name);
            check_name(&p.name).map_err(|e| format!("{at}: {e}"))?;
            if !names.insert(p.name.as_str()) {
                return Err(format!("{at}: the name is used twice; names are unique"));
            }
            if p.roles.is_empty() {
                return Err(format!(
                    "{at}: no roles; give it one or more of {}",
                    Role::NAMES
                ));
            }
            parse_roles(&p.roles).map_err(|e| format!("{at}: {e}"))?;
            if p.secrets.is_empty() {
                return Err(format!(
                    "{at}: no secret; add one with `omnia credentials add {}`",
                    p.name
                ));
            }
            for s in &p.secrets {
                if !is_id(&s.id) {
                    return Err(format!(
                        "{at}: secret id `{}` is not 8 lowercase hex digits",
                        s.id
                    ));
                }
                if !ids.insert(s.id.as_str()) {
                    return Err(format!(
                        "{at}: secret id `{}` is used twice; ids are unique in the file",
                        s.id
                    ));
                }
                PasswordHash::new(&s.hash).map_err(|e| {
                    format!(
                        "{at}: the hash of secret `{}` is not an argon2 PHC string ({e})",
                        s.id
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The file's text, as [`parse`](Self::parse) reads it.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("credentials serialise");
        format!("# omnia credentials (docs/security.md). Secrets are stored only as argon2id hashes;\n# `omnia credentials add NAME --role ROLE` prints a new one once.\n\n{body}")
    }

    /// Writes the file (mode 0600 on Unix: it holds no secret, but its hashes are what a
    /// guesser would attack offline), replacing it whole.
    pub fn save(&self, path: &Path) -> Result<(), CredentialsError> {
        let write = |e| CredentialsError::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(write)?;
            file.write_all(self.to_text().as_bytes()).map_err(write)?;
            file.sync_all().map_err(write)?;
        }
        std::fs::rename(&tmp, path).map_err(write)
    }

    /// Adds a secret to principal `name`, creating the principal with `roles` if it does
    /// not exist (an existing principal keeps its roles unless `roles` is not empty).
    /// Returns the token, which is nowhere else: show it once.
    pub fn add(&mut self, name: &str, roles: &[String], now: &str) -> Result<Token, String> {
        check_name(name)?;
        if !roles.is_empty() {
            parse_roles(roles)?;
        }
        let token = loop {
            let token = Token::generate();
            let taken = self
                .principals
                .iter()
                .any(|p| p.secrets.iter().any(|s| s.id == token.id));
            if !taken {
                break token;
            }
        };
        let salt = SaltString::generate(&mut OsRng);
        let hash = hasher()
            .hash_password(token.secret.as_bytes(), &salt)
            .map_err(|e| format!("cannot hash the secret: {e}"))?
            .to_string();
        let secret = SecretEntry {
            id: token.id.clone(),
            hash,
            added: Some(now.to_string()),
        };
        match self.principals.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                if !roles.is_empty() {
                    p.roles = roles.to_vec();
                }
                p.secrets.push(secret);
            }
            None => {
                if roles.is_empty() {
                    return Err(format!(
                        "`{name}` is a new principal: give it roles with --role ({})",
                        Role::NAMES
                    ));
                }
                self.principals.push(PrincipalEntry {
                    name: name.to_string(),
                    roles: roles.to_vec(),
                    secrets: vec![secret],
                });
            }
        }
        Ok(token)
    }

    /// Removes secret `id` of principal `name`; the principal goes with its last secret.
    pub fn revoke(&mut self, name: &str, id: &str) -> Result<(), String> {
        let Some(at) = self.principals.iter().position(|p| p.name == name) else {
            return Err(format!("no principal `{name}` in the file"));
        };
        let p = &mut self.principals[at];
        let before = p.secrets.len();
        p.secrets.retain(|s| s.id != id);
        if p.secrets.len() == before {
            let ids: Vec<&str> = p.secrets.iter().map(|s| s.id.as_str()).collect();
            return Err(format!(
                "`{name}` has no secret `{id}`; its secrets are {}",
                ids.join(", ")
            ));
        }
        if p.secrets.is_empty() {
            self.principals.remove(at);
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "principal name `{name}`: 1 to 64 of a-z, 0-9, `_`, `.` and `-`"
        ))
    }
}

fn is_id(id: &str) -> bool {
    id.len() == 8
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn parse_roles(roles: &[String]) -> Result<Roles, String> {
    let mut set = Roles::NONE;
    for role in roles {
        match Role::from_name(role) {
            Some(role) => set = set.with(role),
            None => {
                return Err(format!(
                    "unknown role `{role}`: the roles are {}",
                    Role::NAMES
                ))
            }
        }
    }
    Ok(set)
}

/// 32 random bytes from the operating system, as 64 hex digits.
pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("credentials.toml")
    }

    #[test]
    fn add_writes_a_hash_that_parses_back_and_never_the_secret() {
        let mut file = CredentialsFile::default();
        let token = file
            .add("web-tracker", &["ingest".into()], "2026-12-03T10:00:00Z")
            .unwrap();
        let text = file.to_text();
        assert!(!text.contains(&token.secret), "{text}");
        assert!(text.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{text}");
        let back = CredentialsFile::parse(path(), &text).unwrap();
        assert_eq!(back, file);
        // A second secret for rotation, then the first revoked.
        let second = file
            .add("web-tracker", &[], "2026-12-04T10:00:00Z")
            .unwrap();
        assert_eq!(file.principals[0].secrets.len(), 2);
        file.revoke("web-tracker", &token.id).unwrap();
        assert_eq!(file.principals[0].secrets[0].id, second.id);
        file.revoke("web-tracker", &second.id).unwrap();
        assert!(file.principals.is_empty());
    }

    #[test]
    fn bad_files_are_refused_with_the_principal_and_the_reason() {
        let err = |text: &str| {
            CredentialsFile::parse(path(), text)
                .unwrap_err()
                .to_string()
        };
        assert!(err("[[principal]]\nname = 1").contains("not valid TOML"));
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqo";
        let one = |name: &str, roles: &str, id: &str, hash: &str| {
            format!("[[principal]]\nname = \"{name}\"\nroles = [{roles}]\n[[principal.secret]]\nid = \"{id}\"\nhash = \"{hash}\"\n")
        };
        assert_eq!(
            err(&one("Web", "\"ingest\"", "0000000a", hash)),
            "the credentials file credentials.toml: principal 1 (`Web`): principal name `Web`: 1 to 64 of a-z, 0-9, `_`, `.` and `-`"
        );
        assert!(err(&one("w", "\"root\"", "0000000a", hash))
            .ends_with("unknown role `root`: the roles are ingest, decide, read, admin"));
        assert!(err(&one("w", "", "0000000a", hash)).contains("no roles"));
        assert!(err(&one("w", "\"read\"", "XYZ", hash)).contains("is not 8 lowercase hex digits"));
        assert!(
            err(&one("w", "\"read\"", "0000000a", "plain")).contains("is not an argon2 PHC string")
        );
        let twice =
            one("w", "\"read\"", "0000000a", hash) + &one("v", "\"read\"", "0000000a", hash);
        assert!(err(&twice).contains("secret id `0000000a` is used twice"));
        assert!(err("[[principal]]\nname = \"w\"\nroles = [\"read\"]\n")
            .contains("no secret; add one with `omnia credentials add w`"));
    }
}
