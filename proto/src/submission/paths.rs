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

/// A mailbox `local@domain` that can be written in a header as it is
/// ([`crate::recipients::plain_address`]).
pub(super) fn is_address(a: &str) -> bool {
    crate::recipients::plain_address(a)
}
