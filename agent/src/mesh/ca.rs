//! The trust domain's certificate authority: `rampart ca init` creates its root (a self-signed
//! ECDSA P-256 certificate and key, written as `ca.crt` and `ca.key` in a directory), and the
//! agent loads it to issue short-lived X.509-SVIDs to the workloads of its node.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use time::OffsetDateTime;

use crate::spiffe::SpiffeId;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
/// An intermediate of the user's PKI: its certificate (then those above it) and its key.
pub const EXTERNAL_CERT_FILE: &str = "tls.crt";
pub const EXTERNAL_KEY_FILE: &str = "tls.key";

/// Certificates are valid from this long before they are issued (clocks between nodes drift).
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: already exists (pass --force to replace the trust domain's root)")]
    Exists { path: PathBuf },
    #[error("{path}: not a PEM certificate or key usable as the CA: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("trust domain {0:?} is not valid: {1}")]
    TrustDomain(String, crate::spiffe::SpiffeError),
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
    #[error("not a valid certificate signing request: {0}")]
    Request(String),
    #[error("the new signing certificate is of trust domain {new}, this CA's is {current}")]
    OtherTrustDomain { new: String, current: String },
}

/// A CA that can issue: its certificate (DER and PEM) and the key that signs.
pub struct Ca {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// The certificates above the signing one, up to (not including) the root: sent after it
    /// in every chain it issues.
    chain: Vec<CertificateDer<'static>>,
    /// The roots issued certificates chain to (the signing certificate itself when it is one).
    roots: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// One issued X.509-SVID with its private key.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    pub spiffe_id: SpiffeId,
    /// The leaf first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 DER.
    key_der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When it was issued (`not_before` is set a little earlier, for clock skew).
    pub issued_at: SystemTime,
}

impl WorkloadCert {
    /// A certificate issued elsewhere: its chain (leaf first) and the PKCS#8 DER of its key.
    pub fn new(
        spiffe_id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
        not_before: SystemTime,
        not_after: SystemTime,
        issued_at: SystemTime,
    ) -> WorkloadCert {
        WorkloadCert {
            spiffe_id,
            chain,
            key_der,
            not_before,
            not_after,
            issued_at,
        }
    }

    /// When to replace it: half-way through the lifetime it was issued for.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + life / 2
    }

    /// The private key, PKCS#8 DER (handed to the next agent in a hot restart).
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn offset(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| CaError::Validity(Duration::ZERO))?
        .as_secs();
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_err(|_| CaError::Validity(Duration::from_secs(secs)))
}

/// The trust domain's roots without a key (`ca.crt`, one or more PEM certificates): what an
/// agent that gets its certificates from the CA service trusts. Rampart's own root names the
/// trust domain in its URI SAN; a root of the user's PKI (cert-manager's or Vault's `ca.crt`)
/// may name none.
#[derive(Debug, Clone)]
pub struct Root {
    pub trust_domain: String,
    pub certs: Vec<CertificateDer<'static>>,
    /// The file's text, to notice a rotation.
    pub pem: String,
}

impl Root {
    /// Reads `ca.crt` from `dir`. A certificate that names a trust domain must name
    /// `trust_domain`.
    pub fn read(dir: &Path, trust_domain: &str) -> Result<Root, CaError> {
        let (path, pem, certs) = read_certificates(&dir.join(CA_CERT_FILE))?;
        for cert in &certs {
            check_trust_domain(&path, cert, trust_domain)?;
        }
        Ok(Root {
            trust_domain: trust_domain.to_owned(),
            certs,
            pem,
        })
    }

    /// Reads `ca.crt` from `dir`; the trust domain is its first certificate's URI SAN (a root
    /// of `rampart ca init`).
    pub fn read_own(dir: &Path) -> Result<Root, CaError> {
        let (path, pem, certs) = read_certificates(&dir.join(CA_CERT_FILE))?;
        let td = trust_domain_of(&path, &certs[0])?.ok_or_else(|| CaError::Invalid {
            path: path.clone(),
            reason: "it names no trust domain (a URI SAN spiffe://<trust domain>)".into(),
        })?;
        Ok(Root {
            trust_domain: td,
            certs,
            pem,
        })
    }
}

impl Root {
    /// `self` if its file differs from `current`'s (a rotation), else `None`.
    pub fn into_changed(self, current: &Root) -> Option<Root> {
        (self.pem != current.pem).then_some(self)
    }
}

/// The file at `path`: its text and every PEM certificate in it (at least one).
type CertificateFile = (PathBuf, String, Vec<CertificateDer<'static>>);

fn read_certificates(path: &Path) -> Result<CertificateFile, CaError> {
    let pem = std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let certs = pem_certificates(path, &pem)?;
    Ok((path.to_owned(), pem, certs))
}

/// Every PEM certificate of `text` (at least one).
fn pem_certificates(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls_pki_types::pem::PemObject as _;
    let invalid = |reason: String| CaError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate".into()));
    }
    Ok(certs)
}

