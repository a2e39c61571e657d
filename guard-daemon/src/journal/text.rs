//! Untrusted text: paths, arguments, `comm`, hostnames. The agent controls
//! these bytes, so they are kept exactly (the JSON form is lossless) and only
//! ever shown to a human through [`Text::escaped`], which cannot emit a
//! control byte to a terminal.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default byte caps. They bound the size of one record so a hostile agent
/// cannot bloat the journal with a 1 MiB path; what was cut is named in
/// [`crate::journal::Record::truncated`].
pub const TARGET_CAP: usize = 4096;
pub const COMM_CAP: usize = 64;
pub const EXE_CAP: usize = 4096;
pub const DETAIL_STRING_CAP: usize = 4096;
/// Cap for the short label fields (action, rule, layer, agent id/name/policy).
pub const LABEL_CAP: usize = 1024;

const BASE64_KEY: &str = "base64";

/// Bytes of unknown provenance and encoding.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Vec<u8>);

impl Text {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Text(bytes.into())
    }

    /// Keeps at most `max` bytes; the flag says whether anything was cut.
    pub fn capped(bytes: impl Into<Vec<u8>>, max: usize) -> (Self, bool) {
        let mut text = Text::new(bytes);
        let cut = text.cap(max);
        (text, cut)
    }

    /// In-place form of [`Text::capped`].
    pub fn cap(&mut self, max: usize) -> bool {
        if self.0.len() <= max {
            return false;
        }
        let end = match std::str::from_utf8(&self.0) {
            // Cutting inside a character would turn a plain JSON string into
            // the base64 form, which is harder for a reviewer to read.
            Ok(s) => floor_char_boundary(s, max),
            Err(_) => max,
        };
        self.0.truncate(end);
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The value as UTF-8, if it is.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Byte-wise substring test, the same semantics as the store's `instr`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        needle.is_empty() || self.0.windows(needle.len()).any(|w| w == needle)
    }

    /// One printable line that is safe to write to a terminal.
    pub fn escaped(&self) -> String {
        escape_bytes(&self.0)
    }
}

/// Largest char boundary `<= max` (std's `floor_char_boundary` is not stable
/// on every toolchain the project supports).
pub(crate) fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Escapes arbitrary bytes for display: `\n`, `\t`, `\r`, `\\`; other C0
/// controls, DEL and invalid UTF-8 as `\xNN`; C1 controls, bidi and
/// line-separator characters (which can reorder or break what a reviewer
/// sees) as `\u{XXXX}`.
///
/// Reversible, so two different byte strings never look the same: a
/// backslash is always the start of an escape, `\xNN` only ever stands for
/// a single byte (a C0 control, DEL, or a byte that is not UTF-8), and a
/// C1 control, which is a valid two-byte character, is written `\u{00NN}`
/// so it cannot be confused with the lone byte NN.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped_char(&mut out, c);
        }
        for &b in chunk.invalid() {
            push_hex_byte(&mut out, b);
        }
    }
    out
}

/// [`escape_bytes`] for values that are already `String`s (agent names,
/// rules): they may still contain controls.
pub fn escape_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped_char(&mut out, c);
    }
    out
}

fn push_escaped_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\\' => out.push_str("\\\\"),
        // C0 and DEL: one byte each.
        '\0'..='\x1f' | '\x7f' => push_hex_byte(out, c as u32 as u8),
        // The rest of the display hazards (C1, bidi, line separators).
        c if is_display_hazard(c) => {
            out.push_str("\\u{");
            let code = c as u32;
            for shift in [12, 8, 4, 0] {
                out.push(hex_digit((code >> shift) as u8 & 0xf, true));
            }
            out.push('}');
        }
        _ => out.push(c),
    }
}

