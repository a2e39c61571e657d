//! `[process]`: resource limits, the user to run as and the capabilities to
//! keep.

use toml::Spanned;

use super::PolicyError;
use super::parse::{Doc, RawProcess, Scalar};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    Name(String),
    Uid(u32),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcPlan {
    pub max_processes: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// Thousandths of one core.
    pub cpu_millicores: Option<u32>,
    pub user: Option<UserSpec>,
    /// Capabilities to keep, as `CAP_X` names, without duplicates, in the
    /// order given.
    pub capabilities: Vec<String>,
    /// `inotify = true`: the agent may watch files and directories. Off by
    /// default because Landlock does not mediate `inotify_add_watch`: a
    /// watch on a directory outside every grant reports the names of the
    /// files created, opened and changed there (issue 8, section 6).
    pub inotify: bool,
}

/// Linux capability names, indexed by capability number (0..=40).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability given as `CAP_X`.
pub fn capability_number(name: &str) -> Option<u8> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .and_then(|i| u8::try_from(i).ok())
}

const MAX_PROCESSES: i64 = 1_000_000;
const MIN_MEMORY: u64 = 1 << 20;
const MAX_CPU_CORES: f64 = 1024.0;

pub(crate) fn validate(doc: &Doc, raw: RawProcess, errs: &mut Vec<PolicyError>) -> ProcPlan {
    let mut plan = ProcPlan {
        max_processes: checked(doc, raw.max_processes.as_ref(), max_processes, errs),
        memory_bytes: checked(doc, raw.memory.as_ref(), memory, errs),
        cpu_millicores: checked(doc, raw.cpu.as_ref(), cpu, errs),
        user: checked(doc, raw.user.as_ref(), user, errs),
        inotify: raw.inotify.unwrap_or(false),
        capabilities: Vec::new(),
    };
    for c in raw.capabilities.unwrap_or_default() {
        if let Some(name) = checked(doc, Some(&c), |s: &String| capability(s), errs)
            && !plan.capabilities.contains(&name)
        {
            plan.capabilities.push(name);
        }
    }
    plan
}

/// `check` of a value given: its result, or `None` with the error (at the
/// value) added to `errs`, so that the other values are still checked.
fn checked<V, T>(
    doc: &Doc,
    v: Option<&Spanned<V>>,
    check: impl Fn(&V) -> Result<T, String>,
    errs: &mut Vec<PolicyError>,
) -> Option<T> {
    let v = v?;
    check(v.get_ref())
        .map_err(|m| errs.push(doc.error_at(v.span().start, m)))
        .ok()
}

fn max_processes(v: &Scalar) -> Result<u32, String> {
    match v {
        Scalar::Int(n) if (1..=MAX_PROCESSES).contains(n) => {
            u32::try_from(*n).map_err(|_| String::from("max_processes out of range"))
        }
        Scalar::Int(n) => Err(format!(
            "max_processes {n} out of range: expected 1-{MAX_PROCESSES}"
        )),
        _ => Err(format!(
            "invalid max_processes {v}: expected an integer 1-{MAX_PROCESSES}"
        )),
    }
}

fn memory(v: &Scalar) -> Result<u64, String> {
    let expected =
        "expected bytes as an integer or a string such as \"512M\" (suffix K, M, G or T)";
    let bytes = match v {
        Scalar::Int(n) => {
            u64::try_from(*n).map_err(|_| format!("memory {n} is negative: {expected}"))?
        }
        Scalar::Str(s) => {
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, suffix) = s.split_at(split);
            let shift = match suffix {
                "" => 0,
                "K" | "k" => 10,
                "M" | "m" => 20,
                "G" | "g" => 30,
                "T" | "t" => 40,
                _ => return Err(format!("invalid memory {s:?}: {expected}")),
            };
            if digits.is_empty() {
                return Err(format!("invalid memory {s:?}: {expected}"));
            }
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1 << shift))
                .ok_or_else(|| format!("memory {s:?} is too large"))?
        }
        _ => return Err(format!("invalid memory {v}: {expected}")),
    };
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory {v} is below the minimum of 1M ({MIN_MEMORY} bytes)"
        ));
    }
    Ok(bytes)
}

