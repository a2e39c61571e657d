//! Asking the upstream servers: a fresh query for each try, and only a
//! reply that is the answer to it (from that server, with that id, for
//! that question) is taken.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder},
};
use tokio::{
    net::{TcpStream, UdpSocket},
    time::{Instant, timeout_at},
};

use super::{
    ResolverConfig,
    query::{AgentQuery, HEADER_LEN, MAX_MESSAGE, OUR_PAYLOAD, read_framed, write_framed},
};

/// The query sent upstream for `q`: our id, the agent's question, RD set,
/// CD copied, and an OPT record with our payload size and the agent's DO
/// bit. The agent's EDNS options (cookies, client subnet) stay behind.
pub(crate) fn upstream_query(q: &AgentQuery, id: u16) -> Result<Vec<u8>, String> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = q.checking_disabled;
    m.add_query(q.question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(OUR_PAYLOAD);
    edns.set_dnssec_ok(q.dnssec_ok());
    m.set_edns(edns);
    m.to_vec().map_err(|e| format!("encoding the query: {e}"))
}

/// Why a datagram is not the reply awaited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotTheReply {
    /// Not for this query (other id, not a response, other question): an
    /// off-path guess or a late reply; keep waiting.
    Other(String),
    /// For this query, but unusable: this try failed.
    Bad(String),
}

/// Checks a reply against the query it should answer.
pub(crate) fn check_reply(bytes: &[u8], id: u16, question: &Query) -> Result<Message, NotTheReply> {
    use NotTheReply::{Bad, Other};
    if bytes.len() < HEADER_LEN {
        return Err(Other(format!("{} bytes", bytes.len())));
    }
    let header =
        Header::read(&mut BinDecoder::new(bytes)).map_err(|e| Other(format!("header: {e}")))?;
    let meta = header.metadata;
    if meta.id != id {
        return Err(Other("another id".to_owned()));
    }
    if meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return Err(Other("not a response to a query".to_owned()));
    }
    if header.counts.queries != 1 {
        return Err(Bad(format!(
            "reply with {} questions",
            header.counts.queries
        )));
    }
    let m = Message::from_vec(bytes).map_err(|e| Bad(format!("malformed reply: {e}")))?;
    let same = m.queries.first().is_some_and(|r| {
        r.name() == question.name()
            && r.query_type() == question.query_type()
            && r.query_class() == question.query_class()
    });
    if !same {
        return Err(Other("another question".to_owned()));
    }
    Ok(m)
}

/// Whether an upstream's reply is an answer to pass on: NOERROR (with
/// data or without) or NXDOMAIN. Anything else sends the query to the next
/// upstream.
fn usable(m: &Message) -> Result<(), String> {
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
        rc => Err(format!("answered {rc}")),
    }
}

/// A fresh random query id (from the kernel's generator: a predictable id
/// would let an off-path sender forge answers, and forged answers open the
/// map).
fn new_id() -> Result<u16, String> {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).map_err(|e| format!("no random query id: {e}"))?;
    Ok(u16::from_ne_bytes(b))
}

/// Asks each upstream in turn. `Err`: what every try met (the resolver
/// then answers SERVFAIL and asks nobody else).
pub(crate) async fn forward(cfg: &ResolverConfig, q: &AgentQuery) -> Result<Message, Vec<String>> {
    let mut tries = Vec::new();
    for &server in &cfg.upstreams {
        match ask(server, cfg.timeout, q).await {
            Ok(m) => return Ok(m),
            Err(e) => tries.push(format!("{server}: {e}")),
        }
    }
    // Never empty: a resolver does not start without upstreams.
    Err(tries)
}

async fn ask(server: SocketAddr, timeout: Duration, q: &AgentQuery) -> Result<Message, String> {
    let m = udp_try(server, timeout, q).await?;
    let m = if m.metadata.truncation {
        tcp_try(server, timeout, q)
            .await
            .map_err(|e| format!("truncated over UDP, then over TCP: {e}"))?
    } else {
        m
    };
    usable(&m)?;
    Ok(m)
}

