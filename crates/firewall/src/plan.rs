//! The policy as an ordered list of abstract rules per address family. Both drivers render this
//! same plan, which is what keeps their behaviour identical.

use ipnet::IpNet;

use crate::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    fn multicast(self) -> IpNet {
        match self {
            Family::V4 => "224.0.0.0/4".parse().unwrap(),
            Family::V6 => "ff00::/8".parse().unwrap(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    Src(IpNet),
    Dst(IpNet),
    /// `mark & m == m`
    Mark(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    Return,
    /// Masquerade with fully random source ports (conntrack SNAT port races: kubernetes#56903).
    MasqueradeFullyRandom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

/// weft's rules for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FamilyPlan {
    pub family: Family,
    /// Rules of the forward (filter) chain.
    pub forward: Vec<Rule>,
    /// Rules of the postrouting (nat) chain; empty when masquerade is off.
    pub postrouting: Vec<Rule>,
}

/// Plan for one family; `None` when the policy has no cluster CIDR of that family.
pub(crate) fn plan(policy: &Policy, family: Family) -> Option<FamilyPlan> {
    // Normalise host bits away: the kernel stores (and lists) the network address only.
    let cidrs: Vec<IpNet> = policy
        .cluster_cidrs
        .iter()
        .filter(|n| Family::of(n) == family)
        .map(IpNet::trunc)
        .fold(Vec::new(), |mut v, n| {
            if !v.contains(&n) {
                v.push(n);
            }
            v
        });
    if cidrs.is_empty() {
        return None;
    }

    let rule = |matches: Vec<Match>, verdict| Rule { matches, verdict };

    // Docker and some distributions set FORWARD policy DROP: accept pod traffic explicitly.
    let mut forward = Vec::new();
    for c in &cidrs {
        forward.push(rule(vec![Match::Src(*c)], Verdict::Accept));
        forward.push(rule(vec![Match::Dst(*c)], Verdict::Accept));
    }

    let mut postrouting = Vec::new();
    if policy.masquerade {
        // kube-proxy masquerades the packets it marked itself.
        postrouting.push(rule(
            vec![Match::Mark(policy.kube_proxy_mark)],
            Verdict::Return,
        ));
        // Never NAT pod to pod.
        for s in &cidrs {
            for d in &cidrs {
                postrouting.push(rule(vec![Match::Src(*s), Match::Dst(*d)], Verdict::Return));
            }
        }
        postrouting.push(rule(vec![Match::Dst(family.multicast())], Verdict::Return));
        for s in &cidrs {
            postrouting.push(rule(vec![Match::Src(*s)], Verdict::MasqueradeFullyRandom));
        }
    }

    Some(FamilyPlan {
        family,
        forward,
        postrouting,
    })
}

/// Compare the rules of one live chain with the expected ones (each with its description) and
/// describe every difference. Both drivers use this so they report problems alike.
pub(crate) fn diff_chain<T: PartialEq>(
    chain: &str,
    expected: &[(String, T)],
    live: &[T],
    describe_live: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (desc, rule) in expected {
        if !live.contains(rule) {
            problems.push(format!("{chain}: missing rule `{desc}`"));
        }
    }
    for rule in live {
        if !expected.iter().any(|(_, r)| r == rule) {
            problems.push(format!(
                "{chain}: unexpected rule `{}`",
                describe_live(rule)
            ));
        }
    }
    if problems.is_empty() {
        let in_order =
            expected.len() == live.len() && expected.iter().zip(live).all(|((_, e), l)| e == l);
        if !in_order {
            problems.push(format!("{chain}: rules are duplicated or out of order"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_v4_only() {
        let p = Policy::new(vec!["10.244.1.7/16".parse().unwrap()]);
        assert!(plan(&p, Family::V6).is_none());
        let v4 = plan(&p, Family::V4).unwrap();
        let net: IpNet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            v4.forward,
            vec![
                Rule {
                    matches: vec![Match::Src(net)],
                    verdict: Verdict::Accept
                },
                Rule {
                    matches: vec![Match::Dst(net)],
                    verdict: Verdict::Accept
                },
            ]
        );
        assert_eq!(v4.postrouting.len(), 4);
        assert_eq!(v4.postrouting[0].matches, vec![Match::Mark(0x4000)]);
        assert_eq!(v4.postrouting[3].verdict, Verdict::MasqueradeFullyRandom);
    }

    #[test]
    fn plan_without_masquerade_has_no_nat_rules() {
        let mut p = Policy::new(vec!["fd00:10::/56".parse().unwrap()]);
        p.masquerade = false;
        let v6 = plan(&p, Family::V6).unwrap();
        assert!(v6.postrouting.is_empty());
        assert_eq!(v6.forward.len(), 2);
    }

    #[test]
    fn plan_two_cidrs_returns_every_pair() {
        let p = Policy::new(vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ]);
        let v4 = plan(&p, Family::V4).unwrap();
        let pairs = v4
            .postrouting
            .iter()
            .filter(|r| r.matches.len() == 2)
            .count();
        assert_eq!(pairs, 4);
    }
}
