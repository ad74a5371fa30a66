//! Chains that must fail do, at both ends of a real TLS 1.3 handshake (in memory): an expired or
//! not-yet-valid intermediate, an intermediate without CA rights or beyond its path length, a
//! leaf that is a CA, another CA's leaf, another trust domain's SVID; and a valid chain through an
//! intermediate passes (the control that shows the checks can pass).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::*;

const TD: &str = "example.org";
const HOUR: Duration = Duration::from_secs(3600);

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).expect("id")
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).expect("secs")).expect("time")
}

/// Makes a leaf for an identity (one way of going wrong).
type MakeLeaf<'a> = Box<dyn Fn(&SpiffeId) -> WorkloadCert + 'a>;

/// A certificate authority of the test: its certificate and the issuer that signs with it.
struct Authority {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// How a certificate of the test differs from a good one.
#[derive(Clone, Copy, Default)]
struct Shape {
    expired: bool,
    not_yet_valid: bool,
    /// `Some(n)`: a CA with path length `n`; `None` with `ca`: unconstrained.
    path_len: Option<u8>,
    ca: bool,
}

fn params(name: &str, san: &str, shape: Shape) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::URI(san.try_into().expect("uri"))];
    let now = SystemTime::now();
    let (from, to) = if shape.expired {
        (now - 2 * HOUR, now - HOUR)
    } else if shape.not_yet_valid {
        (now + HOUR, now + 2 * HOUR)
    } else {
        (now - HOUR, now + HOUR)
    };
    p.not_before = at(from);
    p.not_after = at(to);
    if shape.ca {
        p.is_ca = IsCa::Ca(match shape.path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    p.use_authority_key_identifier_extension = true;
    p
}

fn root() -> Authority {
    let key = KeyPair::generate().expect("key");
    let p = params(
        "root",
        &format!("spiffe://{TD}"),
        Shape {
            ca: true,
            ..Shape::default()
        },
    );
    let der = p.self_signed(&key).expect("root").der().clone();
    Authority {
        der,
        issuer: Issuer::new(p, key),
    }
}

/// A certificate of `shape` signed by `by`, usable as an issuer whatever its shape says (rcgen
/// signs with any key; the verifier is what must refuse).
fn authority(by: &Authority, name: &str, shape: Shape) -> Authority {
    let key = KeyPair::generate().expect("key");
    let p = params(name, &format!("spiffe://{TD}"), shape);
    let der = p.signed_by(&key, &by.issuer).expect("signed").der().clone();
    Authority {
        der,
        issuer: Issuer::new(p, key),
    }
}

/// A leaf for `spiffe` of `shape` signed by `by`, with `intermediates` after it in its chain.
fn leaf(
    by: &Authority,
    spiffe: &SpiffeId,
    shape: Shape,
    intermediates: &[&Authority],
) -> WorkloadCert {
    let key = KeyPair::generate().expect("key");
    let p = params("leaf", spiffe.as_str(), shape);
    let cert = p.signed_by(&key, &by.issuer).expect("leaf");
    let mut chain = vec![cert.der().clone()];
    chain.extend(intermediates.iter().map(|a| a.der.clone()));
    let now = SystemTime::now();
    WorkloadCert::new(
        spiffe.clone(),
        chain,
        key.serialize_der(),
        now - HOUR,
        now + HOUR,
        now,
    )
}

/// A handshake between a client presenting `client` and expecting `expected`, and a server
/// presenting `server`, both trusting `root`: the client's and the server's errors.
fn handshake(
    root: &Authority,
    client: &WorkloadCert,
    server: &WorkloadCert,
    expected: &SpiffeId,
) -> (Option<String>, Option<String>) {
    let bundle = TrustBundle::new(TD, std::slice::from_ref(&root.der)).expect("bundle");
    let server_cfg = server_config(&bundle, Arc::new(RotatingCert::new(server).expect("cert")))
        .expect("server config");
    let client_cfg = client_config(&bundle, client, expected.clone()).expect("client config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (a, b) = tokio::io::duplex(64 << 10);
        let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(a);
        let name = ServerName::try_from("x.dst.rampart.invalid").expect("name");
        let connect = tokio_rustls::TlsConnector::from(client_cfg).connect(name, b);
        let (server_side, client_side) = tokio::join!(accept, connect);
        let error = |e: std::io::Error| Some(e.to_string());
        (
            client_side.err().and_then(error),
            server_side.err().and_then(error),
        )
    })
}

