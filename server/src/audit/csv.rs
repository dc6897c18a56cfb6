//! `audit export --format csv`: a header line, then one row per event with the
//! fields of the JSON events in the same order (RFC 4180 quoting; key id lists
//! separated by spaces; absent values empty).

use ferry_format::audit::AuditEvent;

/// The header line's columns.
pub const COLUMNS: [&str; 19] = [
    "time",
    "time_utc",
    "event",
    "channel",
    "release",
    "head_sequence",
    "publisher_sequence",
    "head",
    "role",
    "key_ids",
    "content_key_ids",
    "percent",
    "previous_percent",
    "expires_at",
    "agent_id",
    "hostname",
    "agent_report_id",
    "result",
    "detail",
];

fn field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The rows of `events`, header first, each line ending in CRLF as RFC 4180 says.
pub fn render(events: &[AuditEvent]) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for e in events {
        let cells = [
            e.time.to_string(),
            e.time_utc.clone(),
            e.event.clone(),
            e.channel.clone(),
            opt(&e.release),
            opt(&e.head_sequence),
            opt(&e.publisher_sequence),
            opt(&e.head),
            e.role.map(|r| r.name().to_string()).unwrap_or_default(),
            e.key_ids.join(" "),
            e.content_key_ids.join(" "),
            opt(&e.percent),
            opt(&e.previous_percent),
            opt(&e.expires_at),
            opt(&e.agent_id),
            opt(&e.hostname),
            opt(&e.agent_report_id),
            opt(&e.result),
            opt(&e.detail),
        ];
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, c);
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let e = AuditEvent {
            event: "agent-failed".into(),
            channel: "stable".into(),
            detail: Some("health check \"app\" failed, exit 1\nsee log".into()),
            ..AuditEvent::default()
        };
        let text = render(&[e]);
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            lines.next().unwrap(),
            "0,,agent-failed,stable,,,,,,,,,,,,,,,\"health check \"\"app\"\" failed, exit 1\nsee log\""
        );
    }
}
