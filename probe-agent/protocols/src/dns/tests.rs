#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use super::*;

const A: u16 = 1;
const AAAA: u16 = 28;
const CNAME: u16 = 5;
const QR: u16 = 0x8000;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// A name in wire format, uncompressed.
fn name(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in text.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A message builder: header counts follow what is added.
struct Msg {
    id: u16,
    flags: u16,
    counts: [u16; 4],
    body: Vec<u8>,
}

impl Msg {
    fn new(id: u16, flags: u16) -> Self {
        Msg {
            id,
            flags,
            counts: [0; 4],
            body: Vec::new(),
        }
    }

    fn question(mut self, qname: &str, qtype: u16) -> Self {
        self.counts[0] += 1;
        self.body.extend(name(qname));
        self.body.extend(qtype.to_be_bytes());
        self.body.extend(1u16.to_be_bytes());
        self
    }

    /// A record of `section` (1 answer, 2 authority, 3 additional), its
    /// owner given in wire format (maybe a pointer).
    fn record(mut self, section: usize, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Self {
        self.counts[section] += 1;
        self.body.extend_from_slice(owner);
        self.body.extend(rtype.to_be_bytes());
        self.body.extend(1u16.to_be_bytes());
        self.body.extend(ttl.to_be_bytes());
        self.body.extend((rdata.len() as u16).to_be_bytes());
        self.body.extend_from_slice(rdata);
        self
    }

    fn answer(self, rtype: u16, rdata: &[u8]) -> Self {
        // Owner: a pointer to the first question's name, at offset 12.
        self.record(1, &[0xC0, 12], rtype, 300, rdata)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.id.to_be_bytes());
        out.extend(self.flags.to_be_bytes());
        for c in self.counts {
            out.extend(c.to_be_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }
}

fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    Msg::new(id, RD).question(qname, qtype).bytes()
}

fn a_response(id: u16, qname: &str, ip: [u8; 4]) -> Vec<u8> {
    Msg::new(id, QR | RD | RA)
        .question(qname, A)
        .answer(A, &ip)
        .bytes()
}

#[test]
fn parses_a_query() {
    let msg = parse(&query(0x1234, "example.com", A)).unwrap();
    assert_eq!(msg.id, 0x1234);
    assert!(!msg.is_response);
    assert_eq!((msg.opcode, msg.rcode, msg.truncated), (0, 0, false));
    assert_eq!(
        msg.questions,
        [DnsQuestion {
            name: "example.com".to_owned(),
            qtype: A,
            qclass: 1
        }]
    );
    assert_eq!(msg.questions[0].type_name(), "A");
    assert!(msg.answers.is_empty());
}

#[test]
fn parses_a_and_aaaa_answers() {
    let msg = parse(&a_response(7, "example.com", [93, 184, 216, 34])).unwrap();
    assert!(msg.is_response);
    assert_eq!(msg.rcode_name(), "NOERROR");
    assert_eq!(msg.answers, ["A 93.184.216.34"]);

    let v6 = [
        0x26, 0x06, 0x28, 0x00, 0x02, 0x20, 0x00, 0x01, 0x02, 0x48, 0x18, 0x93, 0x25, 0xc8, 0x19,
        0x46,
    ];
    let msg = parse(
        &Msg::new(8, QR | RD | RA)
            .question("example.com", AAAA)
            .answer(AAAA, &v6)
            .answer(
                AAAA,
                &[0; 15].iter().chain(&[1]).copied().collect::<Vec<_>>(),
            )
            .bytes(),
    )
    .unwrap();
    assert_eq!(msg.questions[0].type_name(), "AAAA");
    assert_eq!(
        msg.answers,
        ["AAAA 2606:2800:220:1:248:1893:25c8:1946", "AAAA ::1"]
    );
}

#[test]
fn parses_cname_chains_with_compression() {
    // Question "www.example.com" at 12; "example.com" begins at 16.
    let mut cname = vec![3];
    cname.extend_from_slice(b"cdn");
    cname.extend_from_slice(&[0xC0, 16]);
    let m = Msg::new(9, QR | RD | RA)
        .question("www.example.com", A)
        .answer(CNAME, &cname);
    // The A record's owner points at the CNAME's data: 12 + 21 (question)
    // + 12 (the CNAME record's owner pointer and fixed fields).
    let bytes = m.record(1, &[0xC0, 45], A, 60, &[10, 0, 0, 1]).bytes();
    let msg = parse(&bytes).unwrap();
    assert_eq!(msg.questions[0].name, "www.example.com");
    assert_eq!(msg.answers, ["CNAME cdn.example.com.", "A 10.0.0.1"]);
}

#[test]
fn parses_nxdomain_with_its_soa() {
    let mut soa = name("ns.example.com");
    soa.extend(name("hostmaster.example.com"));
    for v in [2024010101u32, 7200, 3600, 1209600, 300] {
        soa.extend(v.to_be_bytes());
    }
    let bytes = Msg::new(10, QR | RD | RA | 3)
        .question("nope.example.com", A)
        .record(2, &name("example.com"), 6, 300, &soa)
        .bytes();
    let msg = parse(&bytes).unwrap();
    assert_eq!((msg.rcode, msg.rcode_name().as_str()), (3, "NXDOMAIN"));
    assert!(
        msg.answers.is_empty(),
        "the SOA is in the authority section"
    );

    // The same SOA as an answer is rendered.
    let bytes = Msg::new(11, QR)
        .question("example.com", 6)
        .answer(6, &soa)
        .bytes();
    assert_eq!(
        parse(&bytes).unwrap().answers,
        ["SOA ns.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 300"]
    );
}

#[test]
fn renders_other_record_types() {
    let mut mx = 10u16.to_be_bytes().to_vec();
    mx.extend(name("mail.example.com"));
    let mut srv = Vec::new();
    for v in [0u16, 5, 5060] {
        srv.extend(v.to_be_bytes());
    }
    srv.extend(name("sip.example.com"));
    let txt = b"\x05hello\x08say \"hi\"\x01\x01";
    let bytes = Msg::new(12, QR)
        .question("example.com", 255)
        .answer(15, &mx)
        .answer(33, &srv)
        .answer(16, txt)
        .answer(65, &[0, 1, 0, 0])
        .answer(2, &name("ns1.example.com"))
        .answer(12, &name("host.example.com"))
        .answer(99, &[])
        .bytes();
    let msg = parse(&bytes).unwrap();
    assert_eq!(msg.questions[0].type_name(), "ANY");
    assert_eq!(
        msg.answers,
        [
            "MX 10 mail.example.com.",
            "SRV 0 5 5060 sip.example.com.",
            "TXT \"hello\" \"say \\\"hi\\\"\" \"\\001\"",
            "HTTPS \\# 4 00010000",
            "NS ns1.example.com.",
            "PTR host.example.com.",
            "SPF \\# 0",
        ]
    );
}

#[test]
fn unknown_types_and_classes_are_kept() {
    let mut m = Msg::new(13, 0).question("x.test", 65280);
    // Class CHAOS, type 65280.
    m.body.truncate(m.body.len() - 2);
    m.body.extend(3u16.to_be_bytes());
    let msg = parse(&m.bytes()).unwrap();
    assert_eq!(msg.questions[0].qclass, 3);
    assert_eq!(msg.questions[0].type_name(), "TYPE65280");
    assert_eq!(type_name(65280), "TYPE65280");
    assert_eq!(rcode_name(12), "RCODE12");
}

#[test]
fn escapes_odd_label_bytes() {
    let mut wire = vec![4];
    wire.extend_from_slice(b"a.b ");
    wire.extend_from_slice(&[1, 0xff, 0]);
    let mut m = Msg::new(14, 0);
    m.counts[0] = 1;
    m.body.extend(wire);
    m.body.extend(A.to_be_bytes());
    m.body.extend(1u16.to_be_bytes());
    assert_eq!(
        parse(&m.bytes()).unwrap().questions[0].name,
        "a\\.b\\032.\\255"
    );

    // The root name.
    assert_eq!(parse(&query(1, ".", 2)).unwrap().questions[0].name, ".");
}

#[test]
fn extended_rcode_from_edns() {
    // BADCOOKIE (23): 7 in the header, 1 in the OPT record's TTL.
    let bytes = Msg::new(15, QR | 7)
        .question("example.com", A)
        .record(3, &[0], 41, 1 << 24, &[])
        .bytes();
    let msg = parse(&bytes).unwrap();
    assert_eq!((msg.rcode, msg.rcode_name().as_str()), (23, "BADCOOKIE"));
}

#[test]
fn truncated_messages_are_errors() {
    let bytes = Msg::new(16, QR)
        .question("www.example.com", A)
        .answer(A, &[1, 2, 3, 4])
        .answer(CNAME, &name("other.example"))
        .bytes();
    assert!(parse(&bytes).is_ok());
    for len in 0..bytes.len() {
        assert!(parse(&bytes[..len]).is_err(), "a prefix of {len} bytes");
    }
    assert_eq!(parse(&bytes[..5]), Err(DnsError::Truncated));
    // Counts no message of this size could hold.
    let mut huge = query(1, "a", A);
    huge[4] = 0xFF;
    huge[6] = 0xFF;
    assert_eq!(parse(&huge), Err(DnsError::Truncated));
}

#[test]
fn malformed_names_and_records_are_errors() {
    // A pointer to itself, and one pointing forward.
    let mut m = Msg::new(1, 0);
    m.counts[0] = 1;
    m.body.extend([0xC0, 12, 0, 1, 0, 1]);
    assert_eq!(parse(&m.bytes()), Err(DnsError::BadName));
    m.body[1] = 14;
    assert_eq!(parse(&m.bytes()), Err(DnsError::BadName));
    // A reserved label type.
    m.body[0] = 0x40;
    assert_eq!(parse(&m.bytes()), Err(DnsError::BadName));
    // A name longer than 255 bytes.
    let long = vec!["a".repeat(63); 5].join(".");
    assert_eq!(parse(&query(1, &long, A)), Err(DnsError::BadName));
    // An A record of 3 bytes, a CNAME whose name overruns its data.
    let bad_a = Msg::new(2, QR).question("a", A).answer(A, &[1, 2, 3]);
    assert_eq!(parse(&bad_a.bytes()), Err(DnsError::BadRecord));
    let mut bad_cname = Msg::new(3, QR).question("a", A).answer(CNAME, &name("bb"));
    let len = bad_cname.body.len();
    // Claim 2 bytes of data for a 4-byte name (the rest trails the message).
    bad_cname.body[len - 5] = 2;
    assert!(parse(&bad_cname.bytes()).is_err());
}

#[test]
fn garbage_never_panics() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..2000 {
        let len = round % 80;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let _ = parse(&bytes);
        // The same after a valid header claiming one question.
        let mut framed = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        framed.extend_from_slice(&bytes);
        let _ = parse(&framed);
    }
}

#[test]
fn pairs_queries_with_responses_by_id() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query("flow", 100, &query(1, "a.example", A));
    t.query("flow", 110, &query(2, "b.example", AAAA));
    assert_eq!(t.pending(), 2);
    // Answered in the other order.
    let b = t
        .response(
            "flow",
            150,
            &Msg::new(2, QR | 3).question("b.example", AAAA).bytes(),
        )
        .unwrap();
    assert_eq!(
        (b.query_name.as_str(), b.query_type.as_str()),
        ("b.example", "AAAA")
    );
    assert_eq!((b.rcode.as_str(), b.latency_ns), ("NXDOMAIN", 40));
    assert!(b.answers.is_empty() && b.answered);
    let a = t
        .response("flow", 160, &a_response(1, "a.example", [127, 0, 0, 1]))
        .unwrap();
    assert_eq!(a.query_name, "a.example");
    assert_eq!(a.answers, ["A 127.0.0.1"]);
    assert_eq!(
        (a.req_time_ns, a.resp_time_ns, a.latency_ns),
        (100, 160, 60)
    );
    assert_eq!(t.pending(), 0);
    assert_eq!(t.counters().exchanges, 2);
}

