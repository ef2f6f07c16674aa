//! A flood of wrong passwords against one account while its owner logs in
//! (issues 12 and 23): 1,000 attacker tasks from as many loopback source
//! addresses (127.1.x.y) send wrong passwords for the owner's account for
//! 10 s, each reconnecting when the gateway closes it; meanwhile the owner
//! logs in every 20 ms from the address they used before (127.0.0.1), and
//! every 10th of those logins finds no key cached (the tokens were
//! re-sealed under a new salt just before, as `mailgate passwd` does: a
//! full password check is needed, as after a restart or on another
//! instance). Printed: the owner's login latency (all, and the uncached
//! ones: p50, p99, max) and failures, the attackers' answers (passwords
//! actually checked, per minute, against attempts held back by the
//! backoff), the process's peak RSS (gateway, fakes and clients together:
//! an upper bound of the gateway's), and that the gateway serves
//! afterwards. Also the cost of a login for an unknown name against a wrong
//! password for a real account (the dummy derivation makes them alike).
//!
//! `cargo bench -p mailgate --bench flood` runs it in full; `cargo test -p
//! mailgate --bench flood` (CI) runs a small smoke. Nothing is asserted on
//! timing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mailgate::accounts::store::file::FileStore;
use mailgate::accounts::store::{Tokens, Want};
use mailgate_tests::client::{LineClient, quote};
use mailgate_tests::fake::FakeServer;
use mailgate_tests::harness::{Env, PASSWORD, USER, imap_addr, start};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One login on a fresh connection from `from`; the tagged answer.
async fn login_from(from: IpAddr, to: SocketAddr, user: &str, pw: &str) -> Option<String> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let stream = socket.connect(to).await.ok()?;
    let mut s = BufReader::new(stream);
    let mut line = String::new();
    s.read_line(&mut line).await.ok()?;
    s.get_mut()
        .write_all(format!("a LOGIN {} {}\r\n", quote(user), quote(pw)).as_bytes())
        .await
        .ok()?;
    loop {
        line.clear();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.starts_with("a ") {
            return Some(line);
        }
    }
}

fn attacker_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--smoke");
    let (attackers, seconds, samples) = if smoke {
        (50, 1.0, 5)
    } else {
        (1000, 10.0, 20)
    };
    println!(
        "flood: {attackers} attackers for {seconds} s{}",
        if smoke { " (smoke)" } else { "" }
    );

    let env = Env::new().await;
    let imap = FakeServer::start(&env.ca, env.oauth.clone(), Default::default()).await;
    let text = env.config_text(
        &imap.url(false),
        "max_connections = 20000",
        "",
        "[[account]]\nuser = \"*@example.test\"\nprovider = \"test\"\n",
    );
    let g = start(env.load(&text)).await;
    let addr = imap_addr(&g);
    env.seal_new_user_token();
    // Accounts with tokens, for the wrong-password side of the comparison.
    for i in 0..samples {
        let user = format!("bob{i}@example.test");
        let t = Tokens::refreshable(env.oauth.issue_refresh_token(&user).into());
        env.seal(&user, PASSWORD, t);
    }

    // An unknown name against a wrong password, each from a fresh address
    // (no backoff involved).
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..samples {
        let from = IpAddr::V4(Ipv4Addr::new(127, 2, 0, (i + 1) as u8));
        let t = Instant::now();
        let _ = login_from(from, addr, &format!("nobody{i}@nowhere.test"), "wrong-pw").await;
        unknown.push(t.elapsed());
        let from = IpAddr::V4(Ipv4Addr::new(127, 3, 0, (i + 1) as u8));
        let t = Instant::now();
        let _ = login_from(from, addr, &format!("bob{i}@example.test"), "wrong-pw").await;
        wrong.push(t.elapsed());
    }
    unknown.sort();
    wrong.sort();
    println!(
        "wrong password for an account: p50 {}; unknown name: p50 {} (ratio {:.2})",
        ms(percentile(&wrong, 0.5)),
        ms(percentile(&unknown, 0.5)),
        percentile(&unknown, 0.5).as_secs_f64() / percentile(&wrong, 0.5).as_secs_f64()
    );

    // The owner logs in once from their machine: the key is cached, and
    // the address is familiar from then on.
    let mut c = LineClient::greeted(addr).await;
    assert!(c.login("a", USER, PASSWORD).await.starts_with("a OK"));
    drop(c);
    let store = FileStore::new(&env.state_dir());
    let pw = SecretString::from(PASSWORD.to_owned());
    // Re-seals the owner's tokens under a new salt (what `mailgate passwd`
    // does): the gateway's cached key no longer opens them.
    let reseal = || {
        let file = store
            .load(USER)
            .ok()
            .flatten()
            .expect("the owner's token file");
        let next = mailgate::accounts::flows::rekey(&file, &pw, &pw, &store.path(USER))
            .expect("re-sealed");
        store
            .save(&next, Want::Generation(file.generation))
            .expect("written back");
    };
    let rss_before = status_kib("VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let (refused, held, other, attempts) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for i in 0..attackers {
        let (stop, refused, held, other, attempts) = (
            stop.clone(),
            refused.clone(),
            held.clone(),
            other.clone(),
            attempts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let from = attacker_address(i);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                attempts.fetch_add(1, Ordering::Relaxed);
                match login_from(from, addr, USER, &format!("guess-{i}-{n}")).await {
                    Some(r) if r.contains("AUTHENTICATIONFAILED") => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Some(r) if r.contains("Too many failed logins") => {
                        held.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    let mut owner = Vec::new();
    let mut uncached = Vec::new();
    let mut owner_failed = 0;
    let mut n = 0;
    while started.elapsed().as_secs_f64() < seconds {
        let cold = n % 10 == 0;
        n += 1;
        if cold {
            reseal();
        }
        let t = Instant::now();
        let r = login_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, USER, PASSWORD).await;
        let took = t.elapsed();
        owner.push(took);
        if cold {
            uncached.push(took);
        }
        if !r.as_deref().is_some_and(|r| r.starts_with("a OK")) {
            if owner_failed == 0 {
                println!("first failed owner login: {r:?}");
            }
            owner_failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let peak = status_kib("VmHWM:");
    owner.sort();
    uncached.sort();
    println!(
        "owner during the flood: {} logins, {owner_failed} failed; p50 {}, p99 {}, max {}",
        owner.len(),
        ms(percentile(&owner, 0.5)),
        ms(percentile(&owner, 0.99)),
        ms(*owner.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "owner with no key cached (a full password check): {} logins; p50 {}, p99 {}, max {}",
        uncached.len(),
        ms(percentile(&uncached, 0.5)),
        ms(percentile(&uncached, 0.99)),
        ms(*uncached.last().unwrap_or(&Duration::ZERO))
    );
    let checked = refused.load(Ordering::Relaxed);
    println!(
        "attackers: {} attempts; {checked} passwords checked ({:.1} a minute for the name), {} held back by the backoff, {} otherwise (busy, closed)",
        attempts.load(Ordering::Relaxed),
        checked as f64 * 60.0 / flood_secs,
        held.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    println!(
        "RSS of the whole bench process: {} MiB before the flood, peak {} MiB",
        rss_before / 1024,
        peak / 1024
    );
    let mut c = LineClient::greeted(addr).await;
    let after = c.login("z", USER, PASSWORD).await;
    println!(
        "after the flood the gateway serves: {}",
        if after.starts_with("z OK") {
            "yes"
        } else {
            "NO"
        }
    );
    g.shutdown().await;
}
