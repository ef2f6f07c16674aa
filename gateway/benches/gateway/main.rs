//! mailgate's end-to-end benchmark: the real `mailgate` binary between
//! benchmark clients and a local XOAUTH2 upstream over TLS, measured side by
//! side with the same clients talking to the upstream directly.
//!
//! `cargo bench -p mailgate --bench gateway` runs the full benchmark (64 MiB
//! transfers, 10,000 idle sessions); `cargo test -p mailgate --bench
//! gateway` (what CI does) runs the same code as a smoke with tiny sizes.
//! Figures are printed, never asserted. See docs/performance.md.

mod client;
mod failover;
mod upstream;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::{Conn, Target};
use mailgate::accounts::store::Tokens;
use mailgate_tests::harness::{Env, PASSWORD, USER, unused_port};
use mailgate_tests::oauth::CLIENT_ID;

/// What one run measures, and how much.
#[derive(Debug, Clone)]
struct Plan {
    smoke: bool,
    /// Bytes per FETCH and per DATA.
    transfer: usize,
    transfer_rounds: usize,
    latency_samples: usize,
    login_clients: usize,
    login_seconds: f64,
    /// Instances killed in the middle of a refresh.
    kill_trials: usize,
    idle: Vec<usize>,
    /// `--only a,b`: the parts to run (throughput, latency, logins, store,
    /// proxy, kill, idle, graph, before, failover).
    /// Failovers of the Sentinel-managed store (`--failovers N`).
    failovers: usize,
    only: Option<Vec<String>>,
    /// `--before PATH`: another `mailgate` binary (an older build), run
    /// beside this one on the same configuration, token and upstream, and
    /// compared with it in the same run (the part `before`).
    before: Option<std::path::PathBuf>,
}

impl Plan {
    fn from_args() -> Plan {
        let args: Vec<String> = std::env::args().collect();
        // `cargo bench` passes --bench; `cargo test` does not.
        let smoke = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--smoke");
        let mut plan = if smoke {
            Plan {
                smoke,
                transfer: 256 * 1024,
                transfer_rounds: 1,
                latency_samples: 20,
                login_clients: 8,
                login_seconds: 0.5,
                kill_trials: 2,
                failovers: 1,
                idle: vec![50],
                only: None,
                before: None,
            }
        } else {
            Plan {
                smoke,
                transfer: 64 << 20,
                transfer_rounds: 5,
                latency_samples: 2000,
                login_clients: 64,
                login_seconds: 10.0,
                kill_trials: 24,
                failovers: 20,
                idle: vec![1_000, 10_000],
                only: None,
                before: None,
            }
        };
        // `--idle 1000,20000` overrides the session counts, `--rounds N` the
        // transfers per case, `--kills N` the instances killed mid-refresh.
        if let Some(i) = args.iter().position(|a| a == "--idle")
            && let Some(list) = args.get(i + 1)
        {
            plan.idle = list.split(',').filter_map(|n| n.parse().ok()).collect();
        }
        if let Some(n) = args
            .iter()
            .position(|a| a == "--rounds")
            .and_then(|i| args.get(i + 1)?.parse().ok())
        {
            plan.transfer_rounds = n;
        }
        if let Some(n) = args
            .iter()
            .position(|a| a == "--kills")
            .and_then(|i| args.get(i + 1)?.parse().ok())
        {
            plan.kill_trials = n;
        }
        if let Some(n) = args
            .iter()
            .position(|a| a == "--failovers")
            .and_then(|i| args.get(i + 1)?.parse().ok())
        {
            plan.failovers = n;
        }
        if let Some(i) = args.iter().position(|a| a == "--before") {
            plan.before = args.get(i + 1).map(std::path::PathBuf::from);
        }
        if let Some(i) = args.iter().position(|a| a == "--only") {
            plan.only = args
                .get(i + 1)
                .map(|l| l.split(',').map(str::to_owned).collect());
        }
        plan
    }