#[test]
fn responses_pair_only_with_their_flow_id_and_question() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query(1u32, 0, &query(5, "a.example", A));
    // Another flow, another id, another question: none answers it.
    assert!(
        t.response(2, 1, &a_response(5, "a.example", [1, 1, 1, 1]))
            .is_none()
    );
    assert!(
        t.response(1, 2, &a_response(6, "a.example", [1, 1, 1, 1]))
            .is_none()
    );
    assert!(
        t.response(1, 3, &a_response(5, "b.example", [1, 1, 1, 1]))
            .is_none()
    );
    assert_eq!(t.counters().responses_without_query, 3);
    // The name's case may differ (0x20 randomization).
    let row = t
        .response(1, 4, &a_response(5, "A.Example", [1, 1, 1, 1]))
        .unwrap();
    assert_eq!(row.query_name, "a.example");
    // Once paired, a second copy of the response is without a query.
    assert!(
        t.response(1, 5, &a_response(5, "a.example", [1, 1, 1, 1]))
            .is_none()
    );
    assert_eq!(t.counters().responses_without_query, 4);
}

#[test]
fn duplicate_queries_are_timed_from_the_first() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query("f", 1_000, &query(9, "slow.example", A));
    t.query("f", 5_000, &query(9, "slow.example", A));
    assert_eq!(t.counters().duplicate_queries, 1);
    let row = t
        .message("f", 6_000, &a_response(9, "slow.example", [1, 2, 3, 4]))
        .unwrap();
    assert_eq!(row.latency_ns, 5_000);
}