/// Whether a character that JSON would carry as it is can still reorder or
/// break what a terminal shows: DEL, C1 controls (what 8-bit terminals read
/// as CSI etc.), bidi embeddings, overrides, isolates and marks (which can
/// make a path read differently from what it is), and U+2028/2029 (which
/// may render as line breaks).
fn is_display_hazard(c: char) -> bool {
    matches!(c,
        '\x7f'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'
        | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// serde_json's compact output, but with every display hazard (see
/// [`is_display_hazard`]) written as a `\uXXXX` escape. JSON parsers read
/// the same value back, so nothing is lost; a reviewer who pipes the output
/// to a terminal sees the escape, not a reordered line.
struct SafeFormatter;

impl serde_json::ser::Formatter for SafeFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_display_hazard(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Compact JSON of `value` with display hazards escaped (`\u202e`, ...).
pub fn to_safe_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, SafeFormatter);
    value.serialize(&mut ser)?;
    // The serializer writes only what `str` fragments and ASCII syntax
    // make, so the output is UTF-8; the lossy conversion never replaces.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn push_hex_byte(out: &mut String, b: u8) {
    out.push_str("\\x");
    out.push(hex_digit(b >> 4, false));
    out.push(hex_digit(b & 0xf, false));
}

fn hex_digit(nibble: u8, upper: bool) -> char {
    let table: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    char::from(table[usize::from(nibble & 0xf)])
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Text(\"{}\")", self.escaped())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.as_bytes().to_vec())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s.into_bytes())
    }
}

impl From<&[u8]> for Text {
    fn from(b: &[u8]) -> Self {
        Text(b.to_vec())
    }
}

impl From<Vec<u8>> for Text {
    fn from(b: Vec<u8>) -> Self {
        Text(b)
    }
}

#[cfg(unix)]
impl From<&std::ffi::OsStr> for Text {
    fn from(s: &std::ffi::OsStr) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        Text(s.as_bytes().to_vec())
    }
}