    fn runs(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
}

fn main() -> ExitCode {
    let plan = Plan::from_args();
    let fds = raise_fd_limit();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().collect();
    let result = match args.iter().position(|a| a == "--upstream") {
        Some(i) => rt.block_on(upstream::serve_forever(&args[i + 1..])),
        None => rt.block_on(run(plan, fds)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the descriptor limit (the hard one too, when allowed: 10,000
/// sessions need 20,000 descriptors on each side). mailgate inherits it.
fn raise_fd_limit() -> u64 {
    use rlimit::Resource;
    let want = 262_144;
    if Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}

/// `cmd` (its arguments and environment) with another program.
fn with_program(cmd: &Command, program: &std::path::Path) -> Command {
    let mut other = Command::new(program);
    other.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => other.env(k, v),
            None => other.env_remove(k),
        };
    }
    other
}

/// The benchmark upstream, in a child process (this same executable).
struct Upstream {
    child: Child,
    addrs: upstream::Addrs,
}

impl Upstream {
    fn spawn(env: &Env, size: usize, token: &str) -> anyhow::Result<Upstream> {
        use std::io::BufRead as _;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--upstream")
            .arg(env.path())
            .arg(size.to_string())
            .arg(USER)
            .arg(token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| anyhow::anyhow!("upstream said {line:?}"))?
                .parse()
                .map_err(Into::into)
        };
        let addrs = upstream::Addrs {
            imap: addr("imap=")?,
            smtp: addr("smtp=")?,
        };
        Ok(Upstream { child, addrs })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `mailgate` binary, run on its own configuration.
struct Gateway {
    child: Child,
    imap: SocketAddr,
    smtp: SocketAddr,
}

impl Gateway {
    fn spawn(env: &Env, up: upstream::Addrs, name: &str) -> anyhow::Result<Gateway> {
        Self::spawn_with(env, up, name, "", "")
    }

    /// As [`Gateway::spawn`], with `gateway` added to the `[gateway]` table
    /// and `extra` appended to the configuration.
    fn spawn_with(
        env: &Env,
        up: upstream::Addrs,
        name: &str,
        gateway: &str,
        extra: &str,
    ) -> anyhow::Result<Gateway> {
        Self::spawn_binary(None, env, up, name, gateway, "", extra)
    }

    /// As [`Gateway::spawn_with`], running `binary` (this build's when
    /// `None`), through the harness's one way to run the binary.
    /// `sending`, when not empty, takes the place of the provider's `smtp`
    /// line (e.g. `smtp = "graph"` and its `graph_url`).
    #[allow(clippy::too_many_arguments)]
    fn spawn_binary(
        binary: Option<&std::path::Path>,
        env: &Env,
        up: upstream::Addrs,
        name: &str,
        gateway: &str,
        sending: &str,
        extra: &str,
    ) -> anyhow::Result<Gateway> {
        let smtp_line = if sending.is_empty() {
            format!("smtp = \"smtps://{}\"", up.smtp)
        } else {
            sending.to_owned()
        };
        let imap: SocketAddr = format!("127.0.0.1:{}", unused_port()).parse()?;
        let smtp: SocketAddr = format!("127.0.0.1:{}", unused_port()).parse()?;
        let config = format!(
            r#"[gateway]
state_dir = "{state}"
max_connections = 50000
preauth_timeout = "120s"
shutdown_grace = "1s"
{gateway}

[[listener]]
protocol = "imap"
address = "{imap}"
in_band_authorization = false

[[listener]]
protocol = "smtp"
address = "{smtp}"
in_band_authorization = false

[provider.test]
preset = "custom"
client_id = "{CLIENT_ID}"
authorize_url = "{authorize}"
redirect_uri = "http://127.0.0.1/"
token_url = "{token}"
scopes = ["mail"]
imap = "imaps://{up_imap}"
{smtp_line}
ca_file = "{ca}"

[[account]]
user = "{USER}"
provider = "test"

{extra}
"#,
            state = env.state_dir().display(),
            authorize = env.oauth.authorize_url(),
            token = env.oauth.token_url(),
            up_imap = up.imap,
            ca = env.ca.ca_file.display(),
        );
        let path = env.path().join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(env.path().join(format!("{name}.log")))?;
        let mut cmd = mailgate_tests::harness::mailgate(Some(&path));
        if let Some(b) = binary {
            cmd = with_program(&cmd, b);
        }
        let child = cmd
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let g = Gateway { child, imap, smtp };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(imap).is_err()
            || std::net::TcpStream::connect(smtp).is_err()
        {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "mailgate did not start: see {}",
                    env.path().join(format!("{name}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(g)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    env: Env,
    up: upstream::Addrs,
    fds: u64,
    upstream_pid: u32,
    gateway_pid: u32,
    direct_imap: Target,
    direct_smtp: Target,
    chunk: Arc<[u8]>,
    report: Vec<String>,
}

impl Bench {
    fn via(&self, addr: SocketAddr) -> Target {
        Target::Gateway {
            addr,
            password: PASSWORD.to_owned(),
        }
    }

    fn say(&mut self, line: String) {
        println!("{line}");
        self.report.push(line);
    }
}

async fn run(plan: Plan, fds: u64) -> anyhow::Result<()> {
    let env = Env::new().await;
    env.oauth.set_lifetime(Duration::from_secs(3 * 3600));
    // A warm token: a live access token sealed with the refresh token.
    let rt = env.oauth.issue_refresh_token(USER);
    let at = env.oauth.issue_access_token(USER);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    env.seal(USER, PASSWORD, {
        let mut t = Tokens::refreshable(rt.into());
        t.set_access(
            mailgate::accounts::store::Audience::Mail,
            at.clone().into(),
            now.as_secs() + 3 * 3600,
        );
        t
    });
    let upstream = Upstream::spawn(&env, plan.transfer, &at)?;
    let up = upstream.addrs;
    let tls = env.ca.client_config();
    let mut b = Bench {
        direct_imap: Target::Direct {
            addr: up.imap,
            tls: tls.clone(),
            token: at.clone(),
        },
        direct_smtp: Target::Direct {
            addr: up.smtp,
            tls,
            token: at,
        },
        env,
        up,
        fds,
        upstream_pid: upstream.child.id(),
        gateway_pid: 0,
        chunk: upstream::text_chunk(),
        report: Vec::new(),
    };
    println!(
        "mailgate benchmark ({}; {} CPUs; descriptor limit {fds})",
        if plan.smoke {
            "smoke: tiny sizes"
        } else {
            "full"
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );

    let gw = Gateway::spawn(&b.env, b.up, "main")?;
    b.gateway_pid = gw.child.id();
    let via_imap = b.via(gw.imap);
    let via_smtp = b.via(gw.smtp);
    // Warm the token and key cache (the first login derives the key).
    client::imap_logout(client::imap_session(&via_imap, USER, false).await?).await?;

    if plan.runs("throughput") {
        throughput(&mut b, &plan, &via_imap, &via_smtp).await?;
    }
    if plan.runs("latency") {
        latency(&mut b, &plan, &via_imap).await?;
    }
    if plan.runs("logins") {
        login_rate(&mut b, &plan, &via_imap).await?;
    }
    if plan.runs("store") {
        store_compare(&mut b, &plan, &via_imap).await?;
    }
    if plan.runs("proxy") {
        proxy_compare(&mut b, &plan, &via_imap).await?;
    }
    if plan.runs("graph") {
        graph_compare(&mut b, &plan).await?;
    }
    if let Some(before) = plan.before.clone()
        && plan.runs("before")
    {
        before_after(&mut b, &plan, &before, (&via_imap, &via_smtp)).await?;
    }
    drop(gw);
    if plan.runs("kill") {
        kill_during_refresh(&mut b, &plan).await?;
    }
    if plan.runs("failover") {
        failover::failover(&mut b, plan.failovers).await?;
    }
    if plan.runs("idle") {
        for &n in &plan.idle.clone() {
            idle(&mut b, n).await?;
        }
    }
    drop(upstream);
    println!("\nsummary");
    for l in &b.report {
        println!("  {l}");
    }
    Ok(())
}

fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

async fn fetch_once(target: &Target) -> anyhow::Result<f64> {
    let mut c = client::imap_session(target, USER, false).await?;
    let t = Instant::now();
    let n = client::imap_fetch(&mut c).await?;
    let rate = mb(n, t.elapsed());
    client::imap_logout(c).await?;
    Ok(rate)
}

async fn data_once(target: &Target, chunk: &[u8], size: usize) -> anyhow::Result<f64> {
    let mut c = client::smtp_session(target, USER).await?;
    let t = Instant::now();
    client::smtp_send(&mut c, chunk, size).await?;
    let rate = mb(size, t.elapsed());
    c.send(b"QUIT\r\n").await?;
    c.reply("221").await?;
    Ok(rate)
}

async fn throughput(
    b: &mut Bench,
    plan: &Plan,
    via_imap: &Target,
    via_smtp: &Target,
) -> anyhow::Result<()> {
    let size = plan.transfer;
    println!(
        "\n1. relay throughput: {}, median of {} rounds, direct and via alternating",
        size_text(size),
        plan.transfer_rounds
    );
    let (mut fd, mut fv, mut sd, mut sv) = (vec![], vec![], vec![], vec![]);
    // CPU time (ms) of [bench clients, upstream, mailgate] per case.
    let mut cpu = [[0f64; 3]; 4];
    let pids = [std::process::id(), b.upstream_pid, b.gateway_pid];
    let mut account = |case: usize, before: [f64; 3]| {
        let after = pids.map(cpu_ms);
        for i in 0..3 {
            cpu[case][i] += after[i] - before[i];
        }
    };
    for _ in 0..plan.transfer_rounds {
        let t = pids.map(cpu_ms);
        fd.push(fetch_once(&b.direct_imap).await?);
        account(0, t);
        let t = pids.map(cpu_ms);
        fv.push(fetch_once(via_imap).await?);
        account(1, t);
        let t = pids.map(cpu_ms);
        sd.push(data_once(&b.direct_smtp, &b.chunk, size).await?);
        account(2, t);
        let t = pids.map(cpu_ms);
        sv.push(data_once(via_smtp, &b.chunk, size).await?);
        account(3, t);
    }
    let (fd, fv, sd, sv) = (median(fd), median(fv), median(sd), median(sv));
    let rounds = plan.transfer_rounds as f64;
    for (case, name) in ["FETCH direct", "FETCH via", "DATA direct", "DATA via"]
        .iter()
        .enumerate()
    {
        let [c, u, g] = cpu[case].map(|ms| ms / rounds);
        println!(
            "   CPU per transfer, {name}: clients {c:.1} ms, upstream {u:.1} ms, mailgate {g:.1} ms"
        );
    }
    b.say(format!(
        "IMAP FETCH {}: direct {fd:.0} MB/s, via mailgate {fv:.0} MB/s, ratio {:.3} (target >= 0.95)",
        size_text(size),
        fv / fd
    ));
    b.say(format!(
        "SMTP DATA  {}: direct {sd:.0} MB/s, via mailgate {sv:.0} MB/s, ratio {:.3} (target >= 0.95)",
        size_text(size),
        sv / sd
    ));
    Ok(())
}

/// CPU time a process has used, in milliseconds (all its threads).
fn cpu_ms(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn latency(b: &mut Bench, plan: &Plan, via: &Target) -> anyhow::Result<()> {
    let n = plan.latency_samples;
    println!("\n2. login latency, warm token and key cache: {n} logins each, alternating");
    let (mut direct, mut gw, mut gw_login) = (vec![], vec![], vec![]);
    for i in 0..n + n / 10 {
        let warm = i < n / 10;
        // Direct: TCP connect, TLS handshake, greeting, AUTHENTICATE XOAUTH2 -> OK.
        let t0 = Instant::now();
        let mut c = client::imap_greeted(&b.direct_imap, true).await?;
        client::imap_login(&mut c, &b.direct_imap, USER).await?;
        let d = t0.elapsed();
        client::imap_logout(c).await?;
        // Via: TCP connect, greeting, LOGIN -> OK (mailgate connects,
        // handshakes and authenticates upstream in between).
        let t0 = Instant::now();
        let mut c = client::imap_greeted(via, true).await?;
        let t1 = Instant::now();
        client::imap_login(&mut c, via, USER).await?;
        let (v, vl) = (t0.elapsed(), t1.elapsed());
        client::imap_logout(c).await?;
        if !warm {
            direct.push(d);
            gw.push(v);
            gw_login.push(vl);
        }
    }
    for v in [&mut direct, &mut gw, &mut gw_login] {
        v.sort();
    }
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (g50, g99) = (percentile(&gw, 0.5), percentile(&gw, 0.99));
    let (l50, l99) = (percentile(&gw_login, 0.5), percentile(&gw_login, 0.99));
    b.say(format!(
        "login, connect -> tagged OK: direct p50 {:.0} us p99 {:.0} us; via mailgate p50 {:.0} us p99 {:.0} us; added p50 {:.0} us p99 {:.0} us (target p50 <= 1000 us)",
        us(d50), us(d99), us(g50), us(g99), us(g50) - us(d50), us(g99) - us(d99)
    ));
    b.say(format!(
        "  of which LOGIN -> tagged OK via mailgate: p50 {:.0} us p99 {:.0} us",
        us(l50),
        us(l99)
    ));
    Ok(())
}

async fn logins_for(target: &Target, clients: usize, secs: f64) -> (u64, u64, f64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (target, ok, failed) = (target.clone(), ok.clone(), failed.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let r = async {
                    let c = client::imap_session(&target, USER, true).await?;
                    client::imap_logout(c).await
                }
                .await;
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    (ok, failed.load(Ordering::Relaxed), ok as f64 / elapsed)
}

async fn login_rate(b: &mut Bench, plan: &Plan, via: &Target) -> anyhow::Result<()> {
    let (c, s) = (plan.login_clients, plan.login_seconds);
    println!(
        "\n4. login throughput: {c} concurrent clients for {s} s each (connect, login, LOGOUT)"
    );
    let (dok, dfail, drate) = logins_for(&b.direct_imap, c, s).await;
    let (vok, vfail, vrate) = logins_for(via, c, s).await;
    b.say(format!(
        "logins/s with {c} clients: direct {drate:.0} ({dok} ok, {dfail} failed), via mailgate {vrate:.0} ({vok} ok, {vfail} failed)"
    ));
    if vfail > 0 {
        anyhow::bail!("{vfail} logins through mailgate failed");
    }
    Ok(())
}

/// The Redis store against the file store, in one run: login latency and
/// logins/s of two gateways on the same warm token, one on each store.
async fn store_compare(b: &mut Bench, plan: &Plan, via_file: &Target) -> anyhow::Result<()> {
    if !std::path::Path::new("/usr/bin/redis-server").exists() {
        println!("\n5. store: skipped (no /usr/bin/redis-server)");
        return Ok(());
    }
    let redis = mailgate_tests::redis::Redis::start().await;
    let extra = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"bench:\"\n",
        redis.url()
    );
    // The same sealed file, copied into Redis.
    let store = open_store(&b.env, "store", &extra).await?;
    let file = b.env.token_file(USER);
    store
        .save(&file, mailgate::accounts::store::Expect::Any)
        .await?;
    let gw = Gateway::spawn_with(&b.env, b.up, "redis", "", &extra)?;
    let via_redis = b.via(gw.imap);
    client::imap_logout(client::imap_session(&via_redis, USER, false).await?).await?;
    let n = plan.latency_samples;
    println!(
        "\n5. the Redis store against the file store: {n} logins each, alternating, then logins/s"
    );
    let (mut f, mut r) = (vec![], vec![]);
    for _ in 0..n {
        for (target, out) in [(via_file, &mut f), (&via_redis, &mut r)] {
            let t0 = Instant::now();
            let mut c = client::imap_greeted(target, true).await?;
            client::imap_login(&mut c, target, USER).await?;
            out.push(t0.elapsed());
            client::imap_logout(c).await?;
        }
    }
    f.sort();
    r.sort();
    let (f50, r50) = (percentile(&f, 0.5), percentile(&r, 0.5));
    b.say(format!(
        "login p50/p99: file store {:.0}/{:.0} us, Redis store {:.0}/{:.0} us; Redis adds {:.0} us at p50 (target <= 500 us)",
        us(f50),
        us(percentile(&f, 0.99)),
        us(r50),
        us(percentile(&r, 0.99)),
        us(r50) - us(f50)
    ));
    let (c, s) = (plan.login_clients, plan.login_seconds);
    let (_, ffail, frate) = logins_for(via_file, c, s).await;
    let (_, rfail, rrate) = logins_for(&via_redis, c, s).await;
    b.say(format!(
        "logins/s with {c} clients: file store {frate:.0}, Redis store {rrate:.0} ({:.2}x; target >= 0.95x)",
        rrate / frate.max(1.0)
    ));
    if ffail + rfail > 0 {
        anyhow::bail!("{} logins failed", ffail + rfail);
    }
    Ok(())
}

/// Logins through an outbound proxy against direct ones, in one run: a
/// gateway whose upstream connections go through the test HTTP proxy
/// (CONNECT) and one through the test SOCKS5 proxy, alternating with the
/// direct gateway on the same warm token.
/// A 10 KiB message from `USER` to one recipient.
fn graph_message() -> Vec<u8> {
    let mut m = format!(
        "From: {USER}\r\nTo: sink@example.test\r\nSubject: bench\r\nMessage-ID: <bench@example.test>\r\n\r\n"
    )
    .into_bytes();
    let line: Vec<u8> = (0..78u8).map(|i| b'a' + (i % 26)).collect();
    while m.len() < 10 * 1024 {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Sending through Microsoft Graph (the fake Graph on loopback): one SMTP
/// session through mailgate sending messages one after another, against
/// the same messages posted straight to the fake Graph's `sendMail`;
/// messages/s and latency (MAIL to 250 via mailgate; the request via the
/// straight post).
async fn graph_compare(b: &mut Bench, plan: &Plan) -> anyhow::Result<()> {
    use base64::Engine as _;
    let n = plan.latency_samples.min(1000);
    println!("\n7. sending through Microsoft Graph (fake Graph): {n} messages of 10 KiB each way");
    let fake = mailgate_tests::graph::FakeGraph::start(b.env.oauth.clone()).await;
    let sending = format!("smtp = \"graph\"\ngraph_url = \"{}\"", fake.url());
    let gw = Gateway::spawn_binary(None, &b.env, b.up, "graph", "", &sending, "")?;
    let message = graph_message();

    // Straight to the fake Graph.
    let token = b.env.oauth.issue_access_token(USER);
    let http = reqwest::Client::new();
    let url = format!("{}/users/{USER}/sendMail", fake.url());
    let body = base64::engine::general_purpose::STANDARD.encode(&message);
    let mut direct = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        direct.push(post_mime(&http, &url, &token, &body).await?);
    }
    let direct_rate = n as f64 / start.elapsed().as_secs_f64();

    // Through mailgate: one SMTP session.
    let via = b.via(gw.smtp);
    let mut c = client::smtp_session(&via, USER).await?;
    let mut through = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client::smtp_pipelined(&mut c, &message).await?;
        through.push(t.elapsed());
    }
    let via_rate = n as f64 / start.elapsed().as_secs_f64();
    c.send(b"QUIT\r\n").await?;
    for v in [&mut direct, &mut through] {
        v.sort();
    }
    anyhow::ensure!(
        fake.deliveries().len() == 2 * n,
        "{} deliveries for {} messages",
        fake.deliveries().len(),
        2 * n
    );
    let parallel = graph_parallel(b, &fake, gw.smtp, &message, n).await?;
    let (rss_before, hwm_before) = gw.memory()?;
    let (large, large_took) = graph_large(b, gw.smtp).await?;
    b.say(format!(
        "Graph sendMail, 10 KiB messages one after another: direct {direct_rate:.0}/s (p50 {:.0} us, p99 {:.0} us), via mailgate {via_rate:.0}/s (p50 {:.0} us, p99 {:.0} us); ratio {:.3} (target >= 0.9)",
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99)),
        us(percentile(&through, 0.5)),
        us(percentile(&through, 0.99)),
        via_rate / direct_rate
    ));
    let (d_rate, v_rate, d50, d99, v50, v99) = parallel;
    b.say(format!(
        "Graph sendMail, 10 KiB messages from {GRAPH_CLIENTS} clients at once: direct {d_rate:.0}/s (p50 {d50:.0} us, p99 {d99:.0} us), via mailgate {v_rate:.0}/s (p50 {v50:.0} us, p99 {v99:.0} us); ratio {:.3} (target >= 0.9)",
        v_rate / d_rate
    ));
    let (_, hwm) = gw.memory()?;
    let in_flight = (GRAPH_LARGE_CLIENTS * large) as f64;
    b.say(format!(
        "Graph, {GRAPH_LARGE_CLIENTS} clients each sending a {:.1} MB message at once (draft + upload sessions): all accepted in {:.1} s; mailgate's RSS before {:.0} MB (peak {:.0} MB), peak RSS {:.0} MB for {:.0} MB in flight, {:.2}x (target < 2x)",
        large as f64 / 1e6,
        large_took.as_secs_f64(),
        rss_before as f64 * 1024.0 / 1e6,
        hwm_before as f64 * 1024.0 / 1e6,
        hwm as f64 * 1024.0 / 1e6,
        in_flight / 1e6,
        hwm as f64 * 1024.0 / in_flight
    ));
    drop(gw);
    Ok(())
}

/// One `sendMail` of the base64 MIME `body` straight to the fake Graph;
/// how long it took to be accepted.
async fn post_mime(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await?;
    anyhow::ensure!(
        r.status().as_u16() == 202,
        "the fake Graph said {}",
        r.status()
    );
    Ok(t.elapsed())
}

/// SMTP clients (and direct posters) at once in [`graph_parallel`].
const GRAPH_CLIENTS: usize = 8;
/// Clients sending a large message at once in [`graph_large`].
const GRAPH_LARGE_CLIENTS: usize = 10;

/// `n` messages from [`GRAPH_CLIENTS`] clients at once, straight to the
/// fake Graph and through mailgate: (direct/s, via/s, direct p50, p99,
/// via p50, p99 in microseconds).
async fn graph_parallel(
    b: &Bench,
    fake: &mailgate_tests::graph::FakeGraph,
    smtp: SocketAddr,
    message: &[u8],
    n: usize,
) -> anyhow::Result<(f64, f64, f64, f64, f64, f64)> {
    use base64::Engine as _;
    let each = n.div_ceil(GRAPH_CLIENTS);
    let token = b.env.oauth.issue_access_token(USER);
    let url = format!("{}/users/{USER}/sendMail", fake.url());
    let body = base64::engine::general_purpose::STANDARD.encode(message);
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..GRAPH_CLIENTS {
        let (url, token, body) = (url.clone(), token.clone(), body.clone());
        set.spawn(async move {
            let http = reqwest::Client::new();
            let mut took = Vec::with_capacity(each);
            for _ in 0..each {
                took.push(post_mime(&http, &url, &token, &body).await?);
            }
            anyhow::Ok(took)
        });
    }
    let mut direct = Vec::new();
    while let Some(r) = set.join_next().await {
        direct.extend(r??);
    }
    let direct_rate = direct.len() as f64 / start.elapsed().as_secs_f64();

    let via = b.via(smtp);
    let message = std::sync::Arc::new(message.to_vec());
    let start = Instant::now();
    for _ in 0..GRAPH_CLIENTS {
        let (via, message) = (via.clone(), message.clone());
        set.spawn(async move {
            let mut c = client::smtp_session(&via, USER).await?;
            let mut took = Vec::with_capacity(each);
            for _ in 0..each {
                let t = Instant::now();
                client::smtp_pipelined(&mut c, &message).await?;
                took.push(t.elapsed());
            }
            c.send(b"QUIT\r\n").await?;
            Ok(took)
        });
    }
    let mut through = Vec::new();
    while let Some(r) = set.join_next().await {
        through.extend(r??);
    }
    let via_rate = through.len() as f64 / start.elapsed().as_secs_f64();
    direct.sort();
    through.sort();
    Ok((
        direct_rate,
        via_rate,
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99)),
        us(percentile(&through, 0.5)),
        us(percentile(&through, 0.99)),
    ))
}

/// A message of about 30 MB: a short text and a 22.5 MB attachment of
/// pseudo-random bytes, base64 in lines of 76.
fn graph_large_message() -> Vec<u8> {
    use base64::Engine as _;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..22_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut m = format!(
        "From: {USER}\r\nTo: sink@example.test\r\nSubject: scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe scan.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=scan.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    for line in b64.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

/// [`GRAPH_LARGE_CLIENTS`] clients each send a message of about 30 MB
/// at once through mailgate; (its size, how long until all were
/// accepted).
async fn graph_large(b: &Bench, smtp: SocketAddr) -> anyhow::Result<(usize, Duration)> {
    let message = std::sync::Arc::new(graph_large_message());
    let via = b.via(smtp);
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..GRAPH_LARGE_CLIENTS {
        let (via, message) = (via.clone(), message.clone());
        set.spawn(async move {
            let mut c = client::smtp_session(&via, USER).await?;
            client::smtp_pipelined(&mut c, &message).await?;
            c.send(b"QUIT\r\n").await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((message.len(), start.elapsed()))
}

/// Login latency via mailgate, connect -> tagged OK: `n` samples after
/// `n / 10` unmeasured, alternating between the targets; sorted samples
/// of each.
async fn latencies(targets: &[&Target], n: usize) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut all = vec![Vec::with_capacity(n); targets.len()];
    for i in 0..n + n / 10 {
        for (t, samples) in targets.iter().zip(all.iter_mut()) {
            let t0 = Instant::now();
            let mut c = client::imap_greeted(t, true).await?;
            client::imap_login(&mut c, t, USER).await?;
            let took = t0.elapsed();
            client::imap_logout(c).await?;
            if i >= n / 10 {
                samples.push(took);
            }
        }
    }
    for v in &mut all {
        v.sort();
    }
    Ok(all)
}

/// An older build (`--before PATH`) against this one, in the same run, on
/// the same configuration, token, upstream and machine: login latency
/// (alternating), relay throughput (alternating rounds) and logins/s.
async fn before_after(
    b: &mut Bench,
    plan: &Plan,
    binary: &std::path::Path,
    (after_imap, after_smtp): (&Target, &Target),
) -> anyhow::Result<()> {
    println!(
        "\n8. before and after: {} against this build",
        binary.display()
    );
    let old = Gateway::spawn_binary(Some(binary), &b.env, b.up, "before", "", "", "")?;
    let (before_imap, before_smtp) = (b.via(old.imap), b.via(old.smtp));
    // The first login derives the key.
    client::imap_logout(client::imap_session(&before_imap, USER, false).await?).await?;

    let n = plan.latency_samples;
    let lat = latencies(&[&before_imap, after_imap], n).await?;
    let (b50, b99) = (percentile(&lat[0], 0.5), percentile(&lat[0], 0.99));
    let (a50, a99) = (percentile(&lat[1], 0.5), percentile(&lat[1], 0.99));
    b.say(format!(
        "before/after login, connect -> tagged OK ({n} each, alternating): before p50 {:.0} us p99 {:.0} us; after p50 {:.0} us p99 {:.0} us; after/before p50 {:.3}",
        us(b50),
        us(b99),
        us(a50),
        us(a99),
        us(a50) / us(b50)
    ));

    let size = plan.transfer;
    let (mut fb, mut fa, mut sb, mut sa) = (vec![], vec![], vec![], vec![]);
    // CPU time (ms) of each build's process per case: [FETCH, DATA] of
    // [before, after]; steadier than MB/s on a shared machine.
    let pids = [old.child.id(), b.gateway_pid];
    let mut cpu = [[0f64; 2]; 2];
    // Each round swaps which build goes first, so that neither always
    // runs on a machine the other just warmed (or tired).
    for round in 0..plan.transfer_rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (imap, rates) = if which == 0 {
                (&before_imap, &mut fb)
            } else {
                (after_imap, &mut fa)
            };
            let t = cpu_ms(pids[which]);
            rates.push(fetch_once(imap).await?);
            cpu[0][which] += cpu_ms(pids[which]) - t;
        }
        for which in order {
            let (smtp, rates) = if which == 0 {
                (&before_smtp, &mut sb)
            } else {
                (after_smtp, &mut sa)
            };
            let t = cpu_ms(pids[which]);
            rates.push(data_once(smtp, &b.chunk, size).await?);
            cpu[1][which] += cpu_ms(pids[which]) - t;
        }
    }
    let rounds = plan.transfer_rounds as f64;
    let cpu = cpu.map(|c| c.map(|ms| ms / rounds));
    let (fb, fa, sb, sa) = (median(fb), median(fa), median(sb), median(sa));
    b.say(format!(
        "before/after mailgate CPU per transfer: FETCH before {:.1} ms, after {:.1} ms ({:.3}); DATA before {:.1} ms, after {:.1} ms ({:.3})",
        cpu[0][0],
        cpu[0][1],
        cpu[0][1] / cpu[0][0],
        cpu[1][0],
        cpu[1][1],
        cpu[1][1] / cpu[1][0]
    ));
    b.say(format!(
        "before/after IMAP FETCH {}: before {fb:.0} MB/s, after {fa:.0} MB/s, after/before {:.3}",
        size_text(size),
        fa / fb
    ));
    b.say(format!(
        "before/after SMTP DATA  {}: before {sb:.0} MB/s, after {sa:.0} MB/s, after/before {:.3}",
        size_text(size),
        sa / sb
    ));

    let (c, secs) = (plan.login_clients, plan.login_seconds);
    let (bok, bfail, brate) = logins_for(&before_imap, c, secs).await;
    let (aok, afail, arate) = logins_for(after_imap, c, secs).await;
    b.say(format!(
        "before/after logins/s with {c} clients: before {brate:.0} ({bok} ok, {bfail} failed), after {arate:.0} ({aok} ok, {afail} failed), after/before {:.3}",
        arate / brate
    ));
    if afail > 0 {
        anyhow::bail!("{afail} logins through this build failed");
    }
    drop(old);
    Ok(())
}

async fn proxy_compare(b: &mut Bench, plan: &Plan, direct: &Target) -> anyhow::Result<()> {
    use mailgate_tests::proxies::TestProxy;
    let http = TestProxy::http(None).await;
    let socks = TestProxy::socks5(None).await;
    let via_http = Gateway::spawn_with(
        &b.env,
        b.up,
        "http-proxy",
        &format!("proxy = \"http://{}\"", http.addr),
        "",
    )?;
    let via_socks = Gateway::spawn_with(
        &b.env,
        b.up,
        "socks-proxy",
        &format!("proxy = \"socks5://{}\"", socks.addr),
        "",
    )?;
    let (th, ts) = (b.via(via_http.imap), b.via(via_socks.imap));
    for t in [&th, &ts] {
        client::imap_logout(client::imap_session(t, USER, false).await?).await?;
    }
    let n = plan.latency_samples;
    println!(
        "\n6. outbound proxies: {n} logins each (connect, login: a new upstream connection each), alternating, then logins/s"
    );
    let (mut d, mut h, mut k) = (vec![], vec![], vec![]);
    for _ in 0..n {
        for (target, out) in [(direct, &mut d), (&th, &mut h), (&ts, &mut k)] {
            let t0 = Instant::now();
            let mut c = client::imap_greeted(target, true).await?;
            client::imap_login(&mut c, target, USER).await?;
            out.push(t0.elapsed());
            client::imap_logout(c).await?;
        }
    }
    for v in [&mut d, &mut h, &mut k] {
        v.sort();
    }
    let p = |v: &[Duration]| (us(percentile(v, 0.5)), us(percentile(v, 0.99)));
    let ((d50, d99), (h50, h99), (k50, k99)) = (p(&d), p(&h), p(&k));
    b.say(format!(
        "login p50/p99: direct {d50:.0}/{d99:.0} us, HTTP CONNECT {h50:.0}/{h99:.0} us (+{:.0} us), SOCKS5 {k50:.0}/{k99:.0} us (+{:.0} us)",
        h50 - d50,
        k50 - d50
    ));
    let (c, s) = (plan.login_clients, plan.login_seconds);
    let (_, dfail, drate) = logins_for(direct, c, s).await;
    let (_, hfail, hrate) = logins_for(&th, c, s).await;
    let (_, kfail, krate) = logins_for(&ts, c, s).await;
    b.say(format!(
        "logins/s with {c} clients: direct {drate:.0}, HTTP CONNECT {hrate:.0} ({:.2}x), SOCKS5 {krate:.0} ({:.2}x)",
        hrate / drate.max(1.0),
        krate / drate.max(1.0)
    ));
    if dfail + hfail + kfail > 0 {
        anyhow::bail!("{} logins failed", dfail + hfail + kfail);
    }
    if http.log().is_empty() || socks.log().is_empty() {
        anyhow::bail!("the proxies forwarded nothing");
    }
    Ok(())
}

/// Instances killed with SIGKILL in the middle of a refresh, at points
/// spread evenly over the token endpoint's round trip, under strict
/// rotation: how often the provider had already rotated the refresh token,
/// and how often the account was lost (the next instance's refresh refused:
/// the dead one never wrote the new token to Redis).
async fn kill_during_refresh(b: &mut Bench, plan: &Plan) -> anyhow::Result<()> {
    use mailgate::accounts::store::{Expect, Kdf, SealingKey, TokenFile};
    use mailgate_tests::oauth::Mode;
    if !std::path::Path::new("/usr/bin/redis-server").exists() {
        println!("\n7. kill during refresh: skipped (no /usr/bin/redis-server)");
        return Ok(());
    }
    // Each way of the token endpoint's round trip.
    let one_way = Duration::from_millis(25);
    let span = one_way * 2 + Duration::from_millis(10);
    let n = plan.kill_trials;
    println!(
        "\n7. kill during refresh: {n} instances killed with SIGKILL at points spread over the token request ({} ms each way, strict rotation, then a new instance logs in)",
        one_way.as_millis()
    );
    let redis = mailgate_tests::redis::Redis::start().await;
    b.env.oauth.set_rotate(true);
    b.env.oauth.set_mode(Mode::Network(one_way));
    let key = SealingKey::derive(
        &secrecy::SecretString::from(PASSWORD.to_owned()),
        &Kdf::generate(),
    )?;
    // No upstream listens here: a login ends at the refused connection, so
    // a token the upstream rejects never starts a second refresh.
    let closed: SocketAddr = format!("127.0.0.1:{}", unused_port()).parse()?;
    let nowhere = upstream::Addrs {
        imap: closed,
        smtp: closed,
    };
    // The refresh lease lives max(5 s, 2 x upstream_timeout): the next
    // instance takes over 5 s after a kill.
    let quick = "upstream_timeout = \"2s\"";
    let (mut committed, mut lost, mut lost_before_commit, mut unfinished) = (0, 0, 0, 0);
    for i in 0..n {
        let extra = format!(
            "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"kill{i}:\"\n",
            redis.url()
        );
        // A refresh token and no access token: the first login refreshes.
        let tokens = Tokens::refreshable(b.env.oauth.issue_refresh_token(USER).into());
        let file = TokenFile::seal(&USER.to_lowercase(), "test", &key, &tokens)?;
        open_store(&b.env, &format!("kill{i}"), &extra)
            .await?
            .save(&file, Expect::Any)
            .await?;

        let mut first = Gateway::spawn_with(&b.env, nowhere, &format!("kill{i}a"), quick, &extra)?;
        let (requests, refreshes) = (
            b.env.oauth.token_request_count(),
            b.env.oauth.refresh_times().len(),
        );
        let via = b.via(first.imap);
        // The login fails upstream (the bench upstream takes one token) or
        // dies with the instance; only the refresh it starts matters.
        let login = tokio::spawn(async move {
            let mut c = client::imap_greeted(&via, true).await?;
            client::imap_login(&mut c, &via, USER).await
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.env.oauth.token_request_count() == requests {
            if Instant::now() > deadline {
                anyhow::bail!("instance {i} sent no token request");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(span.mul_f64(i as f64 / n as f64)).await;
        let _ = first.child.kill();
        let _ = first.child.wait();
        login.abort();
        let rotated = b.env.oauth.refresh_times().len() > refreshes;
        committed += usize::from(rotated);

        let refused = b.env.oauth.refused_refresh_count();
        let second = Gateway::spawn_with(&b.env, nowhere, &format!("kill{i}b"), quick, &extra)?;
        let via = b.via(second.imap);
        let mut c = client::imap_greeted(&via, true).await?;
        // The new instance waits out the dead one's lease, then refreshes.
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            client::imap_login(&mut c, &via, USER),
        )
        .await;
        if b.env.oauth.refused_refresh_count() > refused {
            lost += 1;
            lost_before_commit += usize::from(!rotated);
        } else if b.env.oauth.refresh_times().len() == refreshes {
            // Nobody rotated the token: the new instance never refreshed.
            unfinished += 1;
        }
        drop(second);
    }
    b.env.oauth.set_mode(Mode::Normal);
    b.env.oauth.set_rotate(false);
    b.say(format!(
        "kill during refresh: {n} SIGKILLs over a {} ms token round trip: {committed} after the provider rotated the refresh token, {lost} accounts needing a new sign-in ({lost_before_commit} of them killed before the rotation), {unfinished} with no refresh by the next instance",
        span.as_millis()
    ));
    if lost_before_commit + unfinished > 0 {
        anyhow::bail!(
            "an instance killed before the rotation lost the account, or the next instance never refreshed"
        );
    }
    Ok(())
}

/// The token store that `extra` (a `[store]` table) configures, opened
/// from a minimal configuration written as `name`.toml.
async fn open_store(
    env: &Env,
    name: &str,
    extra: &str,
) -> anyhow::Result<mailgate::accounts::store::Store> {
    let path = env.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[gateway]\nstate_dir = \"{}\"\n[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:0\"\n[provider.p]\npreset = \"office365\"\nclient_id = \"x\"\n{extra}",
            env.state_dir().display()
        ),
    )?;
    let cfg =
        mailgate_config::load_with_env(&path, Vec::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(mailgate::accounts::store::open(&cfg).await?.0)
}

async fn idle_session(target: Target) -> std::io::Result<Conn> {
    let mut c = client::imap_session(&target, USER, true).await?;
    c.send(b"i IDLE\r\n").await?;
    let l = c.line().await?;
    if !l.starts_with('+') {
        return Err(std::io::Error::other(format!("IDLE answered {l:?}")));
    }
    Ok(c)
}

async fn idle(b: &mut Bench, wanted: usize) -> anyhow::Result<()> {
    // mailgate holds two descriptors per session (client and upstream) and
    // a few of its own; without the right to raise the hard limit, the
    // limit caps the count.
    let most = (b.fds.saturating_sub(32) / 2) as usize;
    let n = wanted.min(most);
    let capped = if n < wanted {
        format!(
            " (asked for {wanted}: the descriptor limit {} allows {most})",
            b.fds
        )
    } else {
        String::new()
    };
    println!("\n3. {n} idle IMAP sessions in IDLE (fresh mailgate process){capped}");
    let mut gw = Gateway::spawn(&b.env, b.up, &format!("idle-{n}"))?;
    let target = b.via(gw.imap);
    client::imap_logout(client::imap_session(&target, USER, true).await?).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (base, _) = gw.memory()?;
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (target, gate) = (target.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(std::io::Error::other)?;
            idle_session(target).await
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let ramp = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = gw.memory()?;
    // Every session is still there: end one IDLE through the relay.
    if let Some(c) = held.last_mut() {
        c.send(b"DONE\r\n").await?;
        c.tagged_ok("i").await?;
    }
    let alive = gw.alive();
    let per = |kib: u64| (kib.saturating_sub(base)) as f64 / held.len().max(1) as f64;
    b.say(format!(
        "{n} idle sessions{capped}: {} held, {} errors, opened in {:.1} s; mailgate RSS {base} KiB before, {rss} KiB now, peak {hwm} KiB; per session {:.1} KiB now, {:.1} KiB at peak (target <= 64 KiB){}",
        held.len(),
        errors.len(),
        ramp.as_secs_f64(),
        per(rss),
        per(hwm),
        if alive { "" } else { "; mailgate DIED" },
    ));
    if let Some(e) = errors.first() {
        anyhow::bail!("{} of {n} idle sessions failed, first: {e}", errors.len());
    }
    if !alive {
        anyhow::bail!("mailgate exited during the idle phase");
    }
    drop(held);
    Ok(())
}