#[test]
fn a_full_table_evicts_the_oldest() {
    let mut t = DnsTracker::new(&DnsConfig { max_pending: 2 });
    for (id, time) in [(1, 10), (2, 20), (3, 30)] {
        t.query("f", time, &query(id, "x.example", A));
    }
    assert_eq!(t.pending(), 2);
    assert_eq!(t.counters().evicted, 1);
    assert!(
        t.response("f", 40, &a_response(1, "x.example", [0; 4]))
            .is_none()
    );
    assert!(
        t.response("f", 50, &a_response(3, "x.example", [0; 4]))
            .is_some()
    );
    // Many paired queries do not grow the order list past its bound.
    for id in 100..1100 {
        t.query("f", 60, &query(id, "x.example", A));
        t.response("f", 61, &a_response(id, "x.example", [0; 4]));
    }
    assert!(t.order.len() < 100, "{} entries", t.order.len());
}

#[test]
fn expired_queries_become_unanswered_rows() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query("f", 1_000, &query(1, "lost.example", A));
    t.query("f", 2_000, &query(2, "answered.example", A));
    t.query("f", 9_000, &query(3, "recent.example", A));
    t.response("f", 2_500, &a_response(2, "answered.example", [0; 4]))
        .unwrap();
    let mut out = Vec::new();
    t.expire(10_000, 5_000, &mut out);
    assert_eq!(out.len(), 1);
    let (flow, row) = &out[0];
    assert_eq!(*flow, "f");
    assert_eq!((row.query_name.as_str(), row.id), ("lost.example", 1));
    assert!(!row.answered);
    assert_eq!(
        (row.rcode.as_str(), row.req_time_ns, row.latency_ns),
        ("", 1_000, 0)
    );
    assert_eq!(t.pending(), 1);
    assert_eq!(t.counters().unanswered, 1);
    // Its late response has no query left.
    assert!(
        t.response("f", 11_000, &a_response(1, "lost.example", [0; 4]))
            .is_none()
    );
    assert_eq!(t.counters().responses_without_query, 1);
}