#[cfg(unix)]
impl From<&std::path::Path> for Text {
    fn from(p: &std::path::Path) -> Self {
        Text::from(p.as_os_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(s) => serializer.serialize_str(s),
            Err(_) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(BASE64_KEY, &BASE64.encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or {\"base64\": \"...\"}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text::from(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Text, E> {
        Ok(Text::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Text, E> {
        Ok(Text(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key != BASE64_KEY {
                return Err(de::Error::unknown_field(&key, &[BASE64_KEY]));
            }
            if bytes.is_some() {
                return Err(de::Error::duplicate_field(BASE64_KEY));
            }
            let encoded: Cow<'de, str> = map.next_value()?;
            let decoded = BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| de::Error::custom(format_args!("invalid base64 text: {e}")))?;
            bytes = Some(decoded);
        }
        bytes
            .map(Text)
            .ok_or_else(|| de::Error::missing_field(BASE64_KEY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of [`escape_bytes`]; the tests use it to show that the
    /// escaping loses nothing.
    fn unescape(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            match chars.next()? {
                'n' => out.push(b'\n'),
                't' => out.push(b'\t'),
                'r' => out.push(b'\r'),
                '\\' => out.push(b'\\'),
                'x' => {
                    let hex: String = chars.by_ref().take(2).collect();
                    out.push(u8::from_str_radix(&hex, 16).ok()?);
                }
                'u' => {
                    if chars.next()? != '{' {
                        return None;
                    }
                    let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => return None,
            }
        }
        Some(out)
    }

    #[test]
    fn escaping_is_reversible_so_different_bytes_never_look_alike() {
        // The pairs that a lossy or naive escape would merge.
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff],
            "\u{fffd}".into(),
            b"\\xff".to_vec(),
            vec![0x9b],
            "\u{9b}".into(),
            b"\\u{009B}".to_vec(),
            "a\u{202e}b".into(),
            b"a\\u{202E}b".to_vec(),
            vec![b'a', 0xc3],
            vec![b'a', 0xc3, 0xa9],
            b"\n".to_vec(),
            b"\\n".to_vec(),
        ];
        let shown: Vec<String> = cases.iter().map(|b| escape_bytes(b)).collect();
        for (i, a) in shown.iter().enumerate() {
            assert_eq!(unescape(a).as_deref(), Some(cases[i].as_slice()), "{a}");
            for b in &shown[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Every byte pair and a pseudo-random sample of longer strings.
        for x in 0..=255u8 {
            for y in 0..=255u8 {
                let b = [x, y, b'\\', x];
                assert_eq!(unescape(&escape_bytes(&b)).as_deref(), Some(&b[..]));
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..12)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Bias towards the interesting bytes.
                    [0x5c, 0xe2, 0x80, 0xae, 0xc2, 0x9b, b'x', b'{', seed as u8]
                        [(seed >> 40) as usize % 9]
                })
                .collect();
            assert_eq!(unescape(&escape_bytes(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn safe_json_escapes_display_hazards_and_reads_back_the_same() {
        let v = serde_json::json!({"p": "a\u{202e}b\u{2066}\u{7f}\u{9b}\u{200f}\n\"é"});
        let s = to_safe_json(&v).unwrap();
        assert_eq!(s, r#"{"p":"a\u202eb\u2066\u007f\u009b\u200f\n\"é"}"#);
        assert!(!s.chars().any(is_display_hazard));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn newline_and_ansi_escape_to_one_safe_line_and_round_trip() {
        let name = Text::from("a\nb\x1b[31mc");
        let shown = name.escaped();
        assert_eq!(shown, "a\\nb\\x1b[31mc");
        assert!(!shown.contains('\n'));
        assert!(!shown.contains('\x1b'));

        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"a\\nb\\u001b[31mc\"");
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, name);
        assert_eq!(back.as_bytes(), b"a\nb\x1b[31mc");
    }

    #[test]
    fn invalid_utf8_uses_base64_form_and_round_trips() {
        let raw = Text::new(vec![b'/', b't', 0xff, 0xfe, b'\n', 0x80]);
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, r#"{"base64":"L3T//gqA"}"#);
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, raw);
        assert_eq!(raw.escaped(), "/t\\xff\\xfe\\n\\x80");
    }

    #[test]
    fn both_forms_deserialize_and_bad_maps_are_rejected() {
        let a: Text = serde_json::from_str(r#""plain""#).unwrap();
        let b: Text = serde_json::from_str(r#"{"base64":"cGxhaW4="}"#).unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<Text>(r#"{"hex":"00"}"#).is_err());
        assert!(serde_json::from_str::<Text>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<Text>(r#"{"base64":"!!"}"#).is_err());
        assert!(serde_json::from_str::<Text>("17").is_err());
    }

    #[test]
    fn escapes_controls_del_c1_and_bidi() {
        let t = Text::from("x\t\r\\\0\x7f\u{9b}y\u{202e}z\u{2066}\u{2028}");
        assert_eq!(
            t.escaped(),
            "x\\t\\r\\\\\\x00\\x7f\\u{009B}y\\u{202E}z\\u{2066}\\u{2028}"
        );
        // Ordinary non-ASCII text stays readable.
        assert_eq!(Text::from("café/日本").escaped(), "café/日本");
        assert_eq!(escape_str("a\u{1b}"), "a\\x1b");
    }

    #[test]
    fn every_byte_escapes_without_controls() {
        let all: Vec<u8> = (0..=255u8).collect();
        let shown = Text::new(all).escaped();
        assert!(
            shown
                .chars()
                .all(|c| !c.is_control() && !('\u{2066}'..='\u{2069}').contains(&c))
        );
    }

    #[test]
    fn capping_reports_truncation_and_respects_char_boundaries() {
        let (t, cut) = Text::capped("abcdef", 4);
        assert!(cut);
        assert_eq!(t.as_bytes(), b"abcd");
        let (t, cut) = Text::capped("abc", 4);
        assert!(!cut);
        assert_eq!(t.as_bytes(), b"abc");
        // "é" is two bytes; cutting at 2 would split it.
        let (t, cut) = Text::capped("aéb", 2);
        assert!(cut);
        assert_eq!(t.as_str(), Some("a"));
        let (t, cut) = Text::capped(vec![0xff; 10], 3);
        assert!(cut);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn contains_is_bytewise() {
        let t = Text::new(vec![b'a', 0xff, b'b']);
        assert!(t.contains(&[0xff, b'b']));
        assert!(t.contains(b""));
        assert!(!t.contains(b"ab"));
    }
}
