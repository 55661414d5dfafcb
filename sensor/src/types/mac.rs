//! MAC addresses as people write them: one parser for the inventory, the policy and DHCP lease
//! files, so an address accepted in one place is accepted in all.

/// A client's Ethernet address, as the kernel keys it.
pub type Mac = [u8; 6];

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (write six bytes in hex, e.g. 64:09:80:4a:1c:07)")]
pub struct MacError(pub String);

/// Parses six bytes of one or two hex digits each, separated by `:` or by `-` throughout:
/// `64:09:80:4a:1c:07`, `64-09-80-4A-1C-07`, and `64:9:80:4a:1c:7` as macOS `arp` and some
/// lease files write it. Surrounding white space is ignored.
pub fn parse(text: &str) -> Result<Mac, MacError> {
    let fail = || MacError(text.to_string());
    let s = text.trim();
    let sep = if s.contains(':') { ':' } else { '-' };
    let mut mac = [0u8; 6];
    let mut parts = s.split(sep);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(fail)?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| fail())?;
    }
    match parts.next() {
        None => Ok(mac),
        Some(_) => Err(fail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XIAOMI: Mac = [0x64, 0x09, 0x80, 0x12, 0x34, 0x56];

    #[test]
    fn accepts_the_usual_forms() {
        assert_eq!(parse("64:09:80:12:34:56"), Ok(XIAOMI));
        assert_eq!(parse("64-09-80-12-34-56"), Ok(XIAOMI));
        assert_eq!(parse(" 64:09:80:12:34:56 "), Ok(XIAOMI));
        assert_eq!(parse("64:9:80:12:34:56"), Ok(XIAOMI));
        assert_eq!(parse("DA:A1:19:01:02:03"), Ok([0xda, 0xa1, 0x19, 1, 2, 3]));
        assert_eq!(parse("6:9:80:4a:1c:7"), Ok([6, 9, 0x80, 0x4a, 0x1c, 7]));
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "64:09:80:12:34",
            "64:09:80:12:34:56:78",
            "64:09:80:12:34:zz",
            "64:09:80:12:34:+5",
            "64:09:80:12:34:056",
            "64:09:80-12:34:56",
            "64::80:12:34:56",
            "640980123456",
            "12345678",
            "",
        ] {
            assert_eq!(parse(bad), Err(MacError(bad.to_string())), "{bad}");
        }
        assert_eq!(
            parse("x").unwrap_err().to_string(),
            "`x` is not a MAC address (write six bytes in hex, e.g. 64:09:80:4a:1c:07)"
        );
    }
}
