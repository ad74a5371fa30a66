//! API objects into what the agent keeps of them. Pods and Namespaces become their model form
//! at once (validated here, each error naming the field path), so the agent holds a few hundred
//! bytes per pod instead of the whole object. Policy kinds and Secrets become a YAML document
//! that the policy reader validates like a file's, with every check and position it has.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::DynamicObject;
use serde_json::Value;

use crate::policy::model::{self, NAMESPACE_NAME_LABEL, NamedPort, PodModel};
use crate::policy::selector::{self, Labels};

/// Annotations that only kubectl reads, dropped from documents (the last one holds a copy of
/// the whole object).
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// What the agent keeps of a Pod, or why it cannot be modelled (`Ok(None)`: nothing to model —
/// a host-network pod has the node's addresses, a finished one has released its address).
pub fn pod(pod: &Pod) -> Result<Option<PodModel>, String> {
    let meta = &pod.metadata;
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
        return Err("metadata: a Pod needs a namespace and a name".into());
    };
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Ok(None);
    }
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let labels = labels(meta.labels.as_ref())?;
    let mut ips = Vec::new();
    let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .map(|ip| vec![("status.podIP".to_owned(), ip)])
            .unwrap_or_default(),
    };
    for (field, text) in listed {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("{field} {text:?}: not an IP address"))?;
        if !ips.contains(&addr) {
            ips.push(addr);
        }
    }
    let host_ip = match status.and_then(|s| s.host_ip.as_deref()) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|_| format!("status.hostIP {text:?}: not an IP address"))?,
        ),
    };
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.containers[{i}]"), c))
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.initContainers[{i}]"), c)),
            );
        for (at, container) in containers {
            for (j, p) in container.ports.iter().flatten().enumerate() {
                let Some(port_name) = &p.name else {
                    continue;
                };
                let at = format!("{at}.ports[{j}]");
                model::validate_port_name(port_name).map_err(|e| format!("{at}.name: {e}"))?;
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        format!("{at}.containerPort {}: must be 1-65535", p.container_port)
                    })?;
                let protocol = p.protocol.as_deref().unwrap_or("TCP");
                let proto = model::protocol(protocol).ok_or_else(|| {
                    format!("{at}.protocol {protocol:?}: must be TCP, UDP or SCTP")
                })?;
                ports.push(NamedPort {
                    name: port_name.clone(),
                    port,
                    proto,
                });
            }
        }
    }
    ports.sort();
    ports.dedup();
    Ok(Some(PodModel {
        namespace: namespace.clone(),
        name: name.clone(),
        labels,
        service_account: spec
            .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        node_name: spec.and_then(|s| s.node_name.clone()),
        ips,
        host_ip,
        ports,
    }))
}

/// A Namespace's name and labels (with its own-name label).
pub fn namespace(namespace: &Namespace) -> Result<(String, Labels), String> {
    let name = namespace
        .metadata
        .name
        .clone()
        .ok_or("metadata.name: a Namespace needs a name")?;
    let mut labels = labels(namespace.metadata.labels.as_ref())?;
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
    Ok((name, labels))
}

/// A Node's name and its addresses (`InternalIP` and `ExternalIP`).
pub fn node(node: &Node) -> Result<(String, Vec<IpAddr>), String> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or("metadata.name: a Node needs a name")?;
    let mut addrs = Vec::new();
    let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in listed.into_iter().flatten().enumerate() {
        if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        let addr: IpAddr = a.address.parse().map_err(|_| {
            format!(
                "status.addresses[{i}].address {:?}: not an IP address",
                a.address
            )
        })?;
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok((name, addrs))
}

fn labels(raw: Option<&std::collections::BTreeMap<String, String>>) -> Result<Labels, String> {
    let labels = raw.cloned().unwrap_or_default();
    for (k, v) in &labels {
        selector::validate_key(k)
            .and_then(|()| selector::validate_value(v))
            .map_err(|e| format!("metadata.labels: {e}"))?;
    }
    Ok(labels)
}

/// A policy object or Secret as the YAML document the policy reader takes: the object without
/// its status (the agent writes it) and without fields only the API server and kubectl use.
pub fn document(object: &DynamicObject, api_version: &str, kind: &str) -> Result<String, String> {
    let mut value = serde_json::to_value(object).map_err(|e| format!("encoding: {e}"))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::from(api_version));
        map.insert("kind".into(), Value::from(kind));
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            // What the API server changes on every write (a status written back by the agent
            // included): not part of what the object means, so not of its document.
            for server_owned in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "selfLink",
            ] {
                meta.remove(server_owned);
            }
            if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                for dropped in DROPPED_ANNOTATIONS {
                    annotations.remove(*dropped);
                }
            }
        }
    }
    serde_saphyr::to_string(&value).map_err(|e| format!("encoding: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod_json(v: Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn a_pod_keeps_labels_addresses_ports_and_account() {
        let p = pod_json(json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "sa", "nodeName": "n1", "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9}]}
            ], "someFieldFromAFutureVersion": {"x": 1}},
            "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "hostIP": "192.168.0.1"}
        }));
        let m = pod(&p).expect("valid").expect("modelled");
        assert_eq!(m.labels["app"], "web");
        assert_eq!(m.service_account, "sa");
        assert_eq!(m.ips.len(), 2);
        assert_eq!(
            m.ports,
            vec![NamedPort {
                name: "http".into(),
                port: 8080,
                proto: 6
            }]
        );
        assert_eq!(m.host_ip, Some("192.168.0.1".parse().expect("ip")));
    }

    #[test]
    fn a_bad_pod_field_is_named_by_its_path() {
        let p = pod_json(json!({
            "metadata": {"namespace": "x", "name": "a"},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "Bad_Name", "containerPort": 80}]}]},
        }));
        let e = pod(&p).expect_err("invalid");
        assert!(e.starts_with("spec.containers[0].ports[0].name"), "{e}");
        let p = pod_json(json!({
            "metadata": {"namespace": "x", "name": "a"},
            "status": {"podIP": "10.0.0.300"},
        }));
        assert!(pod(&p).expect_err("invalid").starts_with("status.podIP "));
    }

    #[test]
    fn finished_and_host_network_pods_are_not_modelled() {
        for v in [
            json!({"metadata": {"namespace": "x", "name": "a"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.1"}}),
            json!({"metadata": {"namespace": "x", "name": "a"}, "spec": {"hostNetwork": true, "containers": []}}),
        ] {
            assert_eq!(pod(&pod_json(v)).expect("valid"), None);
        }
    }

    #[test]
    fn a_document_drops_status_and_kubectl_copies() {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "ClusterPolicy",
            "metadata": {"name": "p", "managedFields": [{}], "resourceVersion": "7", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"}},
            "spec": {"x": 1}, "status": {"conditions": []}
        }))
        .expect("object");
        let text = document(&o, "rampart.dev/v1alpha1", "ClusterPolicy").expect("yaml");
        assert!(
            !text.contains("status") && !text.contains("managedFields"),
            "{text}"
        );
        assert!(
            !text.contains("last-applied") && text.contains("keep"),
            "{text}"
        );
    }
}
