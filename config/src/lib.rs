//! mailgate's configuration (SPEC §3): the typed model, the provider presets,
//! loading through the `config` crate (the TOML file, then `MAILGATE_`
//! environment overrides) and validation that reports every problem as
//! `file:key: message`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

mod certificate;
mod choice;
mod errors;
mod graph;
mod load;
mod notify;
mod portal;
mod presets;
mod proxy;
mod queries;
mod raw;
mod resolve;
mod store;

pub use certificate::{AssertionAlg, ClientCertificate, EXPIRY_WARNING};
pub(crate) use choice::Choice;
pub use errors::{ConfigError, ConfigErrors};
pub use graph::{GRAPH_MAIL_SEND, GRAPH_MAIL_SEND_SHARED, GRAPH_URL, GraphApi, Sending};
pub use load::{ENV_CONFIG, load, load_with_env, locate};
pub use notify::{DEFAULT_COMMAND_TIMEOUT, Notify};
pub use portal::Portal;
pub use proxy::{NoProxy, Proxy, ProxyKind};
pub use store::{DEFAULT_WAIT_TIMEOUT, Redis, Sentinels, Store};

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub file: PathBuf,
    pub gateway: Gateway,
    pub listeners: Vec<Listener>,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub accounts: Vec<Account>,
    /// `[portal]`, when the web portal is on.
    pub portal: Option<Portal>,
    /// `[store]`: where sealed tokens and account state live.
    pub store: Store,
    /// `[notify]`: where account events go, when set.
    pub notify: Option<Notify>,
    /// Files that hold secrets, with the key that names them: the file
    /// itself when it holds a `client_secret`, every `client_secret_file`
    /// and every listener's TLS `key` (for permission warnings).
    pub secret_files: Vec<(String, PathBuf)>,
}

/// `[gateway]`
#[derive(Debug, Clone)]
pub struct Gateway {
    pub state_dir: PathBuf,
    pub hostname: String,
    pub log_format: LogFormat,
    pub metrics: Option<SocketAddr>,
    /// Sessions at once; `None`: sized at start from the descriptor limit
    /// (see [`Gateway::max_connections_for`]).
    pub max_connections: Option<usize>,
    /// Connections at once from one client address; `None`: 50 for
    /// addresses off loopback, no limit on loopback.
    pub max_connections_per_ip: Option<usize>,
    pub preauth_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Time allowed for one upstream exchange: connecting and logging in to a
    /// mail server, or one request to a token endpoint.
    pub upstream_timeout: Duration,
    /// Longest client line before authentication, CRLF included.
    pub max_line: usize,
    /// Largest IMAP literal before authentication (a LOGIN argument).
    pub max_literal: usize,
    /// Longest IMAP tag.
    pub max_tag: usize,
    /// Failed logins per connection before it is closed.
    pub max_failures: u32,
    /// The load balancers whose PROXY headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `proxy`: the outbound proxy of every provider that sets none.
    pub proxy: Option<Arc<Proxy>>,
    /// `no_proxy`: the servers reached without a proxy.
    pub no_proxy: NoProxy,
}

/// The most sessions at once when `max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Descriptors kept for everything but sessions: listeners, the log, the
/// store, token requests.
const RESERVED_DESCRIPTORS: u64 = 64;

impl Gateway {
    /// Sessions at once under a descriptor limit of `fd_limit`: the
    /// configured `max_connections`, else as many as the limit holds (two
    /// descriptors each, client and upstream) up to
    /// [`DEFAULT_MAX_CONNECTIONS`], and at least one.
    pub fn max_connections_for(&self, fd_limit: u64) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let fit = fd_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
            usize::try_from(fit)
                .unwrap_or(usize::MAX)
                .clamp(1, DEFAULT_MAX_CONNECTIONS)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Smtp => "smtp",
        })
    }
}

/// TLS on the client side of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    Starttls,
    Implicit,
}

/// `[[listener]]`
#[derive(Debug, Clone)]
pub struct Listener {
    pub protocol: Protocol,
    pub address: SocketAddr,
    pub tls: TlsMode,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_plaintext: bool,
    /// Whether a login for an account without a usable token starts the
    /// provider's flow and answers with its URL (default: on for loopback
    /// addresses only).
    pub in_band_authorization: bool,
    /// A PROXY v1/v2 header from a `trusted_proxies` address comes first
    /// and names the client.
    pub proxy_protocol: bool,
}

