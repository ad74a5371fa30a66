//! htpasswd files (Apache's format: one `user:hash` per line, `#` comments), with only the
//! schemes that still cost an attacker something per guess: bcrypt (`$2a$`, `$2b$`, `$2y$`;
//! `htpasswd -B`) and SHA-crypt (`$5$`, `$6$`; `mkpasswd -m sha-512`). Apache MD5 (`$apr1$`),
//! MD5-crypt (`$1$`), `{SHA}`, DES crypt and plain text are refused at the line that holds them.

use std::collections::HashMap;

/// bcrypt costs above this make one check take seconds of CPU: a file that asks for them
/// would let every wrong guess cost the node that much.
pub const MAX_BCRYPT_COST: u32 = 14;
/// SHA-crypt rounds above this (the default is 5,000) cost as much.
pub const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;
/// Users per file.
pub const MAX_USERS: usize = 100_000;

/// How a stored hash is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bcrypt { cost: u32 },
    Sha256Crypt { rounds: u32 },
    Sha512Crypt { rounds: u32 },
}

/// One user's stored hash (never printed).
#[derive(Clone)]
pub struct StoredHash {
    pub scheme: Scheme,
    hash: String,
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredHash({:?})", self.scheme)
    }
}

impl StoredHash {
    /// Whether `password` is the one this hash was made from (constant time in the hash
    /// comparison; the scheme's cost dominates).
    pub fn verify(&self, password: &str) -> bool {
        match self.scheme {
            Scheme::Bcrypt { .. } => bcrypt::verify(password, &self.hash).unwrap_or(false),
            Scheme::Sha256Crypt { .. } => sha_crypt::sha256_check(password, &self.hash).is_ok(),
            Scheme::Sha512Crypt { .. } => sha_crypt::sha512_check(password, &self.hash).is_ok(),
        }
    }
}

/// A line that cannot be used, by its 1-based number (the hash itself is never echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {message}", user.as_ref().map(|u| format!(" (user {u})")).unwrap_or_default())]
pub struct LineError {
    pub line: usize,
    pub user: Option<String>,
    pub message: String,
}

/// The users of one htpasswd file.
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, StoredHash>,
    /// A hash of the costliest scheme in the file, checked for names it does not hold, so a
    /// wrong user name takes as long to refuse as a wrong password.
    decoy: Option<StoredHash>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Htpasswd({} users)", self.users.len())
    }
}