/// The trust domain a CA certificate names in a URI SAN `spiffe://<td>`, if it names one.
fn trust_domain_of(path: &Path, cert: &CertificateDer<'_>) -> Result<Option<String>, CaError> {
    match SpiffeId::from_certificate(cert) {
        Ok(id) if id.path().is_empty() => Ok(Some(id.trust_domain().to_owned())),
        Ok(id) => Err(CaError::Invalid {
            path: path.to_owned(),
            reason: format!("its URI SAN {id} is not a trust domain's ID"),
        }),
        Err(_) => Ok(None),
    }
}

fn check_trust_domain(
    path: &Path,
    cert: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<(), CaError> {
    match trust_domain_of(path, cert)? {
        Some(td) if td != trust_domain => Err(CaError::Invalid {
            path: path.to_owned(),
            reason: format!("it is for trust domain {td:?}, not {trust_domain:?}"),
        }),
        _ => Ok(()),
    }
}

impl Ca {
    /// A new self-signed root for `trust_domain`, valid for `validity` from `now`.
    pub fn generate(
        trust_domain: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Ca, CaError> {
        let td_id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| CaError::TrustDomain(trust_domain.to_owned(), e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart");
        dn.push(
            DnType::CommonName,
            format!("Rampart root CA {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            td_id.as_str().try_into().map_err(CaError::Generate)?,
        )];
        params.not_before = offset(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = offset(
            now.checked_add(validity)
                .ok_or(CaError::Validity(validity))?,
        )?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca {
            trust_domain: trust_domain.to_owned(),
            roots: vec![cert_der.clone()],
            cert_der,
            cert_pem,
            chain: Vec::new(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`; refuses to replace them unless
    /// `force`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        for path in [&cert_path, &key_path] {
            if path.exists() && !force {
                return Err(CaError::Exists { path: path.clone() });
            }
        }
        write_private(&key_path, self.issuer.key().serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        std::fs::write(&cert_path, &self.cert_pem).map_err(io(&cert_path))?;
        Ok(())
    }

    /// Loads `ca.crt` and `ca.key` from `dir`. The trust domain is the certificate's URI SAN.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let root = Root::read_own(dir)?;
        let issuer = issuer_of(dir, CA_KEY_FILE, &root.certs[0])?;
        Ok(Ca {
            trust_domain: root.trust_domain,
            cert_der: root.certs[0].clone(),
            cert_pem: root.pem,
            chain: Vec::new(),
            roots: root.certs,
            issuer,
        })
    }

    /// The signing CA of `dir`: for `trust_domain` ([`Ca::load_for`]), or for the one `ca.crt`
    /// names ([`Ca::load`]).
    pub fn load_signing(dir: &Path, trust_domain: Option<&str>) -> Result<Ca, CaError> {
        match trust_domain {
            Some(td) => Ca::load_for(dir, td),
            None => Ca::load(dir),
        }
    }

    /// Loads the CA of `dir` for `trust_domain`: an intermediate of the user's PKI if `dir` has
    /// `tls.crt` (the intermediate, then the certificates above it), `tls.key` and `ca.crt`
    /// (the roots): the layout of cert-manager's and Vault's issuing certificates, so the
    /// trust domain chains to the user's root; else `rampart ca init`'s root ([`Ca::load`]).
    pub fn load_for(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let cert_path = dir.join(EXTERNAL_CERT_FILE);
        if !cert_path.exists() {
            let ca = Ca::load(dir)?;
            if ca.trust_domain != trust_domain {
                return Err(CaError::Invalid {
                    path: dir.join(CA_CERT_FILE),
                    reason: format!(
                        "it is for trust domain {:?}, not {trust_domain:?}",
                        ca.trust_domain
                    ),
                });
            }
            return Ok(ca);
        }
        let (_, pem, mut chain) = read_certificates(&cert_path)?;
        let signing = chain.remove(0);
        check_trust_domain(&cert_path, &signing, trust_domain)?;
        let roots = Root::read(dir, trust_domain)?;
        let issuer = issuer_of(dir, EXTERNAL_KEY_FILE, &signing)?;
        // A root the user bundled into tls.crt is sent by nobody: peers have it.
        chain.retain(|c| !roots.certs.contains(c));
        Ok(Ca {
            trust_domain: trust_domain.to_owned(),
            cert_der: signing,
            cert_pem: pem,
            chain,
            roots: roots.certs,
            issuer,
        })
    }

    /// The roots the certificates it issues chain to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues an X.509-SVID for `id`, valid for `ttl` from `now`: ECDSA P-256, the SPIFFE ID as
    /// its only URI SAN, usable for TLS client and server authentication, not a CA.
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<WorkloadCert, CaError> {
        let key = KeyPair::generate()?;
        let (chain, not_before, not_after) = self.sign(id, &key, ttl, now)?;
        Ok(WorkloadCert {
            spiffe_id: id.clone(),
            chain,
            key_der: key.serialize_der(),
            not_before,
            not_after,
            issued_at: now,
        })
    }

    /// Signs the public key of a certificate signing request (PKCS#10, DER; its signature is
    /// checked) as an X.509-SVID for `id`, whatever names the request asks for: the chain, leaf
    /// first. The key never leaves the requester.
    pub fn sign_request(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| CaError::Request(e.to_string()))?;
        Ok(self.sign(id, &request.public_key, ttl, now)?.0)
    }

    /// The SVID profile, signed over `key`: (chain, not before, not after).
    fn sign(
        &self,
        id: &SpiffeId,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, SystemTime, SystemTime), CaError> {
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = now.checked_add(ttl).ok_or(CaError::Validity(ttl))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Rampart");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(
            id.as_str().try_into().map_err(CaError::Generate)?,
        )];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok((
            [cert.der().clone(), self.cert_der.clone()]
                .into_iter()
                .chain(self.chain.iter().cloned())
                .collect(),
            not_before,
            not_after,
        ))
    }
}

/// The issuer signing with `dir/<key_file>` as `cert`.
fn issuer_of(
    dir: &Path,
    key_file: &str,
    cert: &CertificateDer<'_>,
) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key_path = dir.join(key_file);
    let key_pem = std::fs::read_to_string(&key_path).map_err(|source| CaError::Io {
        path: key_path.clone(),
        source,
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    // rcgen signs with whatever key it is given: a key of another certificate (a pair caught
    // half-replaced, a wrong Secret) would issue certificates that verify under nothing.
    let matches = x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, parsed)| {
        parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    });
    if !matches {
        return Err(CaError::Invalid {
            path: key_path,
            reason: "not the key of the CA certificate".to_owned(),
        });
    }
    Issuer::from_ca_cert_der(cert, key).map_err(|e| CaError::Invalid {
        path: key_path,
        reason: format!("not the key of the CA certificate, or not usable: {e}"),
    })
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn init_writes_a_root_that_loads_and_issues_svids() {
        let dir = std::env::temp_dir().join(format!("rampart-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = SystemTime::now();
        let ca = Ca::generate("example.org", 365 * DAY, now).expect("generate");
        ca.write(&dir, false).expect("write");
        assert!(matches!(ca.write(&dir, false), Err(CaError::Exists { .. })));
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .expect("key")
            .permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600);

        let loaded = Ca::load(&dir).expect("load");
        assert_eq!(loaded.trust_domain(), "example.org");
        let id = SpiffeId::workload("example.org", "shop", "backend").expect("id");
        let svid = loaded
            .issue(&id, Duration::from_secs(3600), now)
            .expect("issue");
        assert_eq!(svid.chain.len(), 2);
        assert_eq!(SpiffeId::from_certificate(&svid.chain[0]), Ok(id));
        let life = svid
            .not_after
            .duration_since(svid.not_before)
            .expect("life");
        assert_eq!(life, Duration::from_secs(3600) + BACKDATE);
        assert_eq!(svid.renew_at(), now + Duration::from_secs(1800));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_names_the_file_that_is_wrong() {
        let dir = std::env::temp_dir().join(format!("rampart-ca-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(CA_CERT_FILE), "not pem").expect("write");
        std::fs::write(dir.join(CA_KEY_FILE), "not pem").expect("write");
        let err = Ca::load(&dir).expect_err("garbage").to_string();
        assert!(err.contains("ca.crt"), "{err}");
        let good = Ca::generate("example.org", DAY, SystemTime::now()).expect("generate");
        std::fs::write(dir.join(CA_CERT_FILE), good.cert_pem()).expect("cert");
        let err = Ca::load(&dir).expect_err("garbage").to_string();
        assert!(err.contains("ca.key"), "{err}");
        // The certificate alone is what an agent of the CA service trusts.
        let root = Root::read_own(&dir).expect("ca.crt alone");
        assert_eq!(root.trust_domain, "example.org");
        assert_eq!(root.certs, [good.cert_der().clone()]);
        assert!(
            Root::read(&dir, "other.org").is_err(),
            "another trust domain's root"
        );
        assert!(Ca::load(&dir.join("missing")).is_err());
        // Another CA's key beside the certificate (a pair caught half-replaced).
        let other = Ca::generate("example.org", Duration::from_secs(3600), SystemTime::now())
            .expect("other");
        let other_dir = dir.join("other");
        other.write(&other_dir, false).expect("write other");
        std::fs::copy(other_dir.join(CA_KEY_FILE), dir.join(CA_KEY_FILE)).expect("key");
        let err = Ca::load(&dir)
            .expect_err("a key of another certificate")
            .to_string();
        assert!(err.contains("not the key of the CA certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
