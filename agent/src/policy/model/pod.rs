//! A Pod: its labels, addresses, named ports and service account.

use std::net::IpAddr;

use crate::policy::spec::compact::Spanned;

use super::validate::Validator;
use super::*;
use crate::policy::spec::objects::{self};

impl Validator<'_> {
    pub(super) fn pod(
        &mut self,
        pod: &objects::Pod,
        namespace: String,
        name: String,
    ) -> Option<PodModel> {
        let labels = self.labels()?;
        let mut ok = true;
        let mut ips = Vec::new();
        let raw_ips: Vec<&Spanned<String>> = if pod.status.pod_ips.is_empty() {
            pod.status.pod_ip.iter().collect()
        } else {
            pod.status.pod_ips.iter().map(|p| &p.ip).collect()
        };
        for ip in raw_ips {
            match ip.value.parse::<IpAddr>() {
                Ok(addr) if !ips.contains(&addr) => ips.push(addr),
                Ok(_) => {}
                Err(_) => {
                    self.error(
                        ip,
                        format!("status.podIP {:?}: not an IP address", ip.value),
                    );
                    ok = false;
                }
            }
        }
        let mut ports = Vec::new();
        for c in pod.spec.containers.iter().chain(&pod.spec.init_containers) {
            for p in &c.ports {
                let port =
                    self.port_number(&p.container_port, "containerPort", p.container_port.value);
                let proto = self.protocol(p.protocol.as_ref());
                let (Some(port), Some(proto)) = (port, proto) else {
                    ok = false;
                    continue;
                };
                if let Some(n) = &p.name {
                    if let Err(e) = validate_port_name(&n.value) {
                        self.error(n, e);
                        ok = false;
                        continue;
                    }
                    ports.push(NamedPort {
                        name: n.value.clone(),
                        port,
                        proto,
                    });
                }
            }
        }
        let host_ip = match &pod.status.host_ip {
            None => None,
            Some(raw) => match raw.value.parse::<IpAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.error(
                        raw,
                        format!("status.hostIP {:?}: not an IP address", raw.value),
                    );
                    ok = false;
                    None
                }
            },
        };
        if !ok {
            return None;
        }
        if pod.spec.host_network {
            // A host-network pod has the node's addresses and identity: nothing to model.
            return None;
        }
        ports.sort();
        ports.dedup();
        Some(PodModel {
            full_name: PodModel::full_name_of(&namespace, &name),
            namespace: namespace.into(),
            labels: labels.into(),
            service_account: pod
                .spec
                .service_account_name
                .clone()
                .or_else(|| pod.spec.service_account.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned())
                .into(),
            node_name: pod.spec.node_name.as_deref().map(Arc::from),
            ips: ips.into(),
            host_ip,
            ports: ports.into(),
        })
    }
}
