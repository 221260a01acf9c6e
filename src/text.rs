//! Words and figures shown to users and written to logs, the same
//! everywhere: URLs without their secrets, byte counts in binary units.

/// A URL as it may be shown to a user or written to a log: scheme, host,
/// port and path only. The whole query and fragment are dropped (signed
/// CDN and S3 URLs carry their credentials there: `X-Amz-Signature`,
/// `sig`, `token`, …), and so is any userinfo (`user:password@`). A URL
/// that cannot be parsed, or with an `@` in its path (a password with a
/// `/` in it looks like that), keeps only what follows its last `@`: a
/// malformed URL leaks no password either.
pub fn redact_url(u: &str) -> String {
    let no_query = u.split(['?', '#']).next().unwrap_or(u);
    if let Ok(uri) = no_query.parse::<ureq::http::Uri>()
        && let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority())
        && !uri.path().contains('@')
    {
        let host_port = auth.as_str().rsplit('@').next().unwrap_or_default();
        return format!("{scheme}://{host_port}{}", uri.path());
    }
    match no_query.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit('@').next().unwrap_or(rest)),
        None => no_query.rsplit('@').next().unwrap_or(no_query).to_string(),
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A count the way model sizes are said: `8.0 B`, `135.0 M`, `7 K`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{} K", n / 1000),
        n => n.to_string(),
    }
}
