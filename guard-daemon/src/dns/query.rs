//! The agent's side: what a query must look like, what the policy says
//! about its name, and the replies it gets.

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

use super::type_name;
use crate::policy::host::{DnsPlan, normalize_name};

/// Size of a DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// Largest DNS message (TCP's length prefix is 16 bits).
pub(crate) const MAX_MESSAGE: usize = 65535;
/// UDP answer size without EDNS (RFC 1035).
const CLASSIC_UDP: u16 = 512;
/// Largest UDP answer sent, whatever a client advertises: beyond it
/// fragments, and nothing on loopback needs more.
const MAX_UDP: u16 = 4096;
/// The payload size the resolver advertises in its replies (DNS flag day
/// 2020).
pub(crate) const OUR_PAYLOAD: u16 = 1232;

/// A query that passed the checks.
#[derive(Debug, Clone)]
pub(crate) struct AgentQuery {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question as asked (case kept: it is echoed back).
    pub question: Query,
    /// The asked name, normalized.
    pub name: String,
    /// The asked name as the agent wrote it (case kept, no trailing dot):
    /// what the journal shows of a refused name (data an agent hides in a
    /// name may be case-sensitive).
    pub asked: String,
    /// Present when the query carried an OPT record.
    pub edns: Option<ClientEdns>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientEdns {
    pub payload: u16,
    pub dnssec_ok: bool,
}

impl AgentQuery {
    pub fn qtype(&self) -> RecordType {
        self.question.query_type()
    }

    pub fn qtype_name(&self) -> String {
        type_name(self.qtype())
    }

    /// The largest UDP reply the client takes.
    pub fn udp_limit(&self) -> usize {
        let p = self
            .edns
            .map_or(CLASSIC_UDP, |e| e.payload.clamp(CLASSIC_UDP, MAX_UDP));
        usize::from(p)
    }

    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
}

/// Why a query was not answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

/// Checks a query from the agent: a standard query (QR clear, opcode
/// QUERY) for exactly one name of class IN, with nothing in the answer
/// and authority sections, and a name `normalize_name` accepts.
pub(crate) fn parse_query(bytes: &[u8]) -> Result<AgentQuery, Malformed> {
    if bytes.len() < HEADER_LEN {
        return Err(malformed(format!(
            "{} bytes, shorter than a DNS header",
            bytes.len()
        )));
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(malformed(format!(
            "{} bytes, longer than a DNS message",
            bytes.len()
        )));
    }
    // The header alone first: the counts decide whether the rest is
    // worth decoding (hickory reserves room for every question counted).
    let header =
        Header::read(&mut BinDecoder::new(bytes)).map_err(|e| malformed(format!("header: {e}")))?;
    let meta = header.metadata;
    if meta.message_type != MessageType::Query {
        return Err(malformed("a response (QR set), not a query"));
    }
    if meta.op_code != OpCode::Query {
        return Err(malformed(format!(
            "opcode {}, not QUERY",
            u8::from(meta.op_code)
        )));
    }
    if header.counts.queries != 1 {
        return Err(malformed(format!(
            "{} questions, not one",
            header.counts.queries
        )));
    }
    if header.counts.answers != 0 || header.counts.authorities != 0 {
        return Err(malformed("records in the answer or authority section"));
    }
    let msg = Message::from_vec(bytes).map_err(|e| malformed(format!("{e}")))?;
    let Some(question) = msg.queries.first().cloned() else {
        return Err(malformed("no question"));
    };
    if question.query_class() != DNSClass::IN {
        return Err(malformed(format!(
            "class {}, not IN",
            u16::from(question.query_class())
        )));
    }
    let ascii = question.name().to_ascii();
    let Some(name) = normalize_name(&ascii) else {
        return Err(malformed(format!(
            "name {:?} is no host name",
            &ascii[..crate::journal::floor_char_boundary(&ascii, 80)]
        )));
    };
    let edns = msg.edns.as_ref().map(|e| ClientEdns {
        payload: e.max_payload(),
        dnssec_ok: e.flags().dnssec_ok,
    });
    Ok(AgentQuery {
        id: meta.id,
        recursion_desired: meta.recursion_desired,
        checking_disabled: meta.checking_disabled,
        asked: ascii.strip_suffix('.').unwrap_or(&ascii).to_owned(),
        question,
        name,
        edns,
    })
}

/// What the policy says about a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// AXFR, IXFR, ANY: refused whatever the name.
    TypeRefused,
    /// No host rule matches the name.
    NotAllowed,
    /// The rules (`HostRule::rule`) matching the name, in policy order.
    Allowed(Vec<u16>),
}