/// One try over UDP, with a query id of its own.
async fn udp_try(server: SocketAddr, timeout: Duration, q: &AgentQuery) -> Result<Message, String> {
    let id = new_id()?;
    let query = upstream_query(q, id)?;
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // Port 0: the kernel picks a random source port for each try.
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("udp socket: {e}"))?;
    // Connected: the kernel delivers only the server's datagrams; the
    // source is checked below all the same.
    sock.connect(server)
        .await
        .map_err(|e| format!("udp connect: {e}"))?;
    sock.send(&query)
        .await
        .map_err(|e| format!("udp send: {e}"))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_) => return Err(format!("no answer over UDP in {timeout:?}")),
            Ok(Err(e)) => return Err(format!("udp receive: {e}")),
            Ok(Ok(r)) => r,
        };
        if from.ip() != server.ip() || from.port() != server.port() {
            continue;
        }
        match check_reply(&buf[..n], id, &q.question) {
            Ok(m) => return Ok(m),
            Err(NotTheReply::Other(_)) => continue,
            Err(NotTheReply::Bad(e)) => return Err(e),
        }
    }
}

/// One try over TCP (after a truncated UDP answer), with a query id of
/// its own.
async fn tcp_try(server: SocketAddr, timeout: Duration, q: &AgentQuery) -> Result<Message, String> {
    let id = new_id()?;
    let query = upstream_query(q, id)?;
    let run = async {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| format!("tcp connect: {e}"))?;
        write_framed(&mut s, &query)
            .await
            .map_err(|e| format!("tcp send: {e}"))?;
        // Replies for other queries cannot come on this connection, but a
        // reply that is not ours ends the try rather than the wait.
        let buf = read_framed(&mut s)
            .await
            .map_err(|e| format!("tcp receive: {e}"))?;
        check_reply(&buf, id, &q.question).map_err(|e| match e {
            NotTheReply::Other(w) | NotTheReply::Bad(w) => w,
        })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer over TCP in {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::dns::query::{parse_query, tests::query_bytes};

    #[test]
    fn the_upstream_query_is_fresh() {
        let q = parse_query(&query_bytes("A.example.com.", RecordType::A)).unwrap();
        let m = Message::from_vec(&upstream_query(&q, 77).unwrap()).unwrap();
        assert_eq!(m.metadata.id, 77);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries, vec![q.question.clone()]);
        assert_eq!(m.edns.unwrap().max_payload(), OUR_PAYLOAD);
    }

    #[test]
    fn only_the_reply_to_our_query_is_taken() {
        let q = parse_query(&query_bytes("a.example.com.", RecordType::A)).unwrap();
        let reply = |id: u16, name: &str, t: RecordType| {
            let mut m = Message::response(id, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
            m.to_vec().unwrap()
        };
        assert!(check_reply(&reply(5, "A.EXAMPLE.com.", RecordType::A), 5, &q.question).is_ok());
        assert!(matches!(
            check_reply(&reply(6, "a.example.com.", RecordType::A), 5, &q.question),
            Err(NotTheReply::Other(_))
        ));
        assert!(matches!(
            check_reply(&reply(5, "b.example.com.", RecordType::A), 5, &q.question),
            Err(NotTheReply::Other(_))
        ));
        assert!(matches!(
            check_reply(
                &reply(5, "a.example.com.", RecordType::AAAA),
                5,
                &q.question
            ),
            Err(NotTheReply::Other(_))
        ));
        // A query echoed back is not a reply.
        let mut echo = query_bytes("a.example.com.", RecordType::A);
        echo[0..2].copy_from_slice(&5u16.to_be_bytes());
        assert!(matches!(
            check_reply(&echo, 5, &q.question),
            Err(NotTheReply::Other(_))
        ));
        let mut cut = reply(5, "a.example.com.", RecordType::A);
        cut.truncate(cut.len() - 3);
        assert!(matches!(
            check_reply(&cut, 5, &q.question),
            Err(NotTheReply::Bad(_))
        ));
    }

    #[test]
    fn servfail_and_refused_are_not_answers() {
        for (rc, ok) in [
            (ResponseCode::NoError, true),
            (ResponseCode::NXDomain, true),
            (ResponseCode::ServFail, false),
            (ResponseCode::Refused, false),
            (ResponseCode::FormErr, false),
        ] {
            let m = Message::error_msg(1, OpCode::Query, rc);
            assert_eq!(usable(&m).is_ok(), ok, "{rc}");
        }
    }
}
