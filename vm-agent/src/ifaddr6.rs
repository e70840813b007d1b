//! The IPv6 addresses the kernel holds on each interface, as
//! `/proc/net/if_inet6` lists them: `verify` runs in a process of its own and
//! learns from here whether `run` got the tun its IPv6 address.

use std::io::{self, Read};
use std::net::Ipv6Addr;
use std::path::Path;

/// Most of the file read: one line is under 60 bytes, so this holds
/// thousands of addresses.
pub const MAX_LISTING: u64 = 1 << 20;

/// One line: address, interface index, prefix length, scope, flags (all hex)
/// and the interface name (`%pi6 %02x %02x %02x %02x %8s` in the kernel's
/// `if6_seq_show`). Lines of any other shape are skipped.
fn parse_line(line: &str) -> Option<(&str, Ipv6Addr, u8)> {
    let mut fields = line.split_ascii_whitespace();
    let hex = fields.next()?;
    if hex.len() != 32 {
        return None;
    }
    let address = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
    let _index = fields.next()?;
    let prefix = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (_scope, _flags) = (fields.next()?, fields.next()?);
    let name = fields.next()?;
    fields.next().is_none().then_some((name, address, prefix))
}

/// Every (interface, address, prefix length) the listing shows.
pub fn parse(text: &str) -> impl Iterator<Item = (&str, Ipv6Addr, u8)> {
    text.lines().filter_map(parse_line)
}

/// Whether `interface` holds `address`.
pub fn holds(text: &str, interface: &str, address: Ipv6Addr) -> bool {
    parse(text).any(|(name, a, _)| name == interface && a == address)
}

/// The listing under `proc` (normally `/proc`), at most [`MAX_LISTING`] bytes.
pub fn read(proc: &Path) -> io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(proc.join("net/if_inet6"))?
        .take(MAX_LISTING)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of real `/proc/net/if_inet6` files (Debian 12: a three-digit
    /// index, names padded to 8), the second from a tun given the agent's
    /// address with `ip addr add fd5c:9a2e:83b1:fe53::2/126` in a namespace.
    const REAL: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fd5c9a2e83b1fe530000000000000002 02 7e 00 80 connector-vm
fd000000000000000000000000000002 04 40 00 82     eth0
fe80000000000000783ceffffeb084e8 4ab 40 20 80 veth43f2a6d
";

    #[test]
    fn reads_the_kernel_listing() {
        let all: Vec<_> = parse(REAL).collect();
        assert_eq!(
            all,
            [
                ("lo", Ipv6Addr::LOCALHOST, 128),
                (
                    "connector-vm",
                    "fd5c:9a2e:83b1:fe53::2".parse().unwrap(),
                    126
                ),
                ("eth0", "fd00::2".parse().unwrap(), 64),
                (
                    "veth43f2a6d",
                    "fe80::783c:efff:feb0:84e8".parse().unwrap(),
                    64
                ),
            ]
        );
        let ours: Ipv6Addr = "fd5c:9a2e:83b1:fe53::2".parse().unwrap();
        assert!(holds(REAL, "connector-vm", ours));
        assert!(!holds(REAL, "eth0", ours));
        assert!(!holds(REAL, "connector-vm", Ipv6Addr::LOCALHOST));
        // Short, long or non-hex fields are not addresses.
        for bad in [
            "fd5c9a2e83b1fe53000000000000002 0c 7e 00 80 connector-vm",
            "fd5c9a2e83b1fe530000000000000002 0c 7e 00 80 connector-vm extra",
            "fd5c9a2e83b1fe53000000000000000g 0c 7e 00 80 connector-vm",
            "fd5c9a2e83b1fe530000000000000002 0c 7e1 00 80 connector-vm",
            "fd5c9a2e83b1fe530000000000000002 0c 7e 00 80",
        ] {
            assert_eq!(parse(bad).count(), 0, "{bad}");
        }
    }

    #[test]
    fn reads_at_most_the_cap() {
        let proc =
            std::env::temp_dir().join(format!("connector-agent-ifaddr6-{}", std::process::id()));
        std::fs::create_dir_all(proc.join("net")).unwrap();
        assert!(read(&proc).is_err());
        let huge = REAL.repeat((MAX_LISTING as usize / REAL.len()) + 2);
        std::fs::write(proc.join("net/if_inet6"), &huge).unwrap();
        let text = read(&proc).unwrap();
        assert_eq!(text.len() as u64, MAX_LISTING);
        assert!(holds(
            &text,
            "connector-vm",
            "fd5c:9a2e:83b1:fe53::2".parse().unwrap()
        ));
        let _ = std::fs::remove_dir_all(&proc);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::proptest_config(2000))]

            #[test]
            fn any_text_is_read_without_panicking(text in "\\PC{0,200}|[0-9a-f ]{0,120}") {
                for (name, _, _) in parse(&text) {
                    prop_assert!(!name.is_empty() && text.contains(name));
                }
            }

            #[test]
            fn kernel_lines_read_back(
                entries in prop::collection::vec(
                    (any::<u128>(), any::<u8>(), 0u8..=128, "[a-z][a-z0-9.-]{0,14}"),
                    0..8,
                ),
            ) {
                let text: String = entries
                    .iter()
                    .map(|(a, index, prefix, name)| {
                        format!("{a:032x} {index:02x} {prefix:02x} 00 80 {name:>8}\n")
                    })
                    .collect();
                let want: Vec<(&str, Ipv6Addr, u8)> = entries
                    .iter()
                    .map(|(a, _, prefix, name)| (name.as_str(), Ipv6Addr::from(*a), *prefix))
                    .collect();
                prop_assert_eq!(parse(&text).collect::<Vec<_>>(), want);
            }
        }
    }
}
