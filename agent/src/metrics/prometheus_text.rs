//! The Prometheus text format 0.0.4 of the agent's metrics, for scrapers and tools that do not
//! ask for OpenMetrics (`promtool check metrics`, older agents and proxies).
//!
//! Hand-written: prometheus-client encodes OpenMetrics only. The two formats differ in the
//! metadata, not in the samples: 0.0.4 names a counter's family by its `_total` sample and an
//! info family by its `_info` sample (typed `gauge`), and has no `# UNIT` or `# EOF` lines.

/// Converts prometheus-client's OpenMetrics text to Prometheus text 0.0.4.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE: hold it until the type says what the family is called.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name_004, kind_004) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {name_004} {}\n", help_004(text)));
            }
            out.push_str(&format!("# TYPE {name_004} {kind_004}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// OpenMetrics escapes `"` in HELP text; 0.0.4 escapes only `\` and newlines.
fn help_004(text: &str) -> String {
    text.replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_counter_and_info_families_and_drops_openmetrics_lines() {
        let om = "# HELP rampart_build Build information.\n# TYPE rampart_build info\n\
                  rampart_build_info{version=\"0.1.0\"} 1\n\
                  # HELP rampart_drops Packets \\\"dropped\\\".\n# TYPE rampart_drops counter\n\
                  rampart_drops_total{reason=\"x\"} 3\n\
                  # HELP rampart_uptime_seconds Up.\n# TYPE rampart_uptime_seconds gauge\n\
                  # UNIT rampart_uptime_seconds seconds\nrampart_uptime_seconds 1.5\n# EOF\n";
        let text = from_openmetrics(om);
        assert_eq!(
            text,
            "# HELP rampart_build_info Build information.\n# TYPE rampart_build_info gauge\n\
             rampart_build_info{version=\"0.1.0\"} 1\n\
             # HELP rampart_drops_total Packets \"dropped\".\n# TYPE rampart_drops_total counter\n\
             rampart_drops_total{reason=\"x\"} 3\n\
             # HELP rampart_uptime_seconds Up.\n# TYPE rampart_uptime_seconds gauge\n\
             rampart_uptime_seconds 1.5\n"
        );
    }
}