impl Listener {
    /// Whether only this machine's programs reach the listener: a loopback
    /// address that no load balancer forwards to (`proxy_protocol`). Every
    /// desktop default (in-band authorisation, passwords before STARTTLS)
    /// is judged by this, never by the address alone.
    pub fn local_only(&self) -> bool {
        self.address.ip().is_loopback() && !self.proxy_protocol
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Office365,
    Outlook,
    Gmail,
    Custom,
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Office365 => "office365",
            Preset::Outlook => "outlook",
            Preset::Gmail => "gmail",
            Preset::Custom => "custom",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    AuthorizationCode,
    DeviceCode,
    ClientCredentials,
    /// A Google service account with domain-wide delegation: a signed JWT
    /// per mailbox (RFC 7523), no user sign-in and no refresh token.
    ServiceAccount,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flow::AuthorizationCode => "authorization_code",
            Flow::DeviceCode => "device_code",
            Flow::ClientCredentials => "client_credentials",
            Flow::ServiceAccount => "service_account",
        })
    }
}

/// `[provider.NAME]` with the preset's values filled in.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub preset: Preset,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub tenant: Option<String>,
    /// Microsoft with `tenant` common/organizations: the tenant IDs whose
    /// users may claim this provider's accounts (lower-cased GUIDs; empty:
    /// any tenant, pinned per account by its first sign-in).
    pub allowed_tenants: Vec<String>,
    pub flow: Flow,
    pub redirect_uri: url::Url,
    pub authorize_url: Option<url::Url>,
    pub token_url: url::Url,
    pub device_code_url: Option<url::Url>,
    pub scopes: Vec<String>,
    pub imap: Option<Upstream>,
    pub pop3: Option<Upstream>,
    pub smtp: Option<Upstream>,
    pub ca_file: Option<PathBuf>,
    pub min_token_life: Duration,
    /// `flow = "service_account"`: the key from `service_account_file`.
    pub service_account: Option<ServiceAccount>,
    /// `client_certificate` and `client_key`: the client authenticates
    /// with a signed assertion instead of a secret.
    pub client_certificate: Option<ClientCertificate>,
    /// The proxy of the token endpoint's (and device authorization's)
    /// requests (`None`: direct).
    pub proxy: Option<Arc<Proxy>>,
    /// How SMTP sessions send: relayed to `smtp`, or through Graph.
    pub sending: Sending,
    /// Microsoft Graph, for sending (`smtp = "graph"` or `"auto"`).
    pub graph: GraphApi,
}

/// A Google service account's JSON key (the fields mailgate uses).
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    /// The file it was read from.
    pub file: PathBuf,
    /// The account's address: the JWT's `iss`.
    pub client_email: String,
    /// The service account's numeric client ID (what the Admin console's
    /// domain-wide delegation is granted to).
    pub client_id: Option<String>,
    /// The key's ID, sent as the JWT's `kid`.
    pub private_key_id: Option<String>,
    /// The RSA private key, PKCS#8 PEM.
    pub private_key: SecretString,
}

/// Microsoft's tenant of personal accounts (`consumers`).
pub const CONSUMERS_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

impl Provider {
    /// Whether this is a Microsoft provider (Entra ID tokens, tenants).
    pub fn is_microsoft(&self) -> bool {
        matches!(self.preset, Preset::Office365 | Preset::Outlook)
    }

    /// The tenants whose users may claim this provider's accounts, when
    /// the configuration pins them: `allowed_tenants`, else a `tenant`
    /// given as an ID (`consumers`: the personal accounts' tenant). A
    /// domain pins a tenant too, but by name: the token endpoint serves
    /// only that tenant, so it is `None` here with [`Self::tenant_open`]
    /// false. `None` for other providers.
    pub fn pinned_tenants(&self) -> Option<Vec<String>> {
        if !self.is_microsoft() {
            return None;
        }
        if !self.allowed_tenants.is_empty() {
            return Some(self.allowed_tenants.clone());
        }
        let t = self.tenant.as_deref()?.to_ascii_lowercase();
        if t == "consumers" {
            return Some(vec![CONSUMERS_TENANT.to_owned()]);
        }
        resolve::is_guid(&t).then(|| vec![t])
    }

