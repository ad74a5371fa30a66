//! API objects into what the agent keeps of them. Pods and Namespaces become their model form
//! at once (validated here, each error naming the field path), so the agent holds a few hundred
//! bytes per pod instead of the whole object. Policy kinds and Secrets become a YAML document
//! that the policy reader validates like a file's, with every check and position it has.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::policy::model::{
    self, EndpointModel, EndpointSliceModel, NAMESPACE_NAME_LABEL, NamedPort, PodModel, PortTarget,
    ServiceModel, ServicePortModel,
};
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
        namespace: namespace.as_str().into(),
        full_name: PodModel::full_name_of(namespace, name),
        labels: labels.into(),
        service_account: spec
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .into(),
        node_name: spec.and_then(|s| s.node_name.as_deref()).map(Arc::from),
        ips: ips.into(),
        host_ip,
        ports: ports.into(),
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

fn addresses(field: &str, raw: Option<&Vec<String>>) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for (i, text) in raw.into_iter().flatten().enumerate() {
        if text.is_empty() || text == "None" {
            continue;
        }
        let addr: IpAddr = text
            .parse()
            .map_err(|_| format!("{field}[{i}] {text:?}: not an IP address"))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

fn port(field: &str, value: i32) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{field} {value}: must be 1-65535"))
}

fn protocol(field: &str, raw: Option<&str>) -> Result<u8, String> {
    let name = raw.unwrap_or("TCP");
    model::protocol(name).ok_or_else(|| format!("{field} {name:?}: must be TCP, UDP or SCTP"))
}

/// What the datapath will need of a Service (`Ok(None)`: an ExternalName or headless Service,
/// which has no address to translate).
pub fn service(service: &Service) -> Result<Option<ServiceModel>, String> {
    let meta = &service.metadata;
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
        return Err("metadata: a Service needs a namespace and a name".into());
    };
    let Some(spec) = &service.spec else {
        return Ok(None);
    };
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    if kind == "ExternalName" {
        return Ok(None);
    }
    let listed = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]));
    let cluster_ips = addresses("spec.clusterIPs", listed.as_ref())?;
    if cluster_ips.is_empty() {
        return Ok(None);
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        let number = port(&format!("{at}.port"), p.port)?;
        let target = match &p.target_port {
            None => PortTarget::Number(number),
            Some(IntOrString::Int(n)) => PortTarget::Number(port(&format!("{at}.targetPort"), *n)?),
            Some(IntOrString::String(name)) => {
                model::validate_port_name(name).map_err(|e| format!("{at}.targetPort: {e}"))?;
                PortTarget::Named(name.clone())
            }
        };
        ports.push(ServicePortModel {
            name: p.name.clone(),
            proto: protocol(&format!("{at}.protocol"), p.protocol.as_deref())?,
            port: number,
            node_port: match p.node_port {
                Some(n) if n != 0 => Some(port(&format!("{at}.nodePort"), n)?),
                _ => None,
            },
            target,
        });
    }
    let load_balancer: Vec<String> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    Ok(Some(ServiceModel {
        namespace: namespace.clone(),
        name: name.clone(),
        kind,
        cluster_ips,
        external_ips: addresses("spec.externalIPs", spec.external_ips.as_ref())?,
        load_balancer_ips: addresses("status.loadBalancer.ingress", Some(&load_balancer))?,
        ports,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    }))
}

/// The label that names an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice's backends (`Ok(None)`: a slice of FQDNs, or of no Service).
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<EndpointSliceModel>, String> {
    let meta = &slice.metadata;
    let Some(namespace) = &meta.namespace else {
        return Err("metadata: an EndpointSlice needs a namespace".into());
    };
    let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return Ok(None);
    };
    if slice.address_type == "FQDN" {
        return Ok(None);
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let conditions = e.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        endpoints.push(EndpointModel {
            addresses: addresses(&format!("endpoints[{i}].addresses"), Some(&e.addresses))?,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node: e.node_name.clone(),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(format!(
                        "{}/{}",
                        r.namespace.as_deref()?,
                        r.name.as_deref()?
                    ))
                }),
        });
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else {
            continue;
        };
        ports.push((
            p.name.clone(),
            protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port(&format!("ports[{i}].port"), number)?,
        ));
    }
    Ok(Some(EndpointSliceModel {
        namespace: namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        service: service.clone(),
        endpoints,
        ports,
    }))
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
        assert_eq!(&*m.service_account, "sa");
        assert_eq!(m.ips.len(), 2);
        assert_eq!(
            m.ports.to_vec(),
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
    fn services_and_slices_keep_what_translation_needs() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "web"},
            "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                               {"port": 53, "protocol": "UDP", "targetPort": 5353}]}
        }))
        .expect("service");
        let m = service(&svc).expect("valid").expect("kept");
        assert_eq!(m.cluster_ips.len(), 2);
        assert_eq!(m.ports[0].target, PortTarget::Named("http".into()));
        assert_eq!((m.ports[0].node_port, m.ports[1].proto), (Some(30080), 17));
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "h"}, "spec": {"clusterIP": "None"}
        }))
        .expect("service");
        assert_eq!(service(&headless).expect("valid"), None);
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.10"], "conditions": {"ready": false, "terminating": true},
                           "targetRef": {"kind": "Pod", "namespace": "x", "name": "a"}}],
            "ports": [{"name": "http", "port": 8080}]
        }))
        .expect("slice");
        let s = endpoint_slice(&slice).expect("valid").expect("kept");
        assert_eq!(s.service, "web");
        assert!(!s.endpoints[0].ready && s.endpoints[0].terminating);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("x/a"));
        assert_eq!(s.ports, vec![(Some("http".into()), 6, 8080)]);
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

    /// A ConfigMap's multi-line Rego module becomes a block scalar of the document, so an error
    /// inside the module is reported at the document's line of it.
    #[test]
    fn a_config_map_module_error_is_placed_in_its_document() {
        let module = "package envoy.authz\ndefault allow := false\nallow if input.x == == 1\n";
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "authz", "namespace": "shop", "labels": {"rampart.dev/policy": "rego"}},
            "data": {"policy.rego": module},
        }))
        .expect("object");
        let text = document(&o, "v1", "ConfigMap").expect("yaml");
        let policy = "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: m}\nspec:\n  ports: [{port: 80}]\n  http:\n    rego:\n      configMapRef: {namespace: shop, name: authz}\n";
        let mut read = crate::policy::source::parse_str(std::path::Path::new("m.yaml"), policy);
        let config_map = crate::policy::source::parse_str(
            std::path::Path::new("kube:ConfigMap/shop/authz"),
            &text,
        );
        read.objects.extend(config_map.objects);
        let diags = crate::policy::check(read).expect_err("a broken module");
        let error = diags.iter().find(|d| d.is_error()).expect("an error");
        let line = usize::try_from(error.origin.pos.line).expect("line");
        let shown = text.lines().nth(line - 1).unwrap_or_default();
        assert_eq!(
            error.origin.file,
            std::path::Path::new("kube:ConfigMap/shop/authz"),
            "{text}\n{error:?}"
        );
        assert!(
            shown.contains("== =="),
            "line {line} of\n{text}\nis not the module's third line: {error:?}"
        );
    }
}
