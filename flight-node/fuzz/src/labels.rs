//! An independent statement of what the node accepts as a name: a DNS-1123 label
//! (RFC 1123, as Kubernetes uses it), `^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`.

/// Whether `s` is a DNS-1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match b {
        [] => false,
        [only] => alnum(only),
        [first, middle @ .., last] => {
            b.len() <= 63
                && alnum(first)
                && alnum(last)
                && middle.iter().all(|c| alnum(c) || *c == b'-')
        }
    }
}

/// Whether a name that passed may be joined into an object-store path.
pub fn path_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '\\', '.', '\0']) && s != ".."
}
