//! The paths of `MAIL FROM` and `RCPT TO`.

/// `FROM:<path> params` or `TO:<path> params` (the keyword
/// case-insensitive, a space after the colon tolerated): the path without
/// its angle brackets, and the parameters.
pub(super) fn path_after(args: &str, keyword: &str) -> Option<(String, String)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].trim();
    // A source route (`@a,@b:user@c`) is ignored, as RFC 5321 allows.
    let path = path.rsplit_once(':').map_or(path, |(_, p)| p);
    Some((path.to_owned(), rest[end + 1..].trim().to_owned()))
}

/// A mailbox `local@domain`: no spaces or controls, one `@` with text on
/// both sides.
pub(super) fn is_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && a.len() <= 320
        && !a.chars().any(|c| c.is_control() || c.is_whitespace())
        && !domain.contains('@')
}
