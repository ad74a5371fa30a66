use std::path::Path;

use crate::policy::{self, source};

/// The errors `text` gets, as `line:col: message`.
fn errors(text: &str) -> Vec<String> {
    match policy::check(source::parse_str(Path::new("t.yaml"), text)) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{}: {}", d.origin.pos.line, d.origin.pos.col, d.message))
            .collect(),
    }
}

fn np(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\nspec:\n{spec}"
    )
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    e[0].clone()
}

#[test]
fn a_valid_policy_has_no_errors() {
    let text = np(
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports:\n    - {port: 80, endPort: 90}\n    - {protocol: UDP, port: dns}\n",
    );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn unknown_fields_are_errors_at_their_position() {
    let e = one_error(&np("  podSelector: {}\n  ingres: []\n"));
    assert!(e.starts_with("8:3: "), "{e}");
    assert!(e.contains("ingres"), "{e}");
}

#[test]
fn invalid_cidrs() {
    let e = one_error(&np(
        "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.300/8}\n",
    ));
    assert!(e.starts_with("10:23: ") && e.contains("not a CIDR"), "{e}");
    let e = one_error(&np(
        "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [192.168.0.0/16]\n",
    ));
    assert!(
        e.starts_with("12:18: ") && e.contains("strict subset"),
        "{e}"
    );
}

#[test]
fn port_bounds() {
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 0\n",
    ));
    assert!(e.starts_with("10:13: ") && e.contains("1-65535"), "{e}");
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 65536\n",
    ));
    assert!(e.contains("1-65535"), "{e}");
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 90\n      endPort: 80\n",
    ));
    assert!(
        e.starts_with("11:16: ") && e.contains("less than port 90"),
        "{e}"
    );
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 80}\n",
    ));
    assert!(e.contains("named port"), "{e}");
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: \"80\"\n",
    ));
    assert!(e.contains("port name"), "{e}");
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: ICMP, port: 1}\n",
    ));
    assert!(e.contains("TCP, UDP or SCTP"), "{e}");
}

#[test]
fn selector_syntax() {
    let e = one_error(&np(
        "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n",
    ));
    assert!(
        e.starts_with("9:7: ") && e.contains("non-empty values"),
        "{e}"
    );
    let e = one_error(&np("  podSelector:\n    matchLabels: {\"a b\": c}\n"));
    assert!(e.contains("label key"), "{e}");
}

#[test]
fn peers_need_exactly_one_kind() {
    let e = one_error(&np(
        "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
    ));
    assert!(e.contains("ipBlock may not also"), "{e}");
    let e = one_error(&np("  podSelector: {}\n  ingress:\n  - from:\n    - {}\n"));
    assert!(e.contains("needs one of"), "{e}");
}

#[test]
fn duplicate_names() {
    let text = format!(
        "{}---\n{}",
        np("  podSelector: {}\n"),
        np("  podSelector: {}\n")
    );
    let e = one_error(&text);
    assert!(
        e.starts_with("12:9: ")
            && e.contains("duplicate NetworkPolicy x/p")
            && e.contains("t.yaml:4:9"),
        "{e}"
    );
}

#[test]
fn cluster_policy_kinds_and_modes() {
    let text = "apiVersion: rampart.dev/v1alpha1\nkind: ClusterPolicy\nmetadata: {name: base}\nspec:\n  mode: audit\n  defaultDeny: [Ingress, Egress]\n  egress:\n  - action: Deny\n    to:\n    - entities: [world]\n  - action: Allow\n    to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      serviceAccounts: [kube-system/coredns]\n    ports: [{protocol: UDP, port: 53}]\n";
    assert_eq!(errors(text), Vec::<String>::new());
    let bad = text.replace("mode: audit", "mode: sometimes");
    let e = one_error(&bad);
    assert!(e.starts_with("5:9: "), "{e}");
    let bad = text.replace(
        "metadata: {name: base}",
        "metadata: {name: base, namespace: x}",
    );
    assert!(one_error(&bad).contains("cluster-scoped"));
}

fn mesh(spec: &str) -> String {
    format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: m\nspec:\n{spec}"
    )
}

#[test]
fn mesh_policies_need_tcp_ports_and_valid_principals() {
    assert_eq!(
        errors(&mesh(
            "  appliesTo: {podSelector: {matchLabels: {app: db}}}\n  ports: [{port: 5432}, {port: pg}]\n  mtls: Required\n  allowedPrincipals:\n    spiffeIds: [spiffe://cluster.local/ns/a/sa/b]\n    serviceAccounts: [shop/backend]\n    namespaces: [shop]\n"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        one_error(&mesh("  appliesTo: {}\n")),
        "6:3: ports: at least one TCP port is required"
    );
    assert_eq!(
        one_error(&mesh("  ports: [{protocol: UDP, port: 53}]\n")),
        "6:11: mTLS applies to TCP ports only"
    );
    assert_eq!(
        one_error(&mesh("  ports: [{port: 1, endPort: 5000}]\n")),
        "6:11: a range of more than 1024 ports is not supported"
    );
    assert_eq!(
        one_error(&mesh("  ports: [{port: 80}]\n  mtls: Permissive\n")),
        "7:9: mtls \"Permissive\": the only mode is Required"
    );
    let e = one_error(&mesh(
        "  ports: [{port: 80}]\n  allowedPrincipals:\n    spiffeIds: [https://x/y]\n",
    ));
    assert!(e.starts_with("8:17: allowedPrincipals.spiffeIds:"), "{e}");
    assert_eq!(
        one_error(&mesh(
            "  ports: [{port: 80}]\n  allowedPrincipals:\n    serviceAccounts: [backend]\n"
        )),
        "8:23: allowedPrincipals.serviceAccounts: \"backend\" is not `namespace/name`"
    );
    assert!(one_error(&mesh("  ports: [{port: 80}]\n  bogus: 1\n")).contains("bogus"));
    let e = one_error(
        "apiVersion: rampart.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: m, namespace: x}\nspec: {ports: [{port: 80}]}\n",
    );
    assert!(e.contains("cluster-scoped"), "{e}");
}

#[test]
fn flood_brakes_validate_into_a_gcra_rate() {
    let brake = |spec: &str| format!("  ports: [{{port: 80}}]\n  floodBrake: {spec}\n");
    for (spec, expected) in [
        ("{maxConnections: 0, fillInterval: 1s}", "maxConnections"),
        ("{maxConnections: 5, fillInterval: soon}", "fillInterval"),
        (
            "{maxConnections: 5, connectionsPerFill: 0, fillInterval: 1s}",
            "connectionsPerFill",
        ),
        ("{maxConnections: 5, fillInterval: 1s, burst: 2}", "burst"),
    ] {
        let e = one_error(&mesh(&brake(spec)));
        assert!(e.contains(expected), "{spec}: {e}");
    }
    let checked = policy::check(source::parse_str(
        Path::new("t.yaml"),
        &mesh(&brake(
            "{maxConnections: 10, connectionsPerFill: 5, fillInterval: 1s}",
        )),
    ))
    .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(
        checked.model.mesh_policies[0].brake,
        Some(super::BrakeModel {
            period_ns: 200_000_000,
            tau_ns: 1_800_000_000
        })
    );
}