#[test]
fn bad_input_to_the_tracker_is_counted() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query("f", 0, b"\x00\x01garbage");
    t.query("f", 0, &a_response(1, "a", [0; 4]));
    assert!(t.response("f", 0, &query(1, "a", A)).is_none());
    assert!(t.message("f", 0, &[]).is_none());
    // A query without a question cannot be paired.
    t.query("f", 0, &Msg::new(4, 0).bytes());
    assert_eq!(t.counters().unparseable, 5);
    assert_eq!(t.pending(), 0);
    let mut total = DnsCounters::default();
    let before = *t.counters();
    total += t.take_counters();
    assert_eq!(total.delta(&DnsCounters::default()), before);
    assert_eq!(*t.counters(), DnsCounters::default());
}

#[test]
fn a_response_without_its_question_pairs_by_id_alone() {
    let mut t = DnsTracker::new(&DnsConfig::default());
    t.query("f", 0, &query(77, "a.example", A));
    let row = t.response("f", 5, &Msg::new(77, QR | 1).bytes()).unwrap();
    assert_eq!(
        (row.query_name.as_str(), row.rcode.as_str()),
        ("a.example", "FORMERR")
    );
    // Two queries with that id: which one is unknown.
    t.query("f", 0, &query(78, "a.example", A));
    t.query("f", 0, &query(78, "b.example", A));
    assert!(t.response("f", 5, &Msg::new(78, QR | 1).bytes()).is_none());
    assert_eq!(t.pending(), 2);
}