fn frontend() -> SpiffeId {
    id("/ns/shop/sa/frontend")
}

fn db() -> SpiffeId {
    id("/ns/shop/sa/db")
}

#[test]
fn a_chain_through_a_good_intermediate_passes_both_ways() {
    let root = root();
    let inter = authority(
        &root,
        "intermediate",
        Shape {
            ca: true,
            path_len: Some(0),
            ..Shape::default()
        },
    );
    let client = leaf(&inter, &frontend(), Shape::default(), &[&inter]);
    let server = leaf(&inter, &db(), Shape::default(), &[&inter]);
    assert_eq!(handshake(&root, &client, &server, &db()), (None, None));
}

/// Each bad chain, presented by the client (the server refuses) and by the server (the client
/// refuses).
#[test]
fn chains_that_must_fail_do_at_both_ends() {
    let root = root();
    let good = authority(
        &root,
        "good",
        Shape {
            ca: true,
            ..Shape::default()
        },
    );
    let ok_leaf = |who: &SpiffeId| leaf(&good, who, Shape::default(), &[&good]);
    let expired = authority(
        &root,
        "expired",
        Shape {
            ca: true,
            expired: true,
            ..Shape::default()
        },
    );
    let early = authority(
        &root,
        "not yet valid",
        Shape {
            ca: true,
            not_yet_valid: true,
            ..Shape::default()
        },
    );
    let not_ca = authority(&root, "not a CA", Shape::default());
    let short = authority(
        &root,
        "path length 0",
        Shape {
            ca: true,
            path_len: Some(0),
            ..Shape::default()
        },
    );
    let below_short = authority(
        &short,
        "below path length 0",
        Shape {
            ca: true,
            ..Shape::default()
        },
    );
    let elsewhere = self::root();
    let bad: Vec<(&str, MakeLeaf<'_>)> = vec![
        (
            "an expired intermediate",
            Box::new(|who| leaf(&expired, who, Shape::default(), &[&expired])),
        ),
        (
            "a not-yet-valid intermediate",
            Box::new(|who| leaf(&early, who, Shape::default(), &[&early])),
        ),
        (
            "an intermediate without CA rights",
            Box::new(|who| leaf(&not_ca, who, Shape::default(), &[&not_ca])),
        ),
        (
            "a path length exceeded",
            Box::new(|who| leaf(&below_short, who, Shape::default(), &[&below_short, &short])),
        ),
        (
            "a leaf that is a CA",
            Box::new(|who| {
                leaf(
                    &good,
                    who,
                    Shape {
                        ca: true,
                        ..Shape::default()
                    },
                    &[&good],
                )
            }),
        ),
        (
            "another CA's leaf",
            Box::new(|who| leaf(&elsewhere, who, Shape::default(), &[])),
        ),
        (
            "an expired leaf",
            Box::new(|who| {
                leaf(
                    &good,
                    who,
                    Shape {
                        expired: true,
                        ..Shape::default()
                    },
                    &[&good],
                )
            }),
        ),
    ];
    for (what, make) in &bad {
        let (client_err, server_err) = handshake(&root, &make(&frontend()), &ok_leaf(&db()), &db());
        assert!(
            server_err.is_some(),
            "the server accepted a client with {what} (client: {client_err:?})"
        );
        let (client_err, _) = handshake(&root, &ok_leaf(&frontend()), &make(&db()), &db());
        assert!(
            client_err.is_some(),
            "the client accepted a server with {what}"
        );
    }
}

/// A server certificate from the trust domain's own CA that names another trust domain (or
/// another workload) is not the one the client expects.
#[test]
fn another_trust_domains_svid_is_not_the_expected_server() {
    let root = root();
    let other = SpiffeId::parse("spiffe://other.org/ns/shop/sa/db").expect("id");
    let client = leaf(&root, &frontend(), Shape::default(), &[]);
    for server_id in [other, id("/ns/shop/sa/backend")] {
        let server = leaf(&root, &server_id, Shape::default(), &[]);
        let (client_err, _) = handshake(&root, &client, &server, &db());
        assert!(client_err.is_some(), "the client accepted {server_id}");
    }
}
