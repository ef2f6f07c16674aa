//! TLS on the client side: implicit TLS and STARTTLS for IMAP, SMTP and
//! POP3 with a rustls client and with `openssl s_client`, the STARTTLS
//! command-injection case, the generated certificate reused across
//! restarts, keys of every kind, and certificates reloaded without dropping
//! sessions.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mailgate_config::Protocol;
use mailgate_tests::ca::TestCa;
use mailgate_tests::client::LineClient;
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, logs, pop3_addr, smtp_addr, start};

/// Turns every listener of `text` to `mode` with the given certificate.
fn with_tls(text: &str, mode: &str, cert: Option<(&str, &str)>) -> String {
    let files = match cert {
        Some((c, k)) => format!("certificate = \"{c}\"\nkey = \"{k}\"\n"),
        None => String::new(),
    };
    text.replace(
        "address = \"127.0.0.1:0\"\n",
        &format!("address = \"127.0.0.1:0\"\ntls = \"{mode}\"\n{files}"),
    )
}

struct Setup {
    env: Env,
    imap: FakeServer,
    gateway: mailgate::Gateway,
}

/// All three protocols, listeners in `mode` with the test CA's certificate.
async fn setup(mode: &str) -> Setup {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let smtp = FakeServer::smtp(&env.ca, env.oauth.clone(), Default::default()).await;
    let pop3 = FakeServer::pop3(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let text = env.config_for(
        &[
            (Protocol::Imap, &imap.url(false)),
            (Protocol::Smtp, &smtp.url(false)),
            (Protocol::Pop3, &pop3.url(false)),
        ],
        "",
        "",
        "",
    );
    let text = with_tls(&text, mode, Some(("server.pem", "server.key")));
    let gateway = start(env.load(&text)).await;
    Setup { env, imap, gateway }
}

fn plain_auth() -> String {
    STANDARD.encode(format!("\0{USER}\0{PASSWORD}"))
}

async fn ehlo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    c: &mut LineClient<S>,
) -> String {
    c.send("EHLO client.example\r\n").await;
    let mut all = String::new();
    loop {
        let l = c.line().await;
        all.push_str(&l);
        if l.starts_with("250 ") {
            return all;
        }
    }
}

