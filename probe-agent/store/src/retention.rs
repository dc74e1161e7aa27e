//! Retention policies: how much of a table the store keeps, and how a list
//! of `Retention` resources decides it for one table.

use std::time::Duration;

use crds::{
    Retention, RetentionSpec,
    manifest::DEFAULT_NAMESPACE,
    table_matches,
    units::{parse_bytes, parse_duration},
};

use super::TableName;

/// Limits on one table. `None` means unlimited on that axis (the global
/// budget still applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Most bytes the table may hold, as counted by
    /// [`TableStats::bytes`](super::TableStats::bytes).
    pub max_bytes: Option<u64>,
    /// Oldest `time_` the table may serve, relative to now.
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    /// What a table gets when no Retention names it: enough for a busy
    /// probe's last hour on a node without letting one table take the
    /// node's memory.
    pub const DEFAULT: Self = Self {
        max_bytes: Some(64 << 20),
        max_age: Some(Duration::from_secs(3600)),
    };

    /// No limit of its own.
    pub const UNBOUNDED: Self = Self {
        max_bytes: None,
        max_age: None,
    };
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The policy of `table`, given every Retention the agent knows.
///
/// Rules, in order:
/// - A Retention only bounds tables of its own namespace (the table's
///   schema); a Retention without a namespace is in `default`, as kubectl
///   would place it.
/// - A rollup's output table is kept for the rollup's `keep` and bounded in
///   bytes by the default only: patterns such as `*` meant for raw tables do
///   not shorten summarized history. Several rollups writing one table: the
///   shortest `keep` wins.
/// - Otherwise every Retention with a pattern matching the table name
///   applies, and on each axis the smallest limit wins (maxBytes and maxAge
///   are resolved independently), so adding a Retention can only tighten.
/// - An axis no matching Retention sets falls back to `defaults`, so a
///   Retention that only sets maxAge does not lift the byte bound.
/// - Values that do not parse are ignored here; the spec's validation
///   reports them where the user sees it.
pub fn policy_for(
    retentions: &[Retention],
    table: &TableName,
    defaults: RetentionPolicy,
) -> RetentionPolicy {
    let in_namespace = || {
        retentions.iter().filter(|r| {
            r.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE) == table.schema
        })
    };
    let rollup_keep = in_namespace()
        .flat_map(|r| &r.spec.rollups)
        .filter(|rollup| rollup.name == table.table)
        .filter_map(|rollup| parse_duration(&rollup.keep).ok())
        .min();
    if let Some(keep) = rollup_keep {
        return RetentionPolicy {
            max_bytes: defaults.max_bytes,
            max_age: Some(keep),
        };
    }
    let matching: Vec<&RetentionSpec> = in_namespace()
        .map(|r| &r.spec)
        .filter(|spec| spec.tables.iter().any(|p| table_matches(p, &table.table)))
        .collect();
    let max_bytes = matching
        .iter()
        .filter_map(|spec| spec.max_bytes.as_ref())
        .filter_map(|q| parse_bytes(q).ok())
        .min();
    let max_age = matching
        .iter()
        .filter_map(|spec| spec.max_age.as_deref())
        .filter_map(|d| parse_duration(d).ok())
        .min();
    RetentionPolicy {
        max_bytes: max_bytes.or(defaults.max_bytes),
        max_age: max_age.or(defaults.max_age),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(namespace: Option<&str>, yaml: &str) -> Retention {
        let spec: RetentionSpec = serde_yaml::from_str(yaml).expect("valid RetentionSpec YAML");
        let mut r = Retention::new("r", spec);
        r.metadata.namespace = namespace.map(str::to_owned);
        r
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn no_retention_gives_the_defaults() {
        let name = TableName::new("shop", "opens");
        assert_eq!(
            policy_for(&[], &name, RetentionPolicy::DEFAULT),
            RetentionPolicy::DEFAULT
        );
    }

    #[test]
    fn matches_names_and_globs_in_its_own_namespace_only() {
        let rs = [retention(
            Some("shop"),
            "{tables: ['opens*'], maxBytes: 8Mi, maxAge: 10m}",
        )];
        let policy = policy_for(
            &rs,
            &TableName::new("shop", "opens_slow"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy.max_bytes, Some(8 * MI));
        assert_eq!(policy.max_age, Some(Duration::from_secs(600)));
        // Same table name in another namespace: not this Retention's business.
        let other = policy_for(
            &rs,
            &TableName::new("bank", "opens"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(other, RetentionPolicy::DEFAULT);
        let unmatched = policy_for(
            &rs,
            &TableName::new("shop", "execs"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(unmatched, RetentionPolicy::DEFAULT);
    }

    #[test]
    fn smallest_limit_wins_per_axis_and_unset_axes_default() {
        let rs = [
            retention(Some("shop"), "{tables: ['*'], maxBytes: 16Mi}"),
            retention(
                Some("shop"),
                "{tables: ['opens'], maxBytes: 32Mi, maxAge: 2h}",
            ),
            retention(Some("shop"), "{tables: ['op?ns'], maxAge: 3h}"),
        ];
        let policy = policy_for(
            &rs,
            &TableName::new("shop", "opens"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy.max_bytes, Some(16 * MI));
        assert_eq!(policy.max_age, Some(Duration::from_secs(7200)));
        // Only the `*` Retention matches: its maxBytes, the default maxAge.
        let policy = policy_for(
            &rs,
            &TableName::new("shop", "execs"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy.max_bytes, Some(16 * MI));
        assert_eq!(policy.max_age, RetentionPolicy::DEFAULT.max_age);
    }

    #[test]
    fn missing_namespace_means_default() {
        let rs = [retention(None, "{tables: ['opens'], maxBytes: 1Mi}")];
        let policy = policy_for(
            &rs,
            &TableName::new("default", "opens"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy.max_bytes, Some(MI));
    }

    #[test]
    fn rollup_tables_keep_their_own_history() {
        let rs = [
            retention(
                Some("shop"),
                "{tables: ['opens'], maxAge: 10m, rollups: [{name: opens_1m, interval: 1m, \
                 aggregates: [{fn: count}], keep: 168h}]}",
            ),
            // Meant for raw tables; must not cut the rollup's week.
            retention(Some("shop"), "{tables: ['*'], maxAge: 1h}"),
        ];
        let policy = policy_for(
            &rs,
            &TableName::new("shop", "opens_1m"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy.max_age, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(policy.max_bytes, RetentionPolicy::DEFAULT.max_bytes);
        let raw = policy_for(
            &rs,
            &TableName::new("shop", "opens"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(raw.max_age, Some(Duration::from_secs(600)));
    }

    #[test]
    fn unparsable_limits_are_ignored() {
        let rs = [retention(
            Some("shop"),
            "{tables: ['opens'], maxBytes: lots, maxAge: soon}",
        )];
        let policy = policy_for(
            &rs,
            &TableName::new("shop", "opens"),
            RetentionPolicy::DEFAULT,
        );
        assert_eq!(policy, RetentionPolicy::DEFAULT);
    }
}
