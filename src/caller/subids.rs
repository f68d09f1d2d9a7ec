//! Subordinate uids (/etc/subuid): ids a user may map in a user namespace count as that user's
//! for every per-user share (the transport's pool, the hand-out socket's requests).

/// Subordinate user ids (`/etc/subuid`): a user given a range can run processes under every uid
/// of it (in a user namespace, through newuidmap). Requests from such a uid count against the
/// owner's share of the pool, or one user could take as many shares as it has uids.
#[derive(Debug, Default, Clone)]
pub struct SubordinateIds {
    /// (first, count, owner uid), sorted by first.
    ranges: Vec<(u32, u32, u32)>,
}

impl SubordinateIds {
    /// Parses the `/etc/subuid` format: `owner:first:count` per line, owner a name or a uid.
    pub fn parse(text: &str, uid_of: impl Fn(&str) -> Option<u32>) -> Self {
        let mut ranges: Vec<(u32, u32, u32)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().split(':');
                let (owner, first, count) = (f.next()?, f.next()?, f.next()?);
                let owner = owner.parse().ok().or_else(|| uid_of(owner))?;
                Some((first.parse().ok()?, count.parse().ok()?, owner))
            })
            // Root's ranges (container runtimes' default) hold other users, each its own: merged,
            // one of them could take every share of root and of all the others.
            .filter(|r| r.1 > 0 && r.2 != 0)
            .collect();
        ranges.sort_unstable();
        Self { ranges }
    }

    /// The system's, from /etc/subuid (none if it is missing).
    pub fn load() -> Self {
        let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        Self::parse(&text, |name| {
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        })
    }

    /// Whose share a request from `uid` uses.
    pub fn owner_of(&self, uid: u32) -> u32 {
        let i = self.ranges.partition_point(|r| r.0 <= uid);
        match i.checked_sub(1).map(|i| self.ranges[i]) {
            Some((first, count, owner)) if u64::from(uid) < u64::from(first) + u64::from(count) => {
                owner
            }
            _ => uid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ids_count_as_their_owner() {
        let ids = SubordinateIds::parse(
            "alice:100000:65536\nbob:165536:65536\n# junk\n1002:300000:10\nnobody:1:0\n",
            |n| match n {
                "alice" => Some(1000),
                "bob" => Some(1001),
                _ => None,
            },
        );
        assert_eq!(ids.owner_of(100000), 1000);
        assert_eq!(ids.owner_of(165535), 1000);
        assert_eq!(ids.owner_of(165536), 1001);
        assert_eq!(ids.owner_of(300009), 1002);
        assert_eq!(ids.owner_of(300010), 300010);
        assert_eq!(ids.owner_of(5), 5);
        assert_eq!(ids.owner_of(0), 0);
        assert_eq!(SubordinateIds::default().owner_of(123), 123);
    }

    /// A container runtime's range owned by root holds other users, each its own: merged into
    /// root, any of them would share (and could exhaust) root's and every other one's share.
    #[test]
    fn roots_ranges_stay_separate_users() {
        let ids = SubordinateIds::parse(
            "root:1000000:1000000000
0:200000:10
",
            |n| (n == "root").then_some(0),
        );
        assert_eq!(ids.owner_of(1000005), 1000005);
        assert_eq!(ids.owner_of(200001), 200001);
    }
}
