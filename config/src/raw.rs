//! The file's schema as serde sees it: every key optional where the spec
//! gives a default, unknown keys rejected. Values that need checking with a
//! precise key in the error (addresses, URLs, durations, paths) stay strings
//! here and are resolved in `resolve.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub provider: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub account: Vec<RawAccount>,
    pub portal: Option<RawPortal>,
    pub store: Option<RawStore>,
    pub notify: Option<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub command: Option<Vec<String>>,
    pub command_timeout: Option<String>,
    pub keep_alive: Option<String>,
    pub mail_from: Option<String>,
    pub admins: Option<Vec<String>>,
    pub webhook: Option<String>,
    pub webhook_file: Option<String>,
    pub webhook_template: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub prefix: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub sentinels_file: Option<String>,
    pub service: Option<String>,
    pub wait_replicas: Option<u64>,
    pub wait_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPortal {
    pub address: Option<String>,
    pub tls: Option<String>,
    pub certificate: Option<String>,
    pub key: Option<String>,
    pub insecure_plaintext: Option<bool>,
    pub public_url: Option<String>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub state_dir: Option<String>,
    pub hostname: Option<String>,
    pub log_format: Option<String>,
    pub metrics: Option<String>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub preauth_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub upstream_timeout: Option<String>,
    pub max_line: Option<u64>,
    pub max_literal: Option<u64>,
    pub max_tag: Option<u64>,
    pub max_failures: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub proxy: Option<String>,
    pub no_proxy: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub protocol: Option<String>,
    pub address: Option<String>,
    pub tls: Option<String>,
    pub certificate: Option<String>,
    pub key: Option<String>,
    pub insecure_plaintext: Option<bool>,
    pub in_band_authorization: Option<bool>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub preset: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub tenant: Option<String>,
    pub allowed_tenants: Option<Vec<String>>,
    pub flow: Option<String>,
    pub redirect_uri: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub device_code_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub imap: Option<String>,
    pub pop3: Option<String>,
    pub smtp: Option<String>,
    pub ca_file: Option<String>,
    pub min_token_life: Option<String>,
    pub service_account_file: Option<String>,
    pub client_certificate: Option<String>,
    pub client_key: Option<String>,
    pub client_assertion_alg: Option<String>,
    pub proxy: Option<String>,
    pub graph_url: Option<String>,
    pub smtp_server: Option<String>,
    pub save_to_sent_items: Option<bool>,
    pub max_message_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccount {
    pub user: Option<String>,
    pub provider: Option<String>,
    pub upstream_user: Option<String>,
    pub password_hash: Option<String>,
    pub shared: Option<Vec<String>>,
}