pub(crate) fn decide(plan: &DnsPlan, q: &AgentQuery) -> Decision {
    if matches!(
        q.qtype(),
        RecordType::AXFR | RecordType::IXFR | RecordType::ANY
    ) {
        return Decision::TypeRefused;
    }
    let rules = rules_of(plan, &q.name);
    if rules.is_empty() {
        Decision::NotAllowed
    } else {
        Decision::Allowed(rules)
    }
}

/// The rule numbers of the host rules matching a normalized name, sorted
/// and without repeats.
pub(crate) fn rules_of(plan: &DnsPlan, name: &str) -> Vec<u16> {
    let mut rules: Vec<u16> = plan.rules_for(name).map(|h| h.rule).collect();
    rules.sort_unstable();
    rules.dedup();
    rules
}

/// The skeleton of every reply to `q`: its id, its question, RD and CD
/// copied, recursion available, and an OPT record if the query had one.
pub(crate) fn reply_to(q: &AgentQuery, rcode: ResponseCode) -> Message {
    let mut m = Message::response(q.id, OpCode::Query);
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.checking_disabled = q.checking_disabled;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_query(q.question.clone());
    if let Some(e) = q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        edns.set_dnssec_ok(e.dnssec_ok);
        m.set_edns(edns);
    }
    m
}

/// The bytes of a reply for the agent. Over UDP a reply larger than the
/// client takes goes back truncated (TC set, no records) so the client
/// asks again over TCP; over TCP a reply must fit the length prefix.
pub(crate) fn encode_reply(q: &AgentQuery, m: &Message, tcp: bool) -> Result<Vec<u8>, String> {
    let bytes = m.to_vec().map_err(|e| format!("encoding the reply: {e}"))?;
    if tcp {
        if bytes.len() > MAX_MESSAGE {
            return Err(format!(
                "reply of {} bytes does not fit a DNS message",
                bytes.len()
            ));
        }
        return Ok(bytes);
    }
    if bytes.len() <= q.udp_limit() {
        return Ok(bytes);
    }
    let mut t = reply_to(q, m.metadata.response_code);
    t.metadata.truncation = true;
    t.metadata.authentic_data = m.metadata.authentic_data;
    t.to_vec()
        .map_err(|e| format!("encoding the truncated reply: {e}"))
}

/// A reply carrying only `rcode` (REFUSED, SERVFAIL).
pub(crate) fn error_reply(q: &AgentQuery, rcode: ResponseCode, tcp: bool) -> Option<Vec<u8>> {
    encode_reply(q, &reply_to(q, rcode), tcp).ok()
}

/// Writes one DNS message on a TCP stream: its 2-byte length, then itself
/// (RFC 1035, 4.2.2). A message over 65,535 bytes is an error.
pub(crate) async fn write_framed<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    w.write_all(&out).await
}

