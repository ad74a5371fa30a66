//! The node's and its workloads' certificates as one agent hands them to the next in a hot
//! restart (over the handover socket: mode 0600, the same user, the same node), so the new agent
//! serves its first flows without a round trip to the CA, and starts even while the CA service is
//! unreachable. Taken only under the same roots (`ca.crt` unchanged) and with time left.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::ca::WorkloadCert;
use crate::spiffe::SpiffeId;

/// What crosses the handover socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedCerts {
    /// The roots they were issued under (`ca.crt`'s text).
    pub roots_pem: String,
    pub certs: Vec<CarriedCert>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedCert {
    pub spiffe_id: String,
    /// DER, base64, the leaf first.
    pub chain: Vec<String>,
    /// PKCS#8 DER, base64.
    pub key: String,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    pub issued_at: u64,
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl CarriedCert {
    pub fn of(cert: &WorkloadCert) -> CarriedCert {
        CarriedCert {
            spiffe_id: cert.spiffe_id.as_str().to_owned(),
            chain: cert.chain.iter().map(|c| STANDARD.encode(c)).collect(),
            key: STANDARD.encode(cert.key_der()),
            not_before: seconds(cert.not_before),
            not_after: seconds(cert.not_after),
            issued_at: seconds(cert.issued_at),
        }
    }

    /// The certificate, if it parses and has not reached its renewal time (half its life): one
    /// past it is taken again from the CA, as it would have been.
    pub fn usable(&self, now: SystemTime) -> Option<WorkloadCert> {
        let spiffe_id = SpiffeId::parse(&self.spiffe_id).ok()?;
        let chain = self
            .chain
            .iter()
            .map(|c| STANDARD.decode(c).ok().map(CertificateDer::from))
            .collect::<Option<Vec<_>>>()?;
        let key = STANDARD.decode(&self.key).ok()?;
        if chain.is_empty() {
            return None;
        }
        let cert = WorkloadCert::new(
            spiffe_id,
            chain,
            key,
            time(self.not_before),
            time(self.not_after),
            time(self.issued_at),
        );
        (now < cert.renew_at()).then_some(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::ca::Ca;

    #[test]
    fn a_certificate_crosses_whole_and_one_past_half_life_is_not_taken() {
        let ca = Ca::generate(
            "cluster.local",
            Duration::from_secs(86_400),
            SystemTime::now(),
        )
        .expect("ca");
        let id = SpiffeId::node("cluster.local", "node-1").expect("id");
        let now = SystemTime::now();
        let cert = ca
            .issue(&id, Duration::from_secs(3600), now)
            .expect("issue");
        let json = serde_json::to_string(&CarriedCert::of(&cert)).expect("json");
        let carried: CarriedCert = serde_json::from_str(&json).expect("parse");
        let back = carried.usable(now).expect("usable");
        assert_eq!(back.spiffe_id, cert.spiffe_id);
        assert_eq!(back.chain, cert.chain);
        assert_eq!(back.key_der(), cert.key_der());
        assert!(carried.usable(now + Duration::from_secs(1801)).is_none());
        let broken = CarriedCert {
            key: "%%%".into(),
            ..carried
        };
        assert!(broken.usable(now).is_none());
    }
}