impl Htpasswd {
    /// Reads a whole file; any unusable line refuses it (every such line is reported).
    pub fn parse(text: &str) -> Result<Htpasswd, Vec<LineError>> {
        let mut users: HashMap<String, StoredHash> = HashMap::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let error = |user: Option<&str>, message: String| LineError {
                line,
                user: user.map(str::to_owned),
                message,
            };
            let Some((user, hash)) = trimmed.split_once(':') else {
                errors.push(error(None, "not `user:hash`".into()));
                continue;
            };
            if user.is_empty() || user.chars().any(|c| c.is_control()) {
                errors.push(error(
                    None,
                    "the user name is empty or holds control characters".into(),
                ));
                continue;
            }
            match scheme_of(hash) {
                Ok(scheme) => {
                    let stored = StoredHash {
                        scheme,
                        hash: hash.to_owned(),
                    };
                    if users.insert(user.to_owned(), stored).is_some() {
                        errors.push(error(Some(user), "the user is listed twice".into()));
                    }
                }
                Err(message) => errors.push(error(Some(user), message)),
            }
        }
        if users.len() > MAX_USERS {
            errors.push(LineError {
                line: 0,
                user: None,
                message: format!("{} users, more than {MAX_USERS}", users.len()),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let decoy = users
            .values()
            .max_by_key(|h| cost_rank(h.scheme))
            .map(|h| decoy_for(h.scheme));
        Ok(Htpasswd { users, decoy })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` with `password` is in the file. A user the file does not hold costs a
    /// check too. CPU-bound (milliseconds): callers run it off their event loop.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(stored) => stored.verify(password),
            None => {
                if let Some(decoy) = &self.decoy {
                    let _ = decoy.verify(password);
                }
                false
            }
        }
    }
}

fn cost_rank(scheme: Scheme) -> u64 {
    match scheme {
        Scheme::Bcrypt { cost } => 1u64 << cost.min(31),
        Scheme::Sha256Crypt { rounds } | Scheme::Sha512Crypt { rounds } => u64::from(rounds) / 64,
    }
}

/// A hash in `scheme` of a random-looking fixed password (nobody's: it only burns the time).
fn decoy_for(scheme: Scheme) -> StoredHash {
    const DECOY_PASSWORD: &str = "rampart-decoy-never-a-password";
    let hash = match scheme {
        Scheme::Bcrypt { cost } => bcrypt::hash_with_salt(DECOY_PASSWORD, cost, [7u8; 16])
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .unwrap_or_default(),
        Scheme::Sha256Crypt { rounds } => sha_crypt::Sha256Params::new(rounds as usize)
            .ok()
            .and_then(|p| sha_crypt::sha256_simple(DECOY_PASSWORD, &p).ok())
            .unwrap_or_default(),
        Scheme::Sha512Crypt { rounds } => sha_crypt::Sha512Params::new(rounds as usize)
            .ok()
            .and_then(|p| sha_crypt::sha512_simple(DECOY_PASSWORD, &p).ok())
            .unwrap_or_default(),
    };
    StoredHash { scheme, hash }
}

/// The scheme of a stored hash, or why it is refused.
fn scheme_of(hash: &str) -> Result<Scheme, String> {
    const ADVICE: &str = "use bcrypt (`htpasswd -B`) or SHA-crypt (`mkpasswd -m sha-512`)";
    if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        let cost: u32 = rest
            .get(..2)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "a bcrypt hash without its cost".to_owned())?;
        if hash.len() != 60 || rest.as_bytes().get(2) != Some(&b'$') {
            return Err("a malformed bcrypt hash (60 characters: $2y$NN$ and 53 more)".into());
        }
        if !(4..=MAX_BCRYPT_COST).contains(&cost) {
            return Err(format!(
                "bcrypt cost {cost}: 4 to {MAX_BCRYPT_COST} (each check above that takes seconds)"
            ));
        }
        return Ok(Scheme::Bcrypt { cost });
    }
    for (prefix, sha512) in [("$5$", false), ("$6$", true)] {
        let Some(rest) = hash.strip_prefix(prefix) else {
            continue;
        };
        let rounds = match rest.strip_prefix("rounds=") {
            None => 5000,
            Some(r) => r
                .split('$')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| "SHA-crypt `rounds=` is not a number".to_owned())?,
        };
        if rounds > MAX_SHA_CRYPT_ROUNDS {
            return Err(format!(
                "SHA-crypt rounds {rounds}: at most {MAX_SHA_CRYPT_ROUNDS}"
            ));
        }
        let fields = rest.split('$').count();
        let expected = if rest.starts_with("rounds=") { 3 } else { 2 };
        let digest_len = rest.rsplit('$').next().map_or(0, str::len);
        if fields != expected || digest_len != if sha512 { 86 } else { 43 } {
            return Err("a malformed SHA-crypt hash".into());
        }
        let rounds = rounds.max(1000);
        return Ok(if sha512 {
            Scheme::Sha512Crypt { rounds }
        } else {
            Scheme::Sha256Crypt { rounds }
        });
    }
    let weak = if hash.starts_with("$apr1$") {
        "Apache MD5 (`$apr1$`)"
    } else if hash.starts_with("$1$") {
        "MD5-crypt (`$1$`)"
    } else if hash.starts_with("{SHA}") {
        "unsalted SHA-1 (`{SHA}`)"
    } else if hash.starts_with("$2x$") {
        "bcrypt `$2x$` (the broken implementation's marker)"
    } else if hash.starts_with('$') || hash.starts_with('{') {
        "an unknown scheme"
    } else if hash.len() == 13 {
        "DES crypt"
    } else {
        "plain text"
    };
    Err(format!("{weak} is refused: {ADVICE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by another implementation (glibc's libxcrypt, through Python's `crypt`), the
    // libraries `htpasswd -B` and `mkpasswd` use.
    fn file() -> String {
        [
            "# staff",
            "alice:$2b$05$abcdefghijklmnopqrstuuA0vov2GDneHB3.8.cv9UF9g.RdvScIW",
            "",
            "bob:$5$rounds=5000$saltstring$9JBjAeLRHX/Lm/1Njo98nbLiUsNRFEuARumLKkxJMm7",
            "carol:$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj.",
        ]
        .join("\n")
    }

    #[test]
    fn bcrypt_and_sha_crypt_users_verify_their_own_passwords_only() {
        let users = Htpasswd::parse(&file()).expect("parse");
        assert_eq!(users.len(), 3);
        assert!(users.verify("alice", "wonderland"));
        assert!(!users.verify("alice", "Wonderland"));
        assert!(users.verify("bob", "hunter2"));
        assert!(users.verify("carol", "hunter2"));
        assert!(!users.verify("carol", "wonderland"));
        assert!(!users.verify("mallory", "wonderland"));
        assert!(!users.verify("", ""));
    }

    #[test]
    fn a_known_apache_bcrypt_line_verifies() {
        // RFC-independent vector: bcrypt's own test hash for "hunter2"-style checks.
        let hash = bcrypt::hash_with_salt("s3cret", 4, [9u8; 16])
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .expect("bcrypt");
        let users = Htpasswd::parse(&format!("dave:{hash}")).expect("parse");
        assert!(users.verify("dave", "s3cret"));
    }

    #[test]
    fn weak_schemes_are_refused_at_their_lines() {
        let ok = sha_crypt::sha512_simple("pw", &sha_crypt::Sha512Params::new(5000).expect("p"))
            .expect("sha512");
        let text = format!(
            "ok:{ok}\nmd5:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\nmd5crypt:$1$abc$defghijklmnopqrstuvwx.\nsha:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ndes:rl0uE4PZmpMUA\nplain:password\n\nbroken\ncost:$2y$31$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyzABCDE\n"
        );
        let errors = Htpasswd::parse(&text).expect_err("weak");
        let lines: Vec<(usize, Option<&str>)> =
            errors.iter().map(|e| (e.line, e.user.as_deref())).collect();
        assert_eq!(
            lines,
            [
                (2, Some("md5")),
                (3, Some("md5crypt")),
                (4, Some("sha")),
                (5, Some("des")),
                (6, Some("plain")),
                (8, None),
                (9, Some("cost")),
            ]
        );
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("line 2 (user md5): Apache MD5"), "{text}");
        assert!(text.contains("bcrypt cost 31"), "{text}");
        assert!(
            !text.contains("HqJZimcK"),
            "hashes are never echoed: {text}"
        );
    }

    #[test]
    fn a_user_listed_twice_is_an_error() {
        let hash = bcrypt::hash_with_salt("x", 4, [2u8; 16])
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .expect("bcrypt");
        let errors = Htpasswd::parse(&format!("a:{hash}\na:{hash}\n")).expect_err("twice");
        assert_eq!(errors[0].line, 2);
    }
}
