//! Table output for terminals. Every value an agent could influence goes
//! through escaping, so a row is always exactly one line and cannot carry
//! terminal control sequences.

use super::record::{Record, format_time, parse_record_time};
use super::text::escape_str;

const W_TIME: usize = 19;
const W_AGENT: usize = 16;
const W_PID: usize = 7;
const W_KIND: usize = 9;
const W_VERDICT: usize = 7;
const W_ACTION: usize = 10;
const W_TARGET: usize = 40;
const W_RULE: usize = 24;

pub fn table_header() -> String {
    row([
        "TIME", "AGENT", "PID", "KIND", "VERDICT", "ACTION", "TARGET", "RULE", "LAYER",
    ])
}

/// One line. Long values widen their column instead of being cut, because
/// a reviewer needs the whole path; the JSON output is there for tooling.
pub fn table_row(r: &Record) -> String {
    let time = table_time(&r.time);
    let agent = r
        .agent
        .as_ref()
        .map_or_else(|| "-".to_owned(), |a| escape_str(&a.name));
    let pid = r
        .process
        .as_ref()
        .map_or_else(|| "-".to_owned(), |p| p.pid.to_string());
    let mut target = r.target.escaped();
    // A coalesced record stands for itself and `repeated` identical ones.
    if let Some(n) = r.repeated().filter(|n| *n > 0) {
        target.push_str(&format!(" ×{}", n.saturating_add(1)));
    }
    // A program killed for starting without its launcher's layers: the row
    // says which, or it would read as any refused exec.
    if let Some(missing) = r
        .detail
        .as_ref()
        .and_then(|d| d.get("missing"))
        .and_then(|m| m.as_array())
    {
        let names: Vec<String> = missing
            .iter()
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
            .map(|m| escape_str(&m))
            .collect();
        target.push_str(&format!(" (missing: {})", names.join(" ")));
    }
    row([
        &time,
        &agent,
        &pid,
        r.kind.as_str(),
        r.verdict.as_str(),
        &escape_str(&r.action),
        &target,
        &escape_str(&r.rule),
        &escape_str(&r.layer),
    ])
}

/// `YYYY-MM-DD HH:MM:SS` in UTC; a time that does not parse is shown
/// escaped as it is.
fn table_time(time: &str) -> String {
    match parse_record_time(time) {
        Some(t) => {
            let s = format_time(t);
            s.get(..W_TIME).unwrap_or(&s).replacen('T', " ", 1)
        }
        None => escape_str(time),
    }
}

fn row(cols: [&str; 9]) -> String {
    let [time, agent, pid, kind, verdict, action, target, rule, layer] = cols;
    format!(
        "{time:<W_TIME$} {agent:<W_AGENT$} {pid:>W_PID$} {kind:<W_KIND$} {verdict:<W_VERDICT$} \
         {action:<W_ACTION$} {target:<W_TARGET$} {rule:<W_RULE$} {layer}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{AgentRef, Kind, ProcessRef, Verdict};
    use crate::journal::text::Text;

    fn rec() -> Record {
        let mut r = Record::new(
            Kind::File,
            "open",
            Text::from("a\nb\x1b[31mc"),
            Verdict::Denied,
            "file.deny[0]",
            "landlock",
        )
        .with_agent(AgentRef {
            id: "a1".into(),
            name: "evil\r\u{202e}name".into(),
            policy: "p".into(),
            container: None,
        })
        .with_process(ProcessRef {
            pid: 4242,
            comm: Text::from("sh"),
            exe: Text::from("/bin/sh"),
        });
        r.time = "2026-11-22T03:04:05.123456Z".into();
        r
    }

    #[test]
    fn row_is_one_escaped_line() {
        let line = table_row(&rec());
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\x1b'));
        assert!(!line.contains('\u{202e}'));
        assert!(line.starts_with("2026-11-22 03:04:05 evil\\r\\u{202E}name"));
        assert!(line.contains(" 4242 file      denied  open       a\\nb\\x1b[31mc "));
        assert!(line.ends_with(" landlock"));
    }

    #[test]
    fn coalesced_rows_show_how_many_refusals_they_stand_for() {
        let mut r = rec();
        r.target = Text::from("10.0.0.1:53/udp");
        r.detail = Some(serde_json::json!({"repeated": 999}));
        assert!(table_row(&r).contains(" 10.0.0.1:53/udp ×1000 "));
        r.detail = Some(serde_json::json!({"repeated": 0}));
        assert!(!table_row(&r).contains('×'));
    }

    #[test]
    fn rows_of_programs_started_without_their_layers_say_which() {
        let mut r = rec();
        r.target = Text::from("/bin/cat");
        r.detail = Some(serde_json::json!({
            "missing": ["seccomp", "no_new_privs", "capabilities:CAP_SYS_ADMIN", "a\nb"],
        }));
        let line = table_row(&r);
        assert!(
            line.contains(
                " /bin/cat (missing: seccomp no_new_privs capabilities:CAP_SYS_ADMIN a\\nb) "
            ),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn header_aligns_with_rows() {
        let header = table_header();
        let mut r = rec();
        r.agent.as_mut().unwrap().name = "claude".into();
        r.target = Text::from("/etc/shadow");
        let line = table_row(&r);
        for col in ["KIND", "VERDICT", "TARGET", "LAYER"] {
            let at = header.find(col).unwrap();
            assert_ne!(
                &line[at..at + 1],
                " ",
                "{col} misaligned:\n{header}\n{line}"
            );
            assert_eq!(&line[at - 1..at], " ");
        }
    }

    #[test]
    fn host_records_and_bad_times() {
        let mut r = rec();
        r.agent = None;
        r.process = None;
        r.time = "\x1b]0;pwned\x07".into();
        let line = table_row(&r);
        assert!(line.starts_with("\\x1b]0;pwned\\x07    - "));
        assert!(!line.contains('\x1b') && !line.contains('\x07'));
        assert!(line.contains("       - file"));
    }
}