fn tcp(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

#[test]
fn tcp_framer_splits_and_joins_messages() {
    let q1 = query(1, "a.example", A);
    let q2 = query(2, "b.example", AAAA);
    let mut stream = tcp(&q1);
    stream.extend(tcp(&q2));
    let mut got = Vec::new();
    let mut f = DnsTcpFramer::new();
    f.data(true, &stream, |m| got.push(m.to_vec()));
    assert_eq!(got, [q1.clone(), q2.clone()]);
    // One byte per call.
    got.clear();
    for b in &stream {
        f.data(true, std::slice::from_ref(b), |m| got.push(m.to_vec()));
    }
    assert_eq!(got, [q1, q2]);
    assert_eq!(f.counters().messages, 4);
}

#[test]
fn tcp_framer_gaps() {
    let big = Msg::new(3, QR)
        .question("big.example", 16)
        .answer(16, &[[200u8].as_slice(), &[b'x'; 200]].concat())
        .bytes();
    let small = query(4, "s.example", A);
    let mut got = Vec::new();
    let mut f = DnsTcpFramer::new();
    // A gap inside a message of known length: it is lost, the next is not.
    let framed = tcp(&big);
    f.data(true, &framed[..50], |m| got.push(m.to_vec()));
    f.gap((framed.len() - 50) as u64);
    f.data(true, &tcp(&small), |m| got.push(m.to_vec()));
    assert_eq!(got, std::slice::from_ref(&small));
    assert_eq!(f.counters().incomplete, 1);
    // A gap past the message's end covers the next length: lost until the
    // next call start.
    got.clear();
    let mut two = tcp(&big);
    two.extend(tcp(&small));
    f.data(true, &two[..10], |m| got.push(m.to_vec()));
    f.gap((two.len() - 10) as u64);
    f.data(false, &tcp(&small), |m| got.push(m.to_vec()));
    assert!(got.is_empty());
    f.data(true, &tcp(&small), |m| got.push(m.to_vec()));
    assert_eq!(got, [small]);
    assert_eq!(f.counters().lost_sync, 1);
    let parsed = parse(&big).unwrap();
    assert_eq!(parsed.answers[0].len(), "TXT \"\"".len() + 200);
}
