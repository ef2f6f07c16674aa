//! Parser throughput (criterion): the decoders mailgate runs on every
//! client command and upstream reply before login. `cargo bench -p
//! mailgate-proto` prints time per call and bytes per second.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailgate_proto::imap::framer::{Frame, Framer, Limits};
use mailgate_proto::{imap, pop3, sasl, smtp};

fn case(c: &mut Criterion, group: &str, name: &str, input: &[u8], f: impl Fn(&[u8]) -> bool) {
    assert!(f(input), "{group}/{name}: the sample must decode");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function(name, |b| b.iter(|| f(black_box(input))));
    g.finish();
}

fn imap_parsers(c: &mut Criterion) {
    let login = b"a001 LOGIN alice@example.com \"correct horse \\\"battery\\\" staple\"\r\n";
    case(c, "imap command", "LOGIN quoted", login, |i| {
        imap::command::decode_command(i).is_ok()
    });
    let literal =
        b"a002 LOGIN {17+}\r\nalice@example.com {28+}\r\ncorrect horse battery staple\r\n";
    case(c, "imap command", "LOGIN literals", literal, |i| {
        imap::command::decode_command(i).is_ok()
    });
    let auth = b"a003 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU=\r\n";
    case(c, "imap command", "AUTHENTICATE PLAIN IR", auth, |i| {
        imap::command::decode_command(i).is_ok()
    });
    let caps = b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=XOAUTH2 AUTH=OAUTHBEARER\r\n";
    case(c, "imap response", "untagged CAPABILITY", caps, |i| {
        imap::response::decode_response(i).is_ok()
    });
    let ok = b"mg3 OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE UIDPLUS MOVE CONDSTORE] alice@example.com authenticated (Success)\r\n";
    case(c, "imap response", "tagged OK with code", ok, |i| {
        imap::response::decode_response(i).is_ok()
    });
    let limits = Limits {
        max_line: 8192,
        max_literal: 8192,
        max_message: 32768,
    };
    case(
        c,
        "imap framer",
        "message with two literals",
        literal,
        |i| matches!(Framer::new(limits).next_message(i), Frame::Complete(_)),
    );
}

fn smtp_parsers(c: &mut Criterion) {
    case(
        c,
        "smtp command",
        "EHLO",
        b"EHLO client.example.com\r\n",
        |i| smtp::decode_command(i).is_ok(),
    );
    let auth = b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU=\r\n";
    case(c, "smtp command", "AUTH PLAIN IR", auth, |i| {
        smtp::decode_command(i).is_ok()
    });
    let ehlo = b"250-smtp.example.com Hello [127.0.0.1]\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";
    case(c, "smtp reply", "EHLO multi-line", ehlo, |i| {
        smtp::decode_reply(i).is_ok()
    });
}

fn pop3_parsers(c: &mut Criterion) {
    case(
        c,
        "pop3 command",
        "USER",
        b"USER alice@example.com\r\n",
        |i| pop3::decode_command(i).is_ok(),
    );
    let capa = b"+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n.\r\n";
    case(c, "pop3 reply", "CAPA multi-line", capa, |i| {
        pop3::decode_reply(i)
            .ok()
            .and_then(|(rest, _)| pop3::decode_multiline(rest).ok())
            .is_some()
    });
}

fn sasl_codecs(c: &mut Criterion) {
    let plain = b"AGFsaWNlQGV4YW1wbGUuY29tAGNvcnJlY3QgaG9yc2UgYmF0dGVyeSBzdGFwbGU=";
    case(c, "sasl", "PLAIN base64 + decode", plain, |i| {
        sasl::decode_base64(i)
            .and_then(|raw| sasl::decode_plain(secrecy::ExposeSecret::expose_secret(&raw)))
            .is_ok()
    });
    let token = secrecy::SecretString::from("ya29.".to_owned() + &"x".repeat(1200));
    let ir = sasl::encode_xoauth2("alice@example.com", &token);
    let ir_bytes = secrecy::ExposeSecret::expose_secret(&ir)
        .as_bytes()
        .to_vec();
    case(c, "sasl", "XOAUTH2 decode (1.2 KB token)", &ir_bytes, |i| {
        sasl::decode_xoauth2(i).is_some()
    });
    c.bench_function("sasl/XOAUTH2 encode (1.2 KB token)", |b| {
        b.iter(|| sasl::encode_xoauth2(black_box("alice@example.com"), black_box(&token)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = imap_parsers, smtp_parsers, pop3_parsers, sasl_codecs
}
criterion_main!(benches);
