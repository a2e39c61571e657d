//! The serde schema of policy files and bases, and the translation of byte
//! offsets and toml errors into `file:line:col` errors.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};
use toml::Spanned;

use super::{Location, Origin, PolicyError, Src};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy document")]
pub(crate) struct RawFile {
    pub policy: Option<Spanned<RawPolicy>>,
    pub network: Option<RawNetwork>,
    pub filesystem: Option<RawFs>,
    pub process: Option<RawProcess>,
}

/// A base holds rules only: it has no name or mode of its own and cannot
/// include further bases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a base document")]
pub(crate) struct RawBase {
    pub network: Option<RawNetwork>,
    pub filesystem: Option<RawBaseFs>,
}

/// A user's include file: rules, and further includes (bases or files),
/// like a base; no name, mode or process limits of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an include file")]
pub(crate) struct RawInclude {
    pub include: Option<Vec<Spanned<String>>>,
    pub network: Option<RawNetwork>,
    pub filesystem: Option<RawBaseFs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policy] table")]
pub(crate) struct RawPolicy {
    pub name: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub include: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [network] table")]
pub(crate) struct RawNetwork {
    pub allow: Option<Vec<Spanned<RawNetRule>>>,
    pub listen: Option<Vec<Spanned<RawListenRule>>>,
    /// Read everywhere so that a base or include file holding it gets a
    /// precise error rather than "unknown key".
    pub dns: Option<Spanned<RawDns>>,
}

/// `[network.dns]`: how guardd's resolver for the agent treats answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [network.dns] table")]
pub(crate) struct RawDns {
    pub ttl_floor: Option<Spanned<Scalar>>,
    pub ttl_ceiling: Option<Spanned<Scalar>>,
    pub max_addresses: Option<Spanned<Scalar>>,
    pub answers_allowed: Option<Vec<Spanned<String>>>,
}

/// A local address and ports the agent may bind and listen on.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listen rule table like { cidr = \"127.0.0.1/32\", ports = [8000] }"
)]
pub(crate) struct RawListenRule {
    pub cidr: Option<Spanned<String>>,
    /// Never valid here; read so that the error can say why.
    pub host: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<Scalar>>>>,
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a network rule table like { cidr = \"10.0.0.0/8\", ports = [443] }"
)]
pub(crate) struct RawNetRule {
    pub cidr: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub unix: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<Scalar>>>>,
    pub protocol: Option<Spanned<String>>,
}

pub(crate) type PathList = Option<Vec<Spanned<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [filesystem] table")]
pub(crate) struct RawFs {
    pub read: PathList,
    pub write: PathList,
    pub exec: PathList,
    pub allow_write_exec: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [filesystem] table")]
pub(crate) struct RawBaseFs {
    pub read: PathList,
    pub write: PathList,
    pub exec: PathList,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [process] table")]
pub(crate) struct RawProcess {
    pub max_processes: Option<Spanned<Scalar>>,
    pub memory: Option<Spanned<Scalar>>,
    pub cpu: Option<Spanned<Scalar>>,
    pub user: Option<Spanned<Scalar>>,
    pub capabilities: Option<Vec<Spanned<String>>>,
    pub inotify: Option<bool>,
}

/// A value that may be written as a number or a string (ports, sizes, cpu
/// shares, users). Accepting every scalar here lets the validators explain
/// what the field expects instead of serde's generic type mismatch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                // TOML integers are i64; saturating keeps huge values out of range.
                Ok(Scalar::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One source text and the name it is reported under.
pub(crate) struct Doc<'a> {
    text: &'a str,
    pub file: String,
    line_starts: Vec<usize>,
    /// For an include file: the `include` entry that named it, which
    /// prefixes the ids of its rules (`./team.toml filesystem.read[0]`).
    pub include: Option<String>,
}

impl<'a> Doc<'a> {
    pub fn new(text: &'a str, file: String) -> Doc<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Doc {
            text,
            file,
            line_starts,
            include: None,
        }
    }

    /// Where an item at `offset` was written.
    pub fn src(&self, origin: Origin, offset: usize) -> Src {
        Src {
            origin,
            loc: self.location(offset),
            file: self
                .include
                .as_ref()
                .map(|_| std::sync::Arc::from(self.file.as_str())),
        }
    }

    /// The id of entry `i` of `list` (`filesystem.read`, `network.allow`).
    pub fn rule_id(&self, origin: Origin, list: &str, i: usize) -> String {
        match (origin, &self.include) {
            (Origin::Base(name), _) => format!("base:{name} {list}[{i}]"),
            (Origin::Policy, Some(inc)) => format!("{inc} {list}[{i}]"),
            (Origin::Policy, None) => format!("{list}[{i}]"),
        }
    }

    /// Line and column (in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let col = match self.text.get(start..offset) {
            Some(s) => s.chars().count(),
            // Not on a char boundary (should not happen with toml spans).
            None => offset.saturating_sub(start),
        };
        Location {
            line: u32::try_from(line + 1).unwrap_or(u32::MAX),
            col: u32::try_from(col + 1).unwrap_or(u32::MAX),
        }
    }

    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            location: Some(self.location(offset)),
            message: message.into(),
        }
    }

    pub fn parse_policy(&self) -> Result<RawFile, PolicyError> {
        toml::from_str(self.text).map_err(|e| self.toml_error(&e))
    }

    pub fn parse_base(&self) -> Result<RawBase, PolicyError> {
        toml::from_str(self.text).map_err(|e| self.toml_error(&e))
    }

    pub fn parse_include(&self) -> Result<RawInclude, PolicyError> {
        toml::from_str(self.text).map_err(|e| self.toml_error(&e))
    }

    fn toml_error(&self, e: &toml::de::Error) -> PolicyError {
        let span = e.span();
        let raw = e.message().trim();
        let mut message = rewrite_unknown_key(raw).unwrap_or_else(|| raw.replace('\n', "; "));
        if raw == "duplicate key" {
            let key = span.as_ref().and_then(|s| self.text.get(s.clone()));
            if let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) {
                message = format!("duplicate key `{key}`");
            }
        }
        self.error_at(span.map_or(0, |s| s.start), message)
    }
}

