//! Registrable domains (eTLD+1): what groups `a1.micloud.xiaomi.net` and `api.xiaomi.net`
//! under one destination, `xiaomi.net`.
//!
//! Uses the public suffix list's ICANN section only. The list's private section (suffixes
//! that companies open to their customers, such as `cloudfront.net` or `github.io`) would
//! make every CDN host its own registrable domain (`d111abc.cloudfront.net`), one series
//! each; here they group under the operator (`cloudfront.net`), which is what a household
//! wants to see and keeps the destination series bounded.

use std::net::IpAddr;

/// The registrable domain of `name`, lower case, without a trailing dot:
/// `a1.micloud.xiaomi.net` → `xiaomi.net`, `foo.bar.co.uk` → `bar.co.uk`. A name that is
/// itself a public suffix (`co.uk`) or whose suffix is not in the list (`printer.lan`) is
/// returned whole; an IP literal is returned unchanged.
pub fn registrable(name: &str) -> String {
    let trimmed = name.trim();
    let unbracketed = trimmed.trim_start_matches('[').trim_end_matches(']');
    if unbracketed.parse::<IpAddr>().is_ok() {
        return name.to_string();
    }
    let lower = trimmed.trim_end_matches('.').to_lowercase();
    match icann_domain(&lower) {
        Some(domain) => domain.to_string(),
        None => lower,
    }
}

/// eTLD+1 by the ICANN rules: where the list's longest match is a private suffix, the
/// registrable domain is the label before the longest ICANN suffix (`x.github.io` →
/// `github.io`). None when the name is itself a suffix or its suffix is not in the list.
fn icann_domain(name: &str) -> Option<&str> {
    let domain = psl::domain(name.as_bytes())?;
    let suffix = domain.suffix();
    if !suffix.is_known() {
        return None;
    }
    if suffix.typ() != Some(psl::Type::Private) {
        return name.get(name.len().checked_sub(domain.as_bytes().len())?..);
    }
    let mut rest = name.get(name.len().checked_sub(suffix.as_bytes().len())?..)?;
    while let Some(dot) = rest.find('.') {
        rest = &rest[dot + 1..];
        let candidate = psl::suffix(rest.as_bytes())?;
        if candidate.typ() == Some(psl::Type::Icann) && candidate.as_bytes().len() == rest.len() {
            let before = &name[..name.len() - rest.len() - 1];
            let label_start = before.rfind('.').map_or(0, |i| i + 1);
            return name.get(label_start..);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::registrable;

    #[test]
    fn examples() {
        assert_eq!(registrable("a1.micloud.xiaomi.net"), "xiaomi.net");
        assert_eq!(registrable("api.io.mi.com"), "mi.com");
        assert_eq!(registrable("foo.bar.co.uk"), "bar.co.uk");
        assert_eq!(registrable("xiaomi.net"), "xiaomi.net");
        assert_eq!(registrable("www.example.com."), "example.com");
        assert_eq!(registrable("WWW.Example.COM"), "example.com");
    }

    #[test]
    fn suffixes_and_unknowns_are_themselves() {
        assert_eq!(registrable("co.uk"), "co.uk");
        assert_eq!(registrable("com"), "com");
        assert_eq!(registrable("printer.lan"), "printer.lan");
        assert_eq!(registrable("a.b.printer.lan."), "a.b.printer.lan");
        assert_eq!(registrable("localhost"), "localhost");
        assert_eq!(registrable(""), "");
    }

    #[test]
    fn ip_literals_unchanged() {
        assert_eq!(registrable("10.77.3.2"), "10.77.3.2");
        assert_eq!(registrable("2001:db8::1"), "2001:db8::1");
        assert_eq!(registrable("[2001:db8::1]"), "[2001:db8::1]");
    }

    #[test]
    fn private_suffixes_group_under_their_operator() {
        assert_eq!(registrable("d111abcdef8.cloudfront.net"), "cloudfront.net");
        assert_eq!(registrable("alice.github.io"), "github.io");
        assert_eq!(registrable("bucket.s3.amazonaws.com"), "amazonaws.com");
        // ICANN wildcard and exception rules still apply.
        assert_eq!(registrable("www.city.kawasaki.jp"), "city.kawasaki.jp");
        assert_eq!(registrable("a.b.foo.ck"), "b.foo.ck");
    }
}
