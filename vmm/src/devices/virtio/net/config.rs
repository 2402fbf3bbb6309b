//! `--net tap=NAME[,mac=MAC]` and MAC addresses: parsing, display, a random locally
//! administered default.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet address of a guest's network card (unicast).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random unicast, locally administered address (first octet `x2`, `x6`, `xA`, `xE`).
    pub fn random() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most `b.len()` bytes into the buffer it is given,
        // which is valid and writable for that length.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No entropy source: a fixed address from the process id and the clock.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            b[..4].copy_from_slice(&(t ^ std::process::id()).to_le_bytes());
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        Self(b)
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad MAC address '{s}' (want six hex pairs like 02:00:00:00:00:01)");
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if b[0] & 1 != 0 {
            return Err(format!(
                "MAC address '{s}' is multicast; a card needs a unicast one"
            ));
        }
        if b == [0; 6] {
            return Err(format!("MAC address '{s}' is all zeros"));
        }
        Ok(Self(b))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A network card as given on the command line: `--net tap=NAME[,mac=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// An existing TAP device (in the VMM's network namespace).
    pub tap: String,
    /// The guest's MAC address; a random locally administered one when unset.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Checks an interface name as the kernel would: 1 to 15 bytes, no '/', ':' or spaces.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "TAP name '{name}' must be 1 to {MAX_IFNAME} bytes long"
        ));
    }
    if name == "." || name == ".." || name.bytes().any(|c| c == b'/' || c == b':' || c <= b' ') {
        return Err(format!("'{name}' is not a valid interface name"));
    }
    Ok(())
}

impl std::str::FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut tap, mut mac) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) => {
                    check_ifname(v).map_err(|e| format!("--net: {e}"))?;
                    tap = Some(v.to_owned());
                }
                Some(("mac", v)) => mac = Some(v.parse().map_err(|e| format!("--net: {e}"))?),
                _ => return Err(format!("--net '{s}': expected tap=NAME[,mac=MAC]")),
            }
        }
        Ok(Self {
            tap: tap.ok_or_else(|| format!("--net '{s}': tap=NAME missing"))?,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flag_parses() {
        let n: NetConfig = "tap=tap0,mac=02:aa:bb:cc:dd:0e".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().0, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e]);
        assert_eq!(n.mac.unwrap().to_string(), "02:aa:bb:cc:dd:0e");
        let n: NetConfig = "tap=t".parse().unwrap();
        assert!(n.mac.is_none());
        for bad in [
            "",
            "mac=02:00:00:00:00:01",
            "tap=",
            "tap=a/b",
            "tap=waytoolongname0123",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:01:02",
            "tap=t,mac=03:00:00:00:00:01",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=0g:00:00:00:00:01",
            "tap=t,mtu=9000",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..32 {
            let m = MacAddr::random();
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
            assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
    }

    #[test]
    fn json_refuses_unknown_fields_and_bad_macs() {
        let n: NetConfig =
            serde_json::from_str(r#"{"tap":"t","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(n.mac.unwrap().0[5], 1);
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t","macc":"x"}"#).is_err());
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap":"t","mac":"zz"}"#).is_err());
    }
}
