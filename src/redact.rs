//! Keeping credentials out of logs and `Debug` output.

/// Returns `url` with its password replaced by `***`, for logs and `Debug` output.
///
/// Works for any `scheme://user:password@host/...` URL (AMQP, PostgreSQL, MySQL). URLs without
/// credentials are returned unchanged; text that is not a URL is returned unchanged too, since
/// it has no recognisable password. A password in a query parameter (`?password=...`) is
/// masked as well.
///
/// # Examples
///
/// ```
/// use actix_outbox::redact_url;
///
/// assert_eq!(
///     redact_url("amqp://outbox:s3cret@broker:5672/%2f"),
///     "amqp://outbox:***@broker:5672/%2f"
/// );
/// assert_eq!(redact_url("sqlite://outbox.db"), "sqlite://outbox.db");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    let masked = mask_userinfo(url);
    mask_query_password(&masked)
}

/// What an error about a URL that did not parse may show of it: the redacted URL, or, when
/// no password could be located in text that still holds an `@` (it is not a URL with
/// credentials the masking recognises), nothing of it at all.
#[must_use]
pub fn redact_unparsed(url: &str) -> String {
    let shown = redact_url(url);
    if shown == url && url.contains('@') {
        "<the URL, not shown: it may hold a password>".to_owned()
    } else {
        shown
    }
}

fn mask_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last '@' of the authority separates userinfo from the host (passwords may contain
    // '@'). A password may also hold an unencoded '/', '?' or '#', which ends the authority
    // early: then the last '@' anywhere is taken. That masks too much when a path or query
    // holds an '@' as well, never too little.
    let Some(at) = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@')) else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}://{}:***{}",
        &url[..scheme_end],
        &userinfo[..colon],
        &rest[at..]
    )
}

fn mask_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_only() {
        let cases = [
            ("amqp://u:p@h/%2f", "amqp://u:***@h/%2f"),
            ("amqps://u:p%40ss@h:5671", "amqps://u:***@h:5671"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?user=u&password=p",
                "postgres://h/db?user=u&password=***",
            ),
            ("amqp://h", "amqp://h"),
            ("not a url", "not a url"),
            // Unencoded '/', '?' and '#' in a password end the authority early.
            ("amqp://u:se/cr?et#x@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
            ("postgres://u:a/b@h/db", "postgres://u:***@h/db"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
            assert!(!redact_url(input).contains(":p@"), "{input}");
        }
        for secret in ["se/cr?et#x", "a/b"] {
            for url in [
                format!("amqp://u:{secret}@h/%2f"),
                format!("postgres://u:{secret}@h/db"),
            ] {
                assert!(!redact_url(&url).contains(secret), "{url}");
            }
        }
    }
}