/// Reads one length-prefixed DNS message from a TCP stream.
pub(crate) async fn read_framed<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{DNSClass, Name, RecordType},
    };

    use super::*;
    use crate::policy::host::{HostPattern, HostRule};

    pub(crate) fn plan(patterns: &[(&str, u16)]) -> DnsPlan {
        DnsPlan {
            hosts: patterns
                .iter()
                .map(|(p, rule)| HostRule {
                    rule: *rule,
                    pattern: HostPattern::parse(p).unwrap(),
                    ports: vec![(443, 443)],
                    protos: 1,
                })
                .collect(),
            ttl_floor: Duration::from_secs(30),
            ttl_ceiling: Duration::from_secs(3600),
            max_addresses: 4,
            answers_allowed: vec![],
        }
    }

    pub(crate) fn query_msg(name: &str, t: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    pub(crate) fn query_bytes(name: &str, t: RecordType) -> Vec<u8> {
        query_msg(name, t).to_vec().unwrap()
    }

    fn why(bytes: &[u8]) -> String {
        parse_query(bytes).unwrap_err().0
    }

    #[test]
    fn a_plain_query_parses() {
        let q = parse_query(&query_bytes("API.Example.com.", RecordType::AAAA)).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name, "api.example.com");
        assert_eq!(q.qtype(), RecordType::AAAA);
        assert!(q.recursion_desired);
        assert_eq!(q.udp_limit(), 512);
        // The case is kept for the echo.
        assert_eq!(q.question.name().to_ascii(), "API.Example.com.");
    }

    #[test]
    fn malformed_queries_say_why() {
        assert!(why(&[0; 5]).contains("shorter"));
        let mut resp = query_msg("a.example.com.", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert!(why(&resp.to_vec().unwrap()).contains("QR"));
        let mut notify = query_msg("a.example.com.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        assert!(why(&notify.to_vec().unwrap()).contains("opcode 4"));
        let mut two = query_msg("a.example.com.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.example.com.").unwrap(),
            RecordType::A,
        ));
        assert!(why(&two.to_vec().unwrap()).contains("2 questions"));
        let none = Message::new(1, MessageType::Query, OpCode::Query);
        assert!(why(&none.to_vec().unwrap()).contains("0 questions"));
        let mut chaos = query_msg("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert!(why(&chaos.to_vec().unwrap()).contains("class 3"));
        // A label with a byte no host name has.
        let odd = Name::from_labels(vec![b"a b".to_vec(), b"com".to_vec()]).unwrap();
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(odd, RecordType::A));
        assert!(why(&m.to_vec().unwrap()).contains("no host name"));
        // The root.
        assert!(why(&query_bytes(".", RecordType::NS)).contains("no host name"));
    }

    #[test]
    fn counted_but_missing_questions_and_loops_are_malformed() {
        // QDCOUNT 1, no question bytes.
        let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        assert!(!why(&b).is_empty());
        // A name that points at itself.
        b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(!why(&b).is_empty());
        // A forward pointer.
        let mut f = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        f.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1, 1, b'a', 0]);
        assert!(!why(&f).is_empty());
        // Thousands of questions counted: refused before decoding.
        let mut many = vec![0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        many.extend_from_slice(&[0; 20]);
        assert!(why(&many).contains("65535 questions"));
        let mut ans = query_bytes("a.example.com.", RecordType::A);
        ans[7] = 1;
        assert!(why(&ans).contains("answer"));
    }

    #[test]
    fn decisions() {
        let p = plan(&[
            ("api.example.com", 3),
            ("*.example.com", 1),
            ("*.example.com", 1),
        ]);
        let d = |n: &str, t| decide(&p, &parse_query(&query_bytes(n, t)).unwrap());
        assert_eq!(
            d("api.example.com.", RecordType::A),
            Decision::Allowed(vec![1, 3])
        );
        assert_eq!(
            d("x.example.com.", RecordType::TXT),
            Decision::Allowed(vec![1])
        );
        assert_eq!(d("x.y.example.com.", RecordType::A), Decision::NotAllowed);
        for t in [RecordType::ANY, RecordType::AXFR, RecordType::IXFR] {
            assert_eq!(d("api.example.com.", t), Decision::TypeRefused);
        }
    }

    #[test]
    fn udp_limit_follows_edns_within_bounds() {
        for (adv, want) in [(100u16, 512usize), (1232, 1232), (65000, 4096)] {
            let mut m = query_msg("a.example.com.", RecordType::A);
            let mut e = Edns::new();
            e.set_max_payload(adv);
            m.set_edns(e);
            let q = parse_query(&m.to_vec().unwrap()).unwrap();
            assert_eq!(q.udp_limit(), want, "{adv}");
        }
    }

    #[test]
    fn large_udp_replies_are_truncated() {
        let q = parse_query(&query_bytes("a.example.com.", RecordType::TXT)).unwrap();
        let mut m = reply_to(&q, ResponseCode::NoError);
        for i in 0..40u8 {
            m.add_answer(hickory_proto::rr::Record::from_rdata(
                q.question.name().clone(),
                60,
                hickory_proto::rr::RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![format!(
                    "{i:040}"
                )])),
            ));
        }
        let udp = Message::from_vec(&encode_reply(&q, &m, false).unwrap()).unwrap();
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        assert_eq!(udp.metadata.id, 0x1234);
        assert_eq!(udp.queries, vec![q.question.clone()]);
        let tcp = Message::from_vec(&encode_reply(&q, &m, true).unwrap()).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 40);
    }

    #[test]
    fn error_replies_echo_the_question() {
        let mut m = query_msg("X.example.com.", RecordType::A);
        m.set_edns(Edns::new());
        let q = parse_query(&m.to_vec().unwrap()).unwrap();
        let r = Message::from_vec(&error_reply(&q, ResponseCode::Refused, false).unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.queries[0].name().to_ascii(), "X.example.com.");
        assert!(r.edns.is_some());
        assert!(r.answers.is_empty());
    }
}
