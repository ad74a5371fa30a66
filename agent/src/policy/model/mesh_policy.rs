//! A MeshPolicy: the ports that need mTLS, allowed principals, the flood brake, and its `http`
//! and `ingress` sections (validated in `policy/http.rs`, `policy/ingress.rs`).

use crate::policy::spec::compact::Spanned;

use super::validate::Validator;
use super::*;
use crate::policy::diag::Diagnostic;
use crate::policy::spec::objects::{self};
use crate::policy::{http, ingress};

/// Most ports one MeshPolicy port range may name (each is a kernel map entry per identity).
const MAX_MESH_RANGE: u16 = 1024;

impl Validator<'_> {
    pub(super) fn mesh_policy(
        &mut self,
        mp: &objects::MeshPolicy,
        name: String,
    ) -> Option<MeshPolicyModel> {
        let spec = &mp.spec.value;
        let mut ok = true;
        let applies_to = match &spec.applies_to {
            None => Some(WorkloadMatch::everything()),
            Some(sel) => self.workloads(
                sel.namespace_selector.as_ref(),
                sel.pod_selector.as_ref(),
                sel.service_accounts.as_deref(),
                "appliesTo",
            ),
        };
        if let Some(mode) = &spec.mtls
            && mode.value != "Required"
        {
            self.error(
                mode,
                format!("mtls {:?}: the only mode is Required", mode.value),
            );
            ok = false;
        }
        let ports = self
            .ports(spec.ports.as_deref(), &mut ok)
            .unwrap_or_default();
        if ports.is_empty() && ok {
            self.error(&mp.spec, "ports: at least one TCP port is required");
            ok = false;
        }
        for (p, raw) in ports.iter().zip(spec.ports.iter().flatten()) {
            if p.proto != PROTO_TCP {
                self.error(raw, "mTLS applies to TCP ports only");
                ok = false;
            }
            match p.port {
                PortMatch::All => {
                    self.error(raw, "port is required (mTLS is asked for per port)");
                    ok = false;
                }
                PortMatch::Range(start, end) if end - start >= MAX_MESH_RANGE => {
                    self.error(
                        raw,
                        format!("a range of more than {MAX_MESH_RANGE} ports is not supported"),
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        let principals = spec
            .allowed_principals
            .as_ref()
            .map(|p| self.principals(p, &mut ok));
        let http = match &spec.http {
            None => None,
            Some(raw) => match http::validate(self.so, raw, self.diags) {
                Some(model) => Some(std::sync::Arc::new(model)),
                None => {
                    ok = false;
                    None
                }
            },
        };
        let brake = spec
            .flood_brake
            .as_ref()
            .and_then(|raw| self.flood_brake(raw, &mut ok));
        let ingress = match &spec.ingress {
            None => None,
            Some(raw) => match ingress::validate(self.so, raw, self.diags) {
                Some(model) => Some(std::sync::Arc::new(model)),
                None => {
                    ok = false;
                    None
                }
            },
        };
        let applies_to = applies_to?;
        ok.then(|| MeshPolicyModel {
            name,
            applies_to,
            ports,
            principals,
            http,
            brake,
            ingress,
            origin: self.so.whole(),
        })
    }

    pub(super) fn flood_brake(
        &mut self,
        raw: &Spanned<objects::FloodBrakeSpec>,
        ok: &mut bool,
    ) -> Option<BrakeModel> {
        let spec = &raw.value;
        let max = spec.max_connections.value;
        let per_fill = spec.connections_per_fill.as_ref().map_or(1, |p| p.value);
        let interval = http::parse_duration(&spec.fill_interval.value);
        let problem = match interval {
            None => Some((
                "floodBrake.fillInterval: a duration such as 100ms, 1s, 1m".to_owned(),
                self.so.at(&spec.fill_interval),
            )),
            Some(d) if d.as_millis() < 1 => Some((
                "floodBrake.fillInterval: at least 1ms".to_owned(),
                self.so.at(&spec.fill_interval),
            )),
            _ if max == 0 => Some((
                "floodBrake.maxConnections: at least 1".to_owned(),
                self.so.at(&spec.max_connections),
            )),
            _ if per_fill == 0 => Some((
                "floodBrake.connectionsPerFill: at least 1".to_owned(),
                self.so.at(raw),
            )),
            _ => None,
        };
        if let Some((message, origin)) = problem {
            self.diags.push(Diagnostic::error(origin, message));
            *ok = false;
            return None;
        }
        let interval_ns = u64::try_from(interval?.as_nanos()).unwrap_or(u64::MAX);
        let period_ns = (interval_ns / u64::from(per_fill)).max(1);
        Some(BrakeModel {
            period_ns,
            tau_ns: period_ns.saturating_mul(u64::from(max - 1)),
        })
    }

    pub(super) fn principals(
        &mut self,
        raw: &objects::AllowedPrincipals,
        ok: &mut bool,
    ) -> PrincipalsModel {
        let mut out = PrincipalsModel::default();
        for id in raw.spiffe_ids.iter().flatten() {
            match crate::spiffe::SpiffeId::parse(&id.value) {
                Ok(_) => out.spiffe_ids.push(id.value.clone()),
                Err(e) => {
                    self.error(id, format!("allowedPrincipals.spiffeIds: {e}"));
                    *ok = false;
                }
            }
        }
        for sa in raw.service_accounts.iter().flatten() {
            match sa.value.split_once('/') {
                Some((ns, name))
                    if crate::dns_name::is_dns_label(ns)
                        && crate::dns_name::is_dns_subdomain(name) =>
                {
                    out.service_accounts.push((ns.to_owned(), name.to_owned()));
                }
                _ => {
                    self.error(
                        sa,
                        format!(
                            "allowedPrincipals.serviceAccounts: {:?} is not `namespace/name`",
                            sa.value
                        ),
                    );
                    *ok = false;
                }
            }
        }
        for ns in raw.namespaces.iter().flatten() {
            if crate::dns_name::is_dns_label(&ns.value) {
                out.namespaces.push(ns.value.clone());
            } else {
                self.error(
                    ns,
                    format!(
                        "allowedPrincipals.namespaces: {:?} is not a namespace name",
                        ns.value
                    ),
                );
                *ok = false;
            }
        }
        out
    }
}