async fn capa<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    c: &mut LineClient<S>,
) -> String {
    c.send("CAPA\r\n").await;
    let mut all = String::new();
    loop {
        let l = c.line().await;
        all.push_str(&l);
        if l == ".\r\n" {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_for_every_protocol() {
    let s = setup("implicit").await;
    let tls = s.env.ca.client_config();

    let mut c = LineClient::connect_tls(imap_addr(&s.gateway), tls.clone())
        .await
        .unwrap();
    let g = c.line().await;
    assert!(g.contains("AUTH=PLAIN") && !g.contains("STARTTLS"), "{g}");
    c.send("s STARTTLS\r\n").await;
    assert_eq!(
        c.response_text("s").await,
        "s BAD TLS is already active\r\n"
    );
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));

    let mut c = LineClient::connect_tls(smtp_addr(&s.gateway), tls.clone())
        .await
        .unwrap();
    assert!(c.line().await.starts_with("220 "));
    let e = ehlo(&mut c).await;
    assert!(
        e.contains("AUTH PLAIN LOGIN") && !e.contains("STARTTLS"),
        "{e}"
    );
    c.send(format!("AUTH PLAIN {}\r\n", plain_auth())).await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");

    let mut c = LineClient::connect_tls(pop3_addr(&s.gateway), tls.clone())
        .await
        .unwrap();
    assert!(c.line().await.starts_with("+OK"));
    let caps = capa(&mut c).await;
    assert!(
        caps.contains("USER\r\n") && !caps.contains("STLS"),
        "{caps}"
    );
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");

    // A plaintext client on an implicit-TLS port gets nothing usable.
    let mut raw = LineClient::connect(imap_addr(&s.gateway)).await;
    raw.send("a LOGIN x y\r\n").await;
    assert!(raw.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_for_every_protocol_with_fresh_capabilities() {
    let s = setup("starttls").await;
    let tls = s.env.ca.client_config();

    let mut c = LineClient::greeted(imap_addr(&s.gateway)).await;
    c.send("s STARTTLS\r\n").await;
    assert_eq!(
        c.response_text("s").await,
        "s OK Begin TLS negotiation now\r\n"
    );
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    c.send("c CAPABILITY\r\n").await;
    let caps = c.response_text("c").await;
    assert!(
        !caps.contains("STARTTLS") && caps.contains("AUTH=PLAIN"),
        "{caps}"
    );
    c.send("t STARTTLS\r\n").await;
    assert_eq!(
        c.response_text("t").await,
        "t BAD TLS is already active\r\n"
    );
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));

    let mut c = LineClient::greeted_with(smtp_addr(&s.gateway), "220").await;
    assert!(ehlo(&mut c).await.contains("250 STARTTLS"));
    c.send("STARTTLS\r\n").await;
    assert_eq!(c.line().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    let e = ehlo(&mut c).await;
    assert!(
        !e.contains("STARTTLS") && e.contains("AUTH PLAIN LOGIN"),
        "{e}"
    );
    c.send(format!("AUTH PLAIN {}\r\n", plain_auth())).await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful\r\n");

    let mut c = LineClient::greeted_with(pop3_addr(&s.gateway), "+OK").await;
    assert!(capa(&mut c).await.contains("STLS\r\n"));
    c.send("STLS\r\n").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation\r\n");
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    assert!(!capa(&mut c).await.contains("STLS"));
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK Logged in\r\n");
}

/// Commands pipelined in clear behind STARTTLS are thrown away, never run
/// inside the TLS session (CVE-2011-0411).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_command_injection_is_discarded() {
    let s = setup("starttls").await;
    let tls = s.env.ca.client_config();

    let mut c = LineClient::greeted(imap_addr(&s.gateway)).await;
    c.send(format!("s STARTTLS\r\nx LOGIN {USER} \"{PASSWORD}\"\r\n"))
        .await;
    assert_eq!(c.line().await, "s OK Begin TLS negotiation now\r\n");
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    c.send("n NOOP\r\n").await;
    assert_eq!(
        c.line().await,
        "n OK NOOP completed\r\n",
        "the injected LOGIN produced no reply"
    );

    let mut c = LineClient::greeted_with(smtp_addr(&s.gateway), "220").await;
    ehlo(&mut c).await;
    c.send(format!("STARTTLS\r\nAUTH PLAIN {}\r\n", plain_auth()))
        .await;
    assert_eq!(c.line().await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    c.send("NOOP\r\n").await;
    assert_eq!(
        c.line().await,
        "250 2.0.0 OK\r\n",
        "the injected AUTH produced no reply"
    );

    let mut c = LineClient::greeted_with(pop3_addr(&s.gateway), "+OK").await;
    c.send(format!("STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n"))
        .await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation\r\n");
    let mut c = c.start_tls(tls.clone()).await.unwrap();
    c.send(format!("PASS {PASSWORD}\r\n")).await;
    assert_eq!(
        c.line().await,
        "-ERR No user name given; send USER first\r\n"
    );

    assert_eq!(
        s.imap.connections(),
        0,
        "no injected login reached the upstream"
    );
}

/// Runs `openssl s_client` with `args`, feeding `input` line by line.
fn s_client(args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args([
            "-quiet",
            "-ign_eof",
            "-crlf",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed (apt-get install openssl)");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        for line in input.lines() {
            std::thread::sleep(Duration::from_millis(300));
            let _ = writeln!(stdin, "{line}");
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_in_both_modes() {
    for mode in ["implicit", "starttls"] {
        let s = setup(mode).await;
        let ca = s.env.ca.ca_file.display().to_string();
        let run = |addr: std::net::SocketAddr, starttls: &'static str, input: String| {
            let ca = ca.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let connect = addr.to_string();
                    let mut args = vec!["-connect", &connect, "-CAfile", &ca];
                    if mode == "starttls" {
                        args.extend(["-starttls", starttls]);
                    }
                    s_client(&args, &input)
                })
                .await
                .unwrap()
            }
        };
        let out = run(
            imap_addr(&s.gateway),
            "imap",
            format!("a LOGIN {USER} \"{PASSWORD}\"\nb NOOP\nc LOGOUT"),
        )
        .await;
        assert!(
            out.contains("a OK [CAPABILITY") && out.contains("b OK NOOP"),
            "{mode} imap:\n{out}"
        );
        let out = run(
            smtp_addr(&s.gateway),
            "smtp",
            format!("EHLO openssl\nAUTH PLAIN {}\nQUIT", plain_auth()),
        )
        .await;
        assert!(out.contains("235 2.7.0"), "{mode} smtp:\n{out}");
        let out = run(
            pop3_addr(&s.gateway),
            "pop3",
            format!("USER {USER}\nPASS {PASSWORD}\nSTAT\nQUIT"),
        )
        .await;
        assert!(
            out.contains("+OK Logged in") && out.contains("+OK 1 "),
            "{mode} pop3:\n{out}"
        );
    }
}

/// Accepts any certificate and remembers the leaf's fingerprint (the
/// generated certificate is self-signed; this test is about its reuse).
#[derive(Debug)]
struct Recorder(Mutex<Vec<String>>);

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0
            .lock()
            .unwrap()
            .push(mailgate_certs::fingerprint(end_entity));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn recording_client(r: Arc<Recorder>) -> Arc<rustls::ClientConfig> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(r)
    .with_no_client_auth();
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_certificate_is_reused_across_restarts() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = with_tls(
        &env.config_text(&imap.url(false), "", "", ""),
        "implicit",
        None,
    );
    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    for _ in 0..2 {
        let g = start(env.load(&text)).await;
        let mut c = LineClient::connect_tls(imap_addr(&g), recording_client(rec.clone()))
            .await
            .unwrap();
        assert!(c.line().await.starts_with("* OK"));
        drop(c);
        g.shutdown().await;
    }
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "the same certificate after a restart");
    let pem = env.state_dir().join("tls").join("gateway.pem");
    let id = mailgate_certs::load_identity(&pem, &env.state_dir().join("tls").join("gateway.key"))
        .unwrap();
    assert_eq!(id.fingerprint(), seen[0]);

    // `mailgate check` shows that fingerprint.
    let cfg = env.write_config(&text);
    let out = mailgate_tests::harness::mailgate(Some(&cfg))
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("(self-signed) sha256 {}", seen[0])),
        "{stdout}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made with openssl, and a leaf for localhost/127.0.0.1 whose key is