/// Turns serde's "unknown field `x`, expected `a` or `b`" into a message
/// that names the table the key was found in.
fn rewrite_unknown_key(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once("`, ")?;
    let expected: Vec<&str> = if let Some(list) = rest.strip_prefix("expected one of ") {
        list.split(", ").map(|k| k.trim_matches('`')).collect()
    } else if let Some(pair) = rest.strip_prefix("expected ") {
        pair.split(" or ").map(|k| k.trim_matches('`')).collect()
    } else {
        Vec::new()
    };
    let mut sorted = expected.clone();
    sorted.sort_unstable();
    // A listen rule reads `host` only to refuse it: not a key to suggest.
    let expected: Vec<&str> = if sorted == ["cidr", "host", "ports", "protocol"] {
        expected.into_iter().filter(|k| *k != "host").collect()
    } else {
        expected
    };
    let place = match sorted.as_slice() {
        ["filesystem", "network", "policy", "process"] | ["filesystem", "network"] => {
            " at the top level"
        }
        ["filesystem", "include", "network"] => " at the top level of an include file",
        ["include", "mode", "name"] => " in [policy]",
        ["allow", "dns", "listen"] => " in [network]",
        ["cidr", "host", "ports", "protocol", "unix"] => " in a [network] allow rule",
        ["cidr", "host", "ports", "protocol"] => " in a [network] listen rule",
        [
            "answers_allowed",
            "max_addresses",
            "ttl_ceiling",
            "ttl_floor",
        ] => " in [network.dns]",
        ["allow_write_exec", "exec", "read", "write"] | ["exec", "read", "write"] => {
            " in [filesystem]"
        }
        [
            "capabilities",
            "cpu",
            "inotify",
            "max_processes",
            "memory",
            "user",
        ] => " in [process]",
        _ => "",
    };
    if expected.is_empty() {
        return Some(format!("unknown key `{key}`{place}"));
    }
    Some(format!(
        "unknown key `{key}`{place}; expected one of: {}",
        expected.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let doc = Doc::new(text, "p.toml".into());
        match doc.parse_policy() {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn locations_are_one_based_and_count_chars() {
        let doc = Doc::new("ab\ncdé\nxyz", "f".into());
        assert_eq!(doc.location(0), Location { line: 1, col: 1 });
        assert_eq!(doc.location(2), Location { line: 1, col: 3 });
        assert_eq!(doc.location(3), Location { line: 2, col: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(doc.location(7), Location { line: 2, col: 4 });
        assert_eq!(doc.location(8), Location { line: 3, col: 1 });
        assert_eq!(doc.location(999), Location { line: 3, col: 4 });
    }

    #[test]
    fn unknown_keys_name_their_table() {
        assert_eq!(
            err("[network]\nfoo = 1\n"),
            "p.toml:2:1: unknown key `foo` in [network]; expected one of: allow, listen, dns"
        );
        assert_eq!(
            err("[network]\nlisten = [{ cidr = \"127.0.0.1\", unix = \"/x\" }]\n"),
            "p.toml:2:33: unknown key `unix` in a [network] listen rule; \
             expected one of: cidr, ports, protocol"
        );
        assert_eq!(
            err("[policy]\nname = \"x\"\n  color = 1\n"),
            "p.toml:3:3: unknown key `color` in [policy]; expected one of: name, mode, include"
        );
        assert_eq!(
            err("[network]\nallow = [{ cidr = \"1.2.3.4\", port = 1 }]\n"),
            "p.toml:2:30: unknown key `port` in a [network] allow rule; \
             expected one of: cidr, host, unix, ports, protocol"
        );
        assert!(err("zzz = 1").starts_with("p.toml:1:1: unknown key `zzz` at the top level"));
        assert!(err("[process]\nnice = 1").contains("in [process]"));
        assert!(err("[filesystem]\nrw = []").contains("in [filesystem]"));
    }

    #[test]
    fn type_and_syntax_errors_have_locations() {
        assert_eq!(
            err("[policy]\nname = 5\n"),
            "p.toml:2:8: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            err("[network]\nallow = [{ cidr = \"1.2.3.4\", ports = \"443\" }]\n"),
            "p.toml:2:38: invalid type: string \"443\", expected a sequence"
        );
        assert!(err("[policy\n").starts_with("p.toml:1:8: "));
        assert_eq!(
            err("[policy]\nname = \"a\"\nname = \"b\"\n"),
            "p.toml:3:1: duplicate key `name`"
        );
        assert!(err("[process]\ncpu = [1]").contains("expected a number or a string"));
    }

    #[test]
    fn scalars_accept_every_scalar_type() {
        let doc = Doc::new(
            "[process]\nmax_processes = 1\nmemory = \"1G\"\ncpu = 0.5\nuser = true\n",
            "f".into(),
        );
        let raw = doc.parse_policy().unwrap();
        let p = raw.process.unwrap();
        assert_eq!(p.max_processes.unwrap().into_inner(), Scalar::Int(1));
        assert_eq!(p.memory.unwrap().into_inner(), Scalar::Str("1G".into()));
        assert_eq!(p.cpu.unwrap().into_inner(), Scalar::Float(0.5));
        assert_eq!(p.user.unwrap().into_inner(), Scalar::Bool(true));
    }
}
