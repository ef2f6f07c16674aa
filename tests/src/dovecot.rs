//! A real Dovecot (Debian's `dovecot-imapd`) started by a test with its own
//! generated configuration: loopback ports only, nothing under /etc touched,
//! XOAUTH2/OAUTHBEARER only, tokens checked against the fake OAuth server's
//! introspection endpoint (`passdb oauth2`, `introspection_mode = post`).
//!
//! It listens for IMAP (STARTTLS) on 127.0.0.1 and 127.0.0.2 and for IMAPS
//! on 127.0.0.1. Dovecot treats a connection whose local and remote addresses
//! are equal as secured and allows AUTH without TLS; on 127.0.0.2 (the gateway
//! connects from 127.0.0.1) plaintext authentication is refused, so a login
//! there proves the gateway really upgraded with STARTTLS.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ca::TestCa;
use crate::oauth::FakeOAuth;

pub struct Dovecot {
    child: Child,
    pub dir: PathBuf,
    /// IMAP with STARTTLS, on 127.0.0.1 and 127.0.0.2.
    pub imap_port: u16,
    /// IMAPS on 127.0.0.1 and 127.0.0.2.
    pub imaps_port: u16,
    /// POP3 with STLS, and POP3S.
    pub pop3_port: u16,
    pub pop3s_port: u16,
    /// Submission with STARTTLS, and submissions (implicit TLS).
    pub submission_port: u16,
    pub submissions_port: u16,
}

/// The dovecot binary, or a panic telling how to install it: these tests
/// fail rather than skip when Dovecot is missing.
pub fn binary() -> PathBuf {
    for p in ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Dovecot is not installed: run `apt-get install dovecot-imapd` (the CI script .ci/run does)"
    );
}

fn free_port() -> u16 {
    // A port free on 127.0.0.1; 127.0.0.2 shares the loopback, so it is
    // checked there too.
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
}

/// uid and gid of the `mail` user (Debian: 8, 8).
fn mail_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"mail") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or((8, 8))
}

#[cfg(unix)]
fn give_to_mail_user(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Dovecot does not access mail as root; the `mail` user owns the mail
    // and home directories.
    let (uid, gid) = mail_ids();
    let _ = std::os::unix::fs::chown(p, Some(uid), Some(gid));
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o770));
}

impl Dovecot {
    /// The configuration file a Dovecot started in `dir` uses (known before
    /// it starts, for the relay sink's `dovecot-lda`).
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("dovecot").join("dovecot.conf")
    }

    /// Starts Dovecot in `dir` with IMAP, POP3 and submission; submission
    /// relays to 127.0.0.1:`relay_port`. A port that another process took
    /// between being found free and Dovecot binding it is tried again with
    /// new ports (at most three times).
    pub fn start(dir: &Path, ca: &TestCa, oauth: &FakeOAuth, relay_port: u16) -> Dovecot {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(dir, ca, oauth, relay_port) {
                Ok(dv) => return dv,
                Err(log) if tries < 3 && log.contains("Address already in use") => {
                    let _ = std::fs::remove_file(dir.join("dovecot").join("dovecot.log"));
                }
                Err(log) => panic!("Dovecot did not start; log:\n{log}"),
            }
        }
    }

    fn start_once(
        dir: &Path,
        ca: &TestCa,
        oauth: &FakeOAuth,
        relay_port: u16,
    ) -> Result<Dovecot, String> {
        let bin = binary();
        let dir = dir.join("dovecot");
        for sub in ["run", "state", "mail", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Let the mail user traverse the test's temporary directory.
            for p in [dir.parent().unwrap_or(&dir), &dir] {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            }
            give_to_mail_user(&dir.join("mail"));
            give_to_mail_user(&dir.join("home"));
        }
        let [
            imap_port,
            imaps_port,
            pop3_port,
            pop3s_port,
            submission_port,
            submissions_port,
        ] = [(); 6].map(|_| free_port());
        let d = dir.display();
        // The second passdb opens a shared mailbox with a delegate's token:
        // the introspection's `shared` attribute must name the mailbox in
        // the XOAUTH2 `user=` (a master-user style rule).
        for (file, attribute) in [
            ("oauth2.conf", "username"),
            ("oauth2-shared.conf", "shared"),
        ] {
            std::fs::write(
                dir.join(file),
                format!(
                    "introspection_mode = post\n\
                     introspection_url = {}\n\
                     force_introspection = yes\n\
                     username_attribute = {attribute}\n\
                     active_attribute = active\n\
                     active_value = true\n",
                    oauth.introspect_url()
                ),
            )
            .unwrap();
        }
        let conf = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3 submission
listen = 127.0.0.1, 127.0.0.2
hostname = localhost
postmaster_address = postmaster@example.test
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
submission_relay_trusted = yes
pop3_uidl_format = %08Xu%08Xv
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0
mail_max_userip_connections = 1000
first_valid_uid = 0
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2-shared.conf
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={d}/home/%u allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {submission_port}
  }}
  inet_listener submissions {{
    port = {submissions_port}
    ssl = yes
  }}
}}
"#,
            cert = ca.cert_file.display(),
            key = ca.key_file.display(),
        );
        let conf_path = dir.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting dovecot");
        let dv = Dovecot {
            child,
            dir,
            imap_port,
            imaps_port,
            pop3_port,
            pop3s_port,
            submission_port,
            submissions_port,
        };
        dv.wait_ready()?;
        Ok(dv)
    }

    /// Waits until every listener answers; the log when Dovecot gave up.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [
            self.imap_port,
            self.imaps_port,
            self.pop3_port,
            self.pop3s_port,
            self.submission_port,
            self.submissions_port,
        ] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                let log = self.log();
                if Instant::now() >= deadline || log.contains("Fatal:") {
                    return Err(log);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