/// generated by `keygen` (so every key type and encoding is exercised).
fn openssl_identity(dir: &Path, keygen: &[&str]) -> (String, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=openssl test CA",
        ],
    );
    openssl(dir, keygen);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let key = std::fs::read_to_string(dir.join("leaf.key")).unwrap();
    let first = key.lines().next().unwrap_or("").to_string();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    (first, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_every_kind() {
    let kinds: &[(&str, &[&str], &str)] = &[
        (
            "RSA PKCS#8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "leaf.key",
            ],
            "BEGIN PRIVATE KEY",
        ),
        (
            "RSA PKCS#1",
            &["genrsa", "-traditional", "-out", "leaf.key", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "ECDSA SEC1",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "leaf.key",
            ],
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "ECDSA PKCS#8",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "leaf.key",
            ],
            "BEGIN PRIVATE KEY",
        ),
        (
            "Ed25519",
            &["genpkey", "-algorithm", "ED25519", "-out", "leaf.key"],
            "BEGIN PRIVATE KEY",
        ),
    ];
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    for (name, keygen, header) in kinds {
        let dir = env.path().join(name.replace([' ', '#'], "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, ca_pem) = openssl_identity(&dir, keygen);
        assert!(first.contains(header), "{name}: {first}");
        let cert = dir.join("leaf.pem");
        let key = dir.join("leaf.key");
        let text = with_tls(
            &env.config_text(&imap.url(false), "", "", ""),
            "implicit",
            Some((cert.to_str().unwrap(), key.to_str().unwrap())),
        );
        let g = start(env.load(&text)).await;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let mut c = LineClient::connect_tls(imap_addr(&g), tls)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(c.line().await.starts_with("* OK"), "{name}");
        drop(c);
        g.shutdown().await;
    }
}

/// New certificates are picked up on reload; an open session is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_sessions() {
    logs();
    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    env.seal_new_user_token();
    let live = env.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::copy(&env.ca.cert_file, live.join("cert.pem")).unwrap();
    std::fs::copy(&env.ca.key_file, live.join("key.pem")).unwrap();
    let text = with_tls(
        &env.config_text(&imap.url(false), "", "", ""),
        "implicit",
        Some(("live/cert.pem", "live/key.pem")),
    );
    let g = start(env.load(&text)).await;
    let mut old = LineClient::connect_tls(imap_addr(&g), env.ca.client_config())
        .await
        .unwrap();
    old.line().await;
    assert!(old.login("a", USER, PASSWORD).await.starts_with("a OK"));

    // A new CA and certificate replace the files; reload.
    let other_dir = env.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = TestCa::new(&other_dir);
    std::fs::copy(&other.cert_file, live.join("cert.pem")).unwrap();
    std::fs::copy(&other.key_file, live.join("key.pem")).unwrap();
    let results = g.reload_certificates().await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // The open session goes on.
    old.send("n NOOP\r\n").await;
    assert_eq!(old.response_text("n").await, "n OK NOOP completed\r\n");
    // New handshakes present the new certificate.
    let refused = LineClient::connect_tls(imap_addr(&g), env.ca.client_config())
        .await
        .err()
        .expect("the old certificate's CA still verifies the new one");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::InvalidData,
        "a certificate error, not a refused connection: {refused}"
    );
    let mut new = LineClient::connect_tls(imap_addr(&g), other.client_config())
        .await
        .unwrap();
    assert!(new.line().await.starts_with("* OK"));

    // A broken file keeps the current certificate.
    std::fs::write(live.join("key.pem"), "garbage").unwrap();
    assert!(g.reload_certificates().await.iter().all(Result::is_err));
    let mut again = LineClient::connect_tls(imap_addr(&g), other.client_config())
        .await
        .unwrap();
    assert!(again.line().await.starts_with("* OK"));
}
