//! `[store]`: the file store, or Redis at `url`, or the primary that
//! `sentinels` name for `service`.

use super::*;

pub(super) fn store(file: &Path, s: RawStore, errs: &mut Errors<'_>) -> Store {
    let backend = s.backend.as_deref().map(str::trim).unwrap_or("file");
    if backend.eq_ignore_ascii_case("file") {
        for (k, set) in [
            ("url", s.url.is_some()),
            ("url_file", s.url_file.is_some()),
            ("prefix", s.prefix.is_some()),
            ("sentinels", s.sentinels.is_some()),
            ("sentinels_file", s.sentinels_file.is_some()),
            ("service", s.service.is_some()),
            ("wait_replicas", s.wait_replicas.is_some()),
            ("wait_timeout", s.wait_timeout.is_some()),
        ] {
            if set {
                errs.push(
                    format!("store.{k}"),
                    "is only used with backend = \"redis\"",
                );
            }
        }
        return Store::File;
    }
    if !backend.eq_ignore_ascii_case("redis") {
        errs.push(
            "store.backend",
            format!("`{backend}` is not one of: file, redis"),
        );
        return Store::File;
    }
    let sentinels_given = s.sentinels.is_some() || s.sentinels_file.is_some();
    let sentinels = sentinels(file, &s, errs);
    let wait_replicas = s
        .wait_replicas
        .map(|n| {
            u32::try_from(n).unwrap_or_else(|_| {
                errs.push("store.wait_replicas", "is too large");
                1
            })
        })
        .unwrap_or(u32::from(sentinels_given));
    let wait_timeout = super::duration(
        errs,
        "store.wait_timeout",
        s.wait_timeout,
        crate::DEFAULT_WAIT_TIMEOUT,
    );
    let url = match (s.url, s.url_file) {
        (Some(_), Some(_)) => {
            errs.push("store.url", "set url or url_file, not both");
            None
        }
        (Some(u), None) => Some(u),
        (None, Some(f)) => read_secret(file, "store.url_file", &f, errs),
        // The primary's address comes from the sentinels; nothing else to say.
        (None, None) if sentinels_given => Some("redis://primary/0".into()),
        (None, None) => {
            errs.push(
                "store.url",
                "backend = \"redis\" needs url (e.g. \"redis://127.0.0.1:6379/0\"), url_file or sentinels",
            );
            None
        }
    };
    let Some(url) = url else {
        return Store::File;
    };
    // The URL may hold a password: it is never echoed.
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {}
        _ => {
            errs.push(
                "store.url",
                "is not a redis:// or rediss:// URL with a host, e.g. \"redis://127.0.0.1:6379/0\"",
            );
            return Store::File;
        }
    }
    Store::Redis(Redis {
        url: SecretString::from(url),
        prefix: s.prefix.unwrap_or_else(|| "mailgate:".into()),
        sentinels,
        wait_replicas,
        wait_timeout,
    })
}

/// The trimmed content of a file that holds a secret.
fn read_secret(file: &Path, key: &str, f: &str, errs: &mut Errors<'_>) -> Option<String> {
    let path = relative_to(file, f);
    match std::fs::read_to_string(&path) {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_owned()),
        Ok(_) => {
            errs.push(key, format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            errs.push(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// `sentinels` (or `sentinels_file`, one URL per line) and `service`.
fn sentinels(file: &Path, s: &RawStore, errs: &mut Errors<'_>) -> Option<Sentinels> {
    let listed = match (&s.sentinels, &s.sentinels_file) {
        (Some(_), Some(_)) => {
            errs.push(
                "store.sentinels",
                "set sentinels or sentinels_file, not both",
            );
            return None;
        }
        (Some(l), None) => l.clone(),
        (None, Some(f)) => read_secret(file, "store.sentinels_file", f, errs)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        (None, None) => {
            if s.service.is_some() {
                errs.push("store.service", "is only used with sentinels");
            }
            return None;
        }
    };
    if listed.is_empty() {
        errs.push("store.sentinels", "lists no sentinel");
        return None;
    }
    let mut urls = Vec::new();
    for (i, u) in listed.iter().enumerate() {
        match sentinel_url(u) {
            Some(u) => urls.push(SecretString::from(u)),
            None => errs.push(
                format!("store.sentinels[{i}]"),
                "is not a redis-sentinel:// or rediss-sentinel:// URL with a host, e.g. \"redis-sentinel://10.0.0.1:26379\"",
            ),
        }
    }
    let service = s.service.clone().unwrap_or_else(|| "mymaster".into());
    if service.trim().is_empty() || service.chars().any(char::is_whitespace) {
        errs.push(
            "store.service",
            "must be the name the sentinels know the primary by, e.g. \"mymaster\"",
        );
    }
    (urls.len() == listed.len()).then_some(Sentinels { urls, service })
}

/// `redis-sentinel://[:password@]host[:port]` as the `redis://` URL the
/// client connects with (port 26379 unless given); `rediss-sentinel://`
/// for TLS.
fn sentinel_url(u: &str) -> Option<String> {
    let (scheme, rest) = if let Some(r) = u.strip_prefix("redis-sentinel://") {
        ("redis", r)
    } else if let Some(r) = u.strip_prefix("rediss-sentinel://") {
        ("rediss", r)
    } else {
        return None;
    };
    let mut parsed = url::Url::parse(&format!("{scheme}://{rest}")).ok()?;
    parsed.host_str().filter(|h| !h.is_empty())?;
    if parsed.port().is_none() {
        parsed.set_port(Some(26379)).ok()?;
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return None;
    }
    Some(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::sentinel_url;

    #[test]
    fn sentinel_urls_become_client_urls() {
        assert_eq!(
            sentinel_url("redis-sentinel://10.0.0.1").as_deref(),
            Some("redis://10.0.0.1:26379")
        );
        assert_eq!(
            sentinel_url("rediss-sentinel://:pw@s1.example:26380").as_deref(),
            Some("rediss://:pw@s1.example:26380")
        );
        for bad in [
            "redis://10.0.0.1:26379",
            "redis-sentinel://",
            "redis-sentinel://h/0",
        ] {
            assert_eq!(sentinel_url(bad), None, "{bad}");
        }
    }
}
