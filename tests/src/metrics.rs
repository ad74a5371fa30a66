//! Reading samples out of the agent's OpenMetrics text.

/// The value of the sample `name{labels}` (labels given in the order the agent writes them,
/// e.g. `hook="xdp"`), or `None` if there is no such sample.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(key.as_str())
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_labelled_and_plain_samples() {
        let text =
            "# TYPE a counter\na_total{hook=\"xdp\"} 5\na_total{hook=\"xdp2\"} 7\nb 1.5\n# EOF\n";
        assert_eq!(sample(text, "a_total", "hook=\"xdp\""), Some(5.0));
        assert_eq!(sample(text, "a_total", "hook=\"xdp2\""), Some(7.0));
        assert_eq!(sample(text, "b", ""), Some(1.5));
        assert_eq!(sample(text, "a_total", "hook=\"tc\""), None);
    }
}
