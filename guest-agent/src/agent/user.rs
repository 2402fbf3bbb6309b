//! Resolving a run's `user` (`name`, `uid`, `uid:gid`, `name:group`) against the image's
//! /etc/passwd and /etc/group, as `docker run -u` does.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

fn lookup(table: &str, name: &str) -> Option<(u32, u32)> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn lookup_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    })
}

/// Resolves `spec` with the image's passwd and group files (empty when missing).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ids, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Ids { uid: 0, gid: 0 });
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup_uid(passwd, uid).unwrap_or(uid)),
        Err(_) => lookup(passwd, u)
            .ok_or_else(|| format!("user '{u}' not found in the image's /etc/passwd"))?,
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                })
                .ok_or_else(|| format!("group '{g}' not found in the image's /etc/group"))?,
        },
    };
    Ok(Ids { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\napp:x:1001:\n";

    #[test]
    fn forms() {
        assert_eq!(resolve("", PASSWD, GROUP), Ok(Ids { uid: 0, gid: 0 }));
        assert_eq!(
            resolve("app", PASSWD, GROUP),
            Ok(Ids {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            resolve("1000", PASSWD, GROUP),
            Ok(Ids {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            resolve("4242", PASSWD, GROUP),
            Ok(Ids {
                uid: 4242,
                gid: 4242
            })
        );
        assert_eq!(
            resolve("1000:50", PASSWD, GROUP),
            Ok(Ids { uid: 1000, gid: 50 })
        );
        assert_eq!(
            resolve("app:staff", PASSWD, GROUP),
            Ok(Ids { uid: 1000, gid: 50 })
        );
        assert!(resolve("ghost", PASSWD, GROUP)
            .unwrap_err()
            .contains("ghost"));
        assert!(resolve("app:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .contains("ghosts"));
    }
}
