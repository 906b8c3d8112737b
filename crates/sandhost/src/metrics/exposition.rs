//! The two text formats `/metrics` speaks, and which one a scraper gets.
//!
//! prometheus-client encodes OpenMetrics 1.0 only. Prometheus' own text format (0.0.4) is what
//! every scraper understands and what `promtool check metrics` checks, and it differs in how a
//! family is named: OpenMetrics names a counter family `x` and its sample `x_total`, an info family
//! `x` and its sample `x_info`, while 0.0.4 names the family as its sample. So a 0.0.4 body is the
//! OpenMetrics body with those `# HELP` / `# TYPE` names rewritten and the OpenMetrics-only lines
//! (`# UNIT`) dropped. [`negotiate`] gives OpenMetrics only to a client whose `Accept` asks for it.

use std::fmt::Write as _;

/// A text format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text format 0.0.4: for clients that ask for it or do not say.
    Prometheus,
    /// OpenMetrics 1.0.0: only for clients whose `Accept` names `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The format for a request with this `Accept` header: OpenMetrics when it is asked for with a
/// quality above zero, else Prometheus' text format (also with no header at all).
#[must_use]
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Prometheus };
    let asks_for_openmetrics = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    });
    if asks_for_openmetrics { Format::OpenMetrics } else { Format::Prometheus }
}

/// Encodes `registry` in `format`.
///
/// # Errors
///
/// The encoder's error (a metric that cannot be written).
pub fn encode(
    registry: &prometheus_client::registry::Registry,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, registry)?;
    Ok(match format {
        Format::OpenMetrics => normalise_infinities(&openmetrics),
        Format::Prometheus => to_prometheus_text(&openmetrics),
    })
}

/// Rewrites an OpenMetrics body (as prometheus-client writes it) as Prometheus text 0.0.4.
///
/// The last line stays the comment `# EOF`: in 0.0.4 a `#` line that is neither HELP nor TYPE is
/// a comment every parser skips, and it lets a reader see that the body was not cut short.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let family_name = |name: &str| match types.get(name).copied() {
        Some("counter") => format!("{name}_total"),
        Some("info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in normalise_infinities(openmetrics).lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {help}", family_name(name));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            let _ = writeln!(out, "# TYPE {} {kind}", family_name(name));
        } else if line.starts_with("# UNIT ") {
            // OpenMetrics only; the unit is part of the name already.
        } else {
            // A sample, or `# EOF`. Exemplars (` # {...}`) are OpenMetrics only; none are recorded.
            let sample = line.split_once(" # {").map_or(line, |(sample, _)| sample);
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// prometheus-client writes an infinite value as `inf`; both formats spell it `+Inf` / `-Inf`.
fn normalise_infinities(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        if line.starts_with('#') {
            out.push_str(line);
        } else if let Some(sample) = line.strip_suffix(" inf") {
            let _ = write!(out, "{sample} +Inf");
        } else if let Some(sample) = line.strip_suffix(" -inf") {
            let _ = write!(out, "{sample} -Inf");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")), Format::Prometheus);
        // What Prometheus 2.x sends: both, OpenMetrics first.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Prometheus);
    }

    #[test]
    fn counters_and_infos_are_named_as_their_samples_and_openmetrics_lines_go() {
        let openmetrics = "\
# HELP sandhost_creates Creates by result.
# TYPE sandhost_creates counter
sandhost_creates_total{result=\"started\"} 3
# HELP sandhost_build Build information.
# TYPE sandhost_build info
sandhost_build_info{version=\"0.1.0\"} 1
# HELP sandhost_start_seconds Start latency.
# TYPE sandhost_start_seconds histogram
# UNIT sandhost_start_seconds seconds
sandhost_start_seconds_bucket{le=\"+Inf\"} 1
sandhost_start_seconds_sum 0.01
sandhost_start_seconds_count 1
# HELP sandhost_budget_seconds Budget.
# TYPE sandhost_budget_seconds gauge
sandhost_budget_seconds inf
# EOF
";
        let text = to_prometheus_text(openmetrics);
        let expected = "\
# HELP sandhost_creates_total Creates by result.
# TYPE sandhost_creates_total counter
sandhost_creates_total{result=\"started\"} 3
# HELP sandhost_build_info Build information.
# TYPE sandhost_build_info gauge
sandhost_build_info{version=\"0.1.0\"} 1
# HELP sandhost_start_seconds Start latency.
# TYPE sandhost_start_seconds histogram
sandhost_start_seconds_bucket{le=\"+Inf\"} 1
sandhost_start_seconds_sum 0.01
sandhost_start_seconds_count 1
# HELP sandhost_budget_seconds Budget.
# TYPE sandhost_budget_seconds gauge
sandhost_budget_seconds +Inf
# EOF
";
        assert_eq!(text, expected);
    }
}