    /// Whether users of any Microsoft tenant can sign in to this provider
    /// (`tenant` common or organizations without `allowed_tenants`): an
    /// account is then pinned to the tenant of its first sign-in only.
    pub fn tenant_open(&self) -> bool {
        self.is_microsoft()
            && self.allowed_tenants.is_empty()
            && matches!(
                self.tenant
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                None | Some("common" | "organizations")
            )
    }

    /// Whether one app-level credential serves the provider's mailboxes
    /// (client credentials, service accounts): accounts then need a
    /// `password_hash`, and there is nothing to seal per user.
    pub fn is_app_only(&self) -> bool {
        matches!(self.flow, Flow::ClientCredentials | Flow::ServiceAccount)
    }

    /// The upstream server for a protocol, if the provider has one.
    pub fn upstream(&self, protocol: Protocol) -> Option<&Upstream> {
        match protocol {
            Protocol::Imap => self.imap.as_ref(),
            Protocol::Pop3 => self.pop3.as_ref(),
            Protocol::Smtp => self.smtp.as_ref(),
        }
    }
}

/// How the gateway secures the upstream connection. There is no plaintext
/// option: bearer tokens never cross a connection in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamSecurity {
    /// `imaps://`, `pop3s://`, `smtps://`
    ImplicitTls,
    /// `imap://`, `pop3://`, `smtp://`: STARTTLS (STLS), required.
    StartTls,
}

/// An upstream mail server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub security: UpstreamSecurity,
    pub host: String,
    pub port: u16,
    /// The proxy the connection goes through (`None`: direct).
    pub proxy: Option<Arc<Proxy>>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = match self.security {
            UpstreamSecurity::ImplicitTls => "implicit TLS",
            UpstreamSecurity::StartTls => "STARTTLS",
        };
        if self.host.contains(':') {
            write!(f, "[{}]:{} ({tls})", self.host, self.port)
        } else {
            write!(f, "{}:{} ({tls})", self.host, self.port)
        }
    }
}

/// Which login names an `[[account]]` entry covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserPattern {
    /// One address, lower-cased.
    Exact(String),
    /// `*@domain`: every address of the (lower-cased) domain.
    Domain(String),
}

impl UserPattern {
    pub fn matches(&self, user_lower: &str) -> bool {
        match self {
            UserPattern::Exact(u) => u == user_lower,
            UserPattern::Domain(d) => user_lower
                .rsplit_once('@')
                .is_some_and(|(local, dom)| !local.is_empty() && dom == d),
        }
    }
}

impl fmt::Display for UserPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserPattern::Exact(u) => f.write_str(u),
            UserPattern::Domain(d) => write!(f, "*@{d}"),
        }
    }
}

/// `[[account]]`
#[derive(Debug, Clone)]
pub struct Account {
    pub user: UserPattern,
    pub provider: String,
    pub upstream_user: Option<String>,
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    /// `shared`: the shared mailboxes this account's user may open as
    /// `USER\\SHARED` (addresses, or `*@domain`); none by default.
    pub shared: Vec<UserPattern>,
}

impl Account {
    /// Whether this account's user may open the mailbox `shared` (lower-cased).
    pub fn may_open(&self, shared: &str) -> bool {
        self.shared.iter().any(|p| p.matches(shared))
    }
}

/// Resolves `p` against the directory of the configuration file.
/// A path of the configuration: absolute, relative to the file, or
/// `credential:NAME`, a systemd credential of the service (its unit's
/// `LoadCredential=NAME:/path`, which systemd hands to the service's user
/// alone, in `$CREDENTIALS_DIRECTORY`: the way to give a `DynamicUser`
/// service a secret that no other user can read).
pub(crate) fn relative_to(file: &Path, p: &str) -> PathBuf {
    if let Some(name) = p.strip_prefix(CREDENTIAL_PREFIX) {
        let name = name.trim();
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        return match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) if plain => PathBuf::from(dir).join(name),
            _ if !plain => PathBuf::from(format!(
                "(credential:{name}: a credential's name is a plain file name)"
            )),
            _ => PathBuf::from(format!(
                "(credential:{name}: the gateway was not given it, CREDENTIALS_DIRECTORY is not set; add LoadCredential={name}:/etc/mailgate/{name} to its unit with `systemctl edit mailgate`)"
            )),
        };
    }
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// How a path names a systemd credential (see [`relative_to`]).
pub const CREDENTIAL_PREFIX: &str = "credential:";
