//! Published ports (`portMappings`, ECS's names): what a request may ask for, how it is
//! checked, and the CLI's `-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/udp]` form.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::request::ValidationError;

/// The most mappings one task may publish.
pub const MAX_PORT_MAPPINGS: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port of a task, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
    /// The host address it is published on; all of the host's IPv4 addresses when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// The address a reservation binds: `hostIp`, or every address.
    pub fn bind_ip(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Whether two mappings would take the same host port.
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// CNI's `portMappings` runtime value for the portmap plugin.
    pub fn cni_value(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.as_str(),
        });
        if let Some(ip) = self.host_ip {
            v["hostIP"] = ip.to_string().into();
        }
        v
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.bind_ip();
        let (hp, cp, proto) = (self.host_port, self.container_port, self.protocol.as_str());
        write!(f, "{ip}:{hp}->{cp}/{proto}")
    }
}

/// A mapping as a request gives it (wide types, so a bad value gets our message).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMappingRequest {
    pub container_port: i64,
    /// The same as `containerPort` when absent.
    pub host_port: Option<i64>,
    pub protocol: Option<String>,
    pub host_ip: Option<String>,
}

fn bad(field: String, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        message: message.into(),
    }
}

fn port(field: String, p: i64) -> Result<u16, ValidationError> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad(field, format!("{p}: a port is 1 to 65535"))),
    }
}

impl PortMappingRequest {
    fn check(&self, i: usize) -> Result<PortMapping, ValidationError> {
        let f = |name: &str| format!("portMappings[{i}].{name}");
        let container_port = port(f("containerPort"), self.container_port)?;
        let host_port = port(f("hostPort"), self.host_port.unwrap_or(self.container_port))?;
        let protocol = match self.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(p) => return Err(bad(f("protocol"), format!("{p:?}: tcp or udp"))),
        };
        let host_ip = match self.host_ip.as_deref() {
            None | Some("") => None,
            Some(s) => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if ip.is_unspecified() => None,
                Ok(IpAddr::V4(ip)) if ip.is_multicast() || ip.is_broadcast() => {
                    return Err(bad(f("hostIp"), format!("{s}: not a unicast address")))
                }
                Ok(IpAddr::V4(ip)) => Some(ip),
                Ok(IpAddr::V6(_)) => {
                    return Err(bad(f("hostIp"), format!("{s}: only IPv4 for now")))
                }
                Err(_) => return Err(bad(f("hostIp"), format!("{s:?} is not an IP address"))),
            },
        };
        Ok(PortMapping {
            container_port,
            host_port,
            protocol,
            host_ip,
        })
    }
}

/// Checks a request's mappings: ports in range, known protocols, IPv4 host addresses, at
/// most [`MAX_PORT_MAPPINGS`], and no host port taken twice.
pub fn check(reqs: &[PortMappingRequest]) -> Result<Vec<PortMapping>, ValidationError> {
    if reqs.len() > MAX_PORT_MAPPINGS {
        return Err(bad(
            "portMappings".into(),
            format!("{} mappings: at most {MAX_PORT_MAPPINGS}", reqs.len()),
        ));
    }
    let mut out: Vec<PortMapping> = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let m = r.check(i)?;
        if let Some(j) = out.iter().position(|o| o.overlaps(&m)) {
            return Err(bad(
                format!("portMappings[{i}].hostPort"),
                format!("{m} takes the host port of portMappings[{j}]"),
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// Parses the CLI's `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]` (or `PORT[/udp]`, the same
/// port on both sides) into a request mapping; the server checks the values.
pub fn parse_publish(s: &str) -> Result<PortMappingRequest, String> {
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, proto)) => (p, Some(proto.to_owned())),
        None => (s, None),
    };
    let num = |p: &str| {
        p.parse::<i64>()
            .map_err(|_| format!("-p {s}: {p:?} is not a port number"))
    };
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (None, num(c)?, num(c)?),
        [c, h] => (None, num(h)?, num(c)?),
        [c, h, ip] => (Some((*ip).to_owned()), num(h)?, num(c)?),
        _ => unreachable!("rsplitn(3) yields 1 to 3 parts"),
    };
    Ok(PortMappingRequest {
        container_port,
        host_port: Some(host_port),
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Vec<PortMappingRequest> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn good_mappings_are_filled_in() {
        let m = check(&req(
            r#"[{"containerPort":80,"hostPort":8080,"hostIp":"127.0.0.1"},
                {"containerPort":53,"protocol":"udp"}]"#,
        ))
        .unwrap();
        assert_eq!(m[0].to_string(), "127.0.0.1:8080->80/tcp");
        assert_eq!(m[1].to_string(), "0.0.0.0:53->53/udp");
        assert_eq!(
            m[0].cni_value(),
            serde_json::json!({"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"})
        );
        assert!(m[1].cni_value().get("hostIP").is_none());
    }

    #[test]
    fn bad_mappings_name_the_field() {
        for (json, field) in [
            (r#"[{"containerPort":0}]"#, "portMappings[0].containerPort"),
            (
                r#"[{"containerPort":80,"hostPort":65536}]"#,
                "portMappings[0].hostPort",
            ),
            (r#"[{"containerPort":-1}]"#, "portMappings[0].containerPort"),
            (
                r#"[{"containerPort":80,"protocol":"sctp"}]"#,
                "portMappings[0].protocol",
            ),
            (
                r#"[{"containerPort":80,"hostIp":"::1"}]"#,
                "portMappings[0].hostIp",
            ),
            (
                r#"[{"containerPort":80,"hostIp":"x"}]"#,
                "portMappings[0].hostIp",
            ),
            (
                r#"[{"containerPort":80,"hostPort":8080},{"containerPort":81,"hostPort":8080,"hostIp":"127.0.0.1"}]"#,
                "portMappings[1].hostPort",
            ),
        ] {
            let e = check(&req(json)).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        // The same port on two protocols, or on two addresses, is fine.
        check(&req(
            r#"[{"containerPort":53},{"containerPort":53,"protocol":"udp"},
                {"containerPort":80,"hostPort":9000,"hostIp":"127.0.0.1"},
                {"containerPort":81,"hostPort":9000,"hostIp":"127.0.0.2"}]"#,
        ))
        .unwrap();
        let many = format!("[{}]", vec![r#"{"containerPort":1}"#; 65].join(","));
        assert_eq!(check(&req(&many)).unwrap_err().field, "portMappings");
    }

    #[test]
    fn the_cli_form_parses() {
        let p = parse_publish("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(
            (
                p.host_ip.as_deref(),
                p.host_port,
                p.container_port,
                p.protocol.as_deref()
            ),
            (Some("127.0.0.1"), Some(8080), 80, Some("udp"))
        );
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port),
            (None, Some(8080), 80)
        );
        let p = parse_publish("53/udp").unwrap();
        assert_eq!((p.host_port, p.container_port), (Some(53), 53));
        assert!(parse_publish("a:80").unwrap_err().contains("\"a\""));
        assert!(parse_publish("").is_err());
    }
}
