//! The NetworkPolicy conformance cases against the compiler alone: every case's objects are read,
//! validated and compiled as the agent does, and every probe is decided from the compiled state
//! with the kernel's lookup order (`policy::verdict`). The same cases run against the real kernel
//! in `cargo xtask conformance netpol`; this test pins the semantics without one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rampart_agent::policy::{self, compile, model, source, verdict};
use rampart_tests::netpol_cases::{self, Expect};

fn cases_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(netpol_cases::DEFAULT_CASES)
}

#[test]
fn every_public_netpol_case_compiles_to_the_expected_verdicts() {
    let file = netpol_cases::load(&cases_path()).expect("cases load");
    let mut alloc = compile::Memory::new();
    let mut failed_cases = Vec::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in &file.cases {
        let text = case.objects_yaml("node-1").expect("objects");
        let read = source::parse_str(Path::new(&format!("{}.yaml", case.name)), &text);
        let checked = match policy::check(read) {
            Ok(c) => c,
            Err(diags) => panic!(
                "case {}: rejected:\n{}",
                case.name,
                diags
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        // Every pod is local, each behind its own interface.
        let local: BTreeMap<IpAddr, u32> = case
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (IpAddr::V4(p.ip), 100 + i as u32))
            .collect();
        let node = compile::Node {
            local: &local,
            host: &std::collections::BTreeSet::new(),
            trust_domain: "cluster.local",
            audit: false,
        };
        let compiled = compile::compile(&checked.model, node, &mut alloc);
        alloc.finish();
        let mut case_failures = Vec::new();
        for probe in &case.probes {
            let src = IpAddr::V4(case.pod(&probe.from).expect("from").ip);
            let dst = IpAddr::V4(case.pod(&probe.to).expect("to").ip);
            let proto = model::protocol(&probe.proto).expect("probe protocol");
            let decision = verdict::decide(&compiled.state, src, dst, proto, probe.port);
            let got = if decision.allowed() {
                Expect::Allow
            } else {
                Expect::Deny
            };
            if got == probe.expect {
                passed += 1;
            } else {
                failed += 1;
                case_failures.push(format!(
                    "{} -> {} {}/{}: expected {:?}, decided {:?}",
                    probe.from, probe.to, probe.proto, probe.port, probe.expect, decision
                ));
            }
        }
        if !case_failures.is_empty() {
            failed_cases.push(format!(
                "case {}:\n  {}",
                case.name,
                case_failures
                    .iter()
                    .take(6)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    }
    println!("{passed} passed, {failed} failed");
    assert!(
        failed_cases.is_empty(),
        "{failed} probes failed:\n{}",
        failed_cases.join("\n")
    );
}