fn cpu(v: &Scalar) -> Result<u32, String> {
    let expected =
        "expected cores as a number in (0, 1024] or a percentage of one core such as \"50%\"";
    let cores = match v {
        // Precision loss on huge integers does not matter: they are refused.
        Scalar::Int(n) => *n as f64,
        Scalar::Float(x) => *x,
        Scalar::Str(s) => {
            let number = s.strip_suffix('%').filter(|n| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && n.bytes().filter(|&b| b == b'.').count() <= 1
                    && n != &"."
            });
            match number.and_then(|n| n.parse::<f64>().ok()) {
                Some(p) => p / 100.0,
                None => return Err(format!("invalid cpu {s:?}: {expected}")),
            }
        }
        Scalar::Bool(_) => return Err(format!("invalid cpu {v}: {expected}")),
    };
    // Written so that NaN fails too.
    if !(cores > 0.0 && cores <= MAX_CPU_CORES) {
        return Err(format!("cpu {v} out of range: {expected}"));
    }
    let milli = (cores * 1000.0).round();
    if milli < 1.0 {
        return Err(format!("cpu {v} is less than one millicore (0.001 cores)"));
    }
    // In 1..=1_024_000 here, so the saturating cast is exact.
    Ok(milli as u32)
}

fn user(v: &Scalar) -> Result<UserSpec, String> {
    let uid = |text: &str| -> Result<UserSpec, String> {
        match text.parse::<u32>() {
            // (uid_t)-1 means "unchanged" to setresuid.
            Ok(u) if u != u32::MAX => Ok(UserSpec::Uid(u)),
            _ => Err(format!(
                "uid {text} out of range: expected 0-{}",
                u32::MAX - 1
            )),
        }
    };
    match v {
        Scalar::Int(n) => uid(&n.to_string()),
        Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => uid(s),
        Scalar::Str(s)
            if (1..=32).contains(&s.len())
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(UserSpec::Name(s.clone()))
        }
        _ => Err(format!(
            "invalid user {v}: expected a user name (up to 32 characters of A-Z a-z 0-9 . _ -, \
             not starting with -) or a numeric uid"
        )),
    }
}

/// Accepts `CAP_NET_ADMIN` and `net_admin`; returns `CAP_NET_ADMIN`.
fn capability(s: &str) -> Result<String, String> {
    let lower_plain = !s.is_empty()
        && !s.starts_with("cap_")
        && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let name = if lower_plain {
        format!("CAP_{}", s.to_ascii_uppercase())
    } else {
        s.to_owned()
    };
    if capability_number(&name).is_some() {
        return Ok(name);
    }
    let upper = s.to_ascii_uppercase();
    let guess = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if capability_number(&guess).is_some() {
        return Err(format!("unknown capability {s:?}: did you mean {guess:?}?"));
    }
    Err(format!(
        "unknown capability {s:?}: expected a Linux capability name such as \
         \"CAP_NET_BIND_SERVICE\" or \"net_bind_service\""
    ))
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;

    fn parse(body: &str) -> Result<ProcPlan, PolicyError> {
        let p = Policy::parse(
            &format!("[policy]\nname = \"t\"\n[process]\n{body}\n"),
            "p.toml",
        )?;
        Ok(p.compile(&super::super::Vars {
            workdir: "/w".into(),
            home: "/h".into(),
            tmp: "/t".into(),
        })?
        .process)
    }

    fn err(body: &str) -> String {
        parse(body).unwrap_err().to_string()
    }

    #[test]
    fn full_section() {
        let p = parse(
            "max_processes = 64\nmemory = \"512M\"\ncpu = 0.5\nuser = \"nobody\"\n\
             capabilities = [\"CAP_NET_BIND_SERVICE\", \"chown\", \"CAP_CHOWN\"]",
        )
        .unwrap();
        assert_eq!(
            p,
            ProcPlan {
                max_processes: Some(64),
                memory_bytes: Some(512 << 20),
                cpu_millicores: Some(500),
                user: Some(UserSpec::Name("nobody".into())),
                capabilities: vec!["CAP_NET_BIND_SERVICE".into(), "CAP_CHOWN".into()],
                inotify: false,
            }
        );
        assert_eq!(parse("").unwrap(), ProcPlan::default());
        assert!(parse("inotify = true").unwrap().inotify);
        assert!(err("inotify = 1").contains("p.toml:"));
    }

    #[test]
    fn memory_forms() {
        let m = |v: &str| parse(&format!("memory = {v}")).map(|p| p.memory_bytes.unwrap());
        assert_eq!(m("1048576").unwrap(), 1 << 20);
        assert_eq!(m("\"2G\"").unwrap(), 2 << 30);
        assert_eq!(m("\"1T\"").unwrap(), 1 << 40);
        assert_eq!(m("\"4096K\"").unwrap(), 4 << 20);
        assert_eq!(m("\"1048576\"").unwrap(), 1 << 20);
        assert_eq!(
            err("memory = \"1023K\""),
            "p.toml:4:10: memory \"1023K\" is below the minimum of 1M (1048576 bytes)"
        );
        assert!(err("memory = 1000").contains("below the minimum"));
        assert!(err("memory = -5").contains("negative"));
        assert!(err("memory = \"5MB\"").contains("invalid memory \"5MB\""));
        assert!(err("memory = \"M\"").contains("invalid memory"));
        assert!(err("memory = \"\"").contains("invalid memory"));
        assert!(err("memory = 1.5").contains("invalid memory 1.5"));
        assert!(err("memory = \"99999999999999T\"").contains("too large"));
        assert!(err("memory = \"999999999999999999999999\"").contains("too large"));
    }

    #[test]
    fn cpu_forms() {
        let c = |v: &str| parse(&format!("cpu = {v}")).map(|p| p.cpu_millicores.unwrap());
        assert_eq!(c("0.5").unwrap(), 500);
        assert_eq!(c("2").unwrap(), 2000);
        assert_eq!(c("1024").unwrap(), 1_024_000);
        assert_eq!(c("\"50%\"").unwrap(), 500);
        assert_eq!(c("\"12.5%\"").unwrap(), 125);
        assert_eq!(c("\"250%\"").unwrap(), 2500);
        assert_eq!(
            err("cpu = 0"),
            "p.toml:4:7: cpu 0 out of range: expected cores as a number in (0, 1024] or a \
             percentage of one core such as \"50%\""
        );
        for bad in ["-1", "1024.5", "nan", "inf", "\"0%\"", "\"102500%\""] {
            assert!(
                err(&format!("cpu = {bad}")).contains("out of range"),
                "{bad}"
            );
        }
        for bad in ["\"50\"", "\"%\"", "\".%\"", "\"1.2.3%\"", "\"-5%\"", "true"] {
            assert!(
                err(&format!("cpu = {bad}")).contains("invalid cpu"),
                "{bad}"
            );
        }
        assert!(err("cpu = 0.0001").contains("less than one millicore"));
    }

    #[test]
    fn limits_and_users() {
        assert_eq!(
            parse("max_processes = 1000000").unwrap().max_processes,
            Some(1_000_000)
        );
        assert_eq!(
            err("max_processes = 0"),
            "p.toml:4:17: max_processes 0 out of range: expected 1-1000000"
        );
        assert!(err("max_processes = 1000001").contains("out of range"));
        assert!(err("max_processes = \"64\"").contains("invalid max_processes \"64\""));
        let u = |v: &str| parse(&format!("user = {v}")).map(|p| p.user.unwrap());
        assert_eq!(u("1000").unwrap(), UserSpec::Uid(1000));
        assert_eq!(u("\"0\"").unwrap(), UserSpec::Uid(0));
        assert_eq!(
            u("\"www-data\"").unwrap(),
            UserSpec::Name("www-data".into())
        );
        assert!(err("user = 4294967295").contains("uid 4294967295 out of range"));
        assert!(err("user = -1").contains("uid -1 out of range"));
        assert!(err("user = \"\"").contains("invalid user"));
        assert!(err("user = \"a b\"").contains("invalid user \"a b\""));
        assert!(err("user = \"-x\"").contains("invalid user"));
        assert!(err("user = 1.0").contains("invalid user 1"));
    }

    #[test]
    fn capabilities() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(
            capability("net_bind_service").unwrap(),
            "CAP_NET_BIND_SERVICE"
        );
        assert_eq!(capability("CAP_BPF").unwrap(), "CAP_BPF");
        assert_eq!(
            err("capabilities = [\"CAP_CHOWN\", \"NET_ADMIN\"]"),
            "p.toml:4:30: unknown capability \"NET_ADMIN\": did you mean \"CAP_NET_ADMIN\"?"
        );
        assert!(
            err("capabilities = [\"cap_net_admin\"]").contains("did you mean \"CAP_NET_ADMIN\"")
        );
        assert!(err("capabilities = [\"CAP_FLY\"]").contains("expected a Linux capability name"));
        assert!(err("capabilities = [\"\"]").contains("unknown capability"));
        assert!(err("capabilities = \"CAP_BPF\"").contains("expected a sequence"));
    }
}
