//! Newest wins: which copy of each account the store keeps when its copies disagree.
//!
//! The database, the journal and (from stores written before the journal) the old snapshot
//! each hold a copy of every account. After a crash, a torn write or a damaged log they can
//! disagree; every copy carries the version it was written as, sealed with it, so the newest
//! valid one is known. This module only decides; `sled.rs` applies the decision.

use std::collections::{BTreeMap, HashMap};

use super::schema::{self, Entry};
use super::seal::Keyring;
use super::StoreError;
use crate::token::AccountRecord;

/// Where a copy was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The sled database.
    Database,
    /// The journal.
    Journal,
    /// `accounts.snapshot`, from before the journal.
    Snapshot,
}

/// The newest copy of one account found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Newest {
    /// Its version.
    pub(super) version: u64,
    /// The sealed value as stored (an account, or a removal); empty for the database's own
    /// copy, which never needs writing back.
    pub(super) value: Vec<u8>,
    /// What identifies this sealed value: its length and header (format, key id and random
    /// nonce). Two copies with the same fingerprint are the same write, so the second need
    /// not be opened.
    fingerprint: Fingerprint,
    /// Where the account as decoded is in [`Merge::records`]; `None` for a removal.
    record: Option<usize>,
    /// Where it came from.
    pub(super) source: Source,
    /// The database's version of this account, if it holds one that could be read.
    pub(super) in_database: Option<u64>,
    /// The database holds a value for this account that cannot be read.
    pub(super) database_unreadable: bool,
    /// The newest version of this account the journal holds.
    pub(super) in_journal: Option<u64>,
}

/// Every copy offered, reduced to the newest per account.
#[derive(Debug, Default)]
pub(super) struct Merge {
    /// The newest copy of each account, by name. A hash map: one table, not a tree of
    /// small nodes that would leave the heap fragmented once the open is over.
    pub(super) newest: HashMap<String, Newest>,
    /// The accounts as decoded, apart from the table: they become the store's answer in
    /// place, without a second vector of 100k records beside the table.
    records: Vec<AccountRecord>,
    /// The highest version seen anywhere: the next write takes the one after it.
    pub(super) max_version: u64,
    /// Copies that could not be opened: the account's name and where (never contents).
    pub(super) unreadable: Vec<(String, Source)>,
}

/// The length and header of a sealed value (format, key id, random nonce): two copies
/// with the same fingerprint are the same write.
type Fingerprint = (usize, [u8; FINGERPRINT_LEN]);
const FINGERPRINT_LEN: usize = 1 + 8 + 24;

fn fingerprint(value: &[u8]) -> Fingerprint {
    let mut header = [0; FINGERPRINT_LEN];
    let len = value.len().min(FINGERPRINT_LEN);
    header[..len].copy_from_slice(&value[..len]);
    (value.len(), header)
}

impl Newest {
    /// Whether the newest copy is a removal.
    pub(super) fn removed(&self) -> bool {
        self.record.is_none()
    }
}

impl Merge {
    /// Considers one stored value. A value sealed with a key we do not have is an error (the
    /// wrong key file, not damage); any other unreadable value is noted and passed over, for
    /// a copy elsewhere may stand in for it (`finish` decides).
    ///
    /// # Errors
    /// `StoreError::WrongKey`.
    pub(super) fn offer(
        &mut self,
        source: Source,
        name: &[u8],
        value: &[u8],
        keyring: &Keyring,
    ) -> Result<(), StoreError> {
        let fingerprint = fingerprint(value);
        if let Some(held) = self.newest.get_mut(&*String::from_utf8_lossy(name)) {
            if held.fingerprint == fingerprint {
                // The very write already held: same version, nothing to open.
                match source {
                    Source::Database => held.in_database = Some(held.version),
                    Source::Journal => held.in_journal = held.in_journal.max(Some(held.version)),
                    Source::Snapshot => {}
                }
                return Ok(());
            }
        }
        let text = String::from_utf8_lossy(name).into_owned();
        let decoded = match schema::decode_versioned(name, value, keyring) {
            Ok(decoded) => decoded,
            Err(error @ StoreError::WrongKey { .. }) => return Err(error),
            Err(_) => {
                self.unreadable.push((text, source));
                return Ok(());
            }
        };
        let version = decoded.version;
        self.max_version = self.max_version.max(version);
        let record = match decoded.entry {
            Entry::Put(record) => Some(record),
            Entry::Removed => None,
        };
        let records = &mut self.records;
        let mut keep = |record: AccountRecord, at: Option<usize>| match at {
            Some(at) => {
                records[at] = record;
                at
            }
            None => {
                records.push(record);
                records.len() - 1
            }
        };
        let candidate = |record| Newest {
            version,
            value: if source == Source::Database {
                Vec::new()
            } else {
                value.to_vec()
            },
            fingerprint,
            record,
            source,
            in_database: (source == Source::Database).then_some(version),
            database_unreadable: false,
            in_journal: (source == Source::Journal).then_some(version),
        };
        match self.newest.entry(text) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(candidate(record.map(|record| keep(record, None))));
            }
            std::collections::hash_map::Entry::Occupied(mut occupied) => {
                let held = occupied.get_mut();
                if source == Source::Database {
                    held.in_database = Some(version);
                }
                if source == Source::Journal {
                    held.in_journal = held.in_journal.max(Some(version));
                }
                // Ties go to the copy offered first (the database is offered first), so a
                // store whose copies agree needs no repair.
                if version > held.version {
                    // A removal leaves the older record where it was, unclaimed.
                    let at = record.map(|record| keep(record, held.record));
                    *held = Newest {
                        in_database: held.in_database,
                        database_unreadable: held.database_unreadable,
                        in_journal: held.in_journal,
                        ..candidate(at)
                    };
                }
            }
        }
        Ok(())
    }

    /// Every account, in name order, and every removal with its version: what the merge
    /// decided, taken apart.
    pub(super) fn into_accounts(self) -> (Vec<AccountRecord>, BTreeMap<String, u64>) {
        let mut claimed = vec![false; self.records.len()];
        let mut removed = BTreeMap::new();
        for (name, newest) in self.newest {
            match newest.record {
                Some(at) => claimed[at] = true,
                None => {
                    removed.insert(name, newest.version);
                }
            }
        }
        let mut accounts = self.records;
        let mut claimed = claimed.into_iter();
        accounts.retain(|_| claimed.next().unwrap_or(false));
        accounts.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        (accounts, removed)
    }

    /// Checks that every account the database could not read has a copy elsewhere.
    ///
    /// # Errors
    /// `StoreError::Decode` naming an account whose only copy is unreadable.
    pub(super) fn finish(mut self) -> Result<Self, StoreError> {
        for (name, source) in &self.unreadable {
            if *source != Source::Database {
                continue;
            }
            if let Some(newest) = self.newest.get_mut(name) {
                newest.database_unreadable = true;
            } else {
                return Err(StoreError::Decode {
                    key: name.clone(),
                    reason: "the database's value does not authenticate and neither the journal nor a snapshot holds a copy; restore the store directory from a backup, or remove the account and connect it again".into(),
                });
            }
        }
        Ok(self)
    }

    /// The accounts whose database copy is older than the newest one (or missing, or a
    /// removal the database never saw): the database must be brought up to date for these.
    pub(super) fn database_behind(&self) -> impl Iterator<Item = (&str, &Newest)> {
        self.newest
            .iter()
            .filter(|(_, newest)| match newest.in_database {
                Some(version) => version < newest.version,
                None => !newest.removed() || newest.database_unreadable,
            })
            .map(|(name, newest)| (name.as_str(), newest))
    }

    /// How many accounts there are (the newest copy of each is not a removal): what the
    /// database holds once it is brought up to date.
    pub(super) fn live(&self) -> u64 {
        self.newest
            .values()
            .filter(|newest| !newest.removed())
            .count() as u64
    }

    /// Whether the journal holds the newest copy of every account and removal.
    pub(super) fn journal_complete(&self) -> bool {
        self.newest
            .values()
            .all(|newest| newest.in_journal == Some(newest.version))
    }
}

impl Source {
    /// The file it names in messages.
    pub(super) fn file(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Journal => "journal",
            Self::Snapshot => "snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::RefreshToken;
    use crate::store::seal::StoreKey;
    use crate::token::AccountRecord;

    fn keyring() -> Keyring {
        Keyring::new(StoreKey::from_bytes(&[3; 32]))
    }

    fn value(name: &str, refresh: &str, version: u64) -> Vec<u8> {
        let record = AccountRecord::new(
            name.parse().unwrap(),
            "dropbox".into(),
            RefreshToken::new(refresh),
        );
        schema::encode(&record, version, &keyring().current)
    }

    #[test]
    fn the_newest_copy_wins_wherever_it_is() {
        let keys = keyring();
        let mut merge = Merge::default();
        merge
            .offer(Source::Database, b"a", &value("a", "rt-3", 3), &keys)
            .unwrap();
        merge
            .offer(Source::Database, b"b", &value("b", "rt-9", 9), &keys)
            .unwrap();
        merge
            .offer(Source::Journal, b"a", &value("a", "rt-2", 2), &keys)
            .unwrap();
        merge
            .offer(Source::Journal, b"a", &value("a", "rt-5", 5), &keys)
            .unwrap();
        merge
            .offer(Source::Journal, b"b", &value("b", "rt-9", 9), &keys)
            .unwrap();
        let removal = schema::encode_removal(&"c".parse().unwrap(), 7, &keys.current);
        merge.offer(Source::Journal, b"c", &removal, &keys).unwrap();
        let merge = merge.finish().unwrap();
        assert_eq!(merge.max_version, 9);
        assert_eq!(merge.newest["a"].version, 5);
        assert_eq!(merge.newest["a"].source, Source::Journal);
        assert_eq!(merge.newest["a"].in_database, Some(3));
        assert_eq!(
            merge.newest["b"].source,
            Source::Database,
            "a tie keeps the database's"
        );
        assert!(merge.newest["c"].removed());
        let behind: Vec<_> = merge.database_behind().map(|(name, _)| name).collect();
        assert_eq!(
            behind,
            ["a"],
            "a removal the database never held needs nothing"
        );
        assert_eq!(merge.newest["a"].in_journal, Some(5));
        assert!(merge.journal_complete());
    }

    /// The accounts handed out are the newest puts, in name order: a record a later removal
    /// superseded is not among them, nor one a later put replaced.
    #[test]
    fn the_accounts_are_the_newest_puts_in_name_order() {
        let keys = keyring();
        let removal = |name: &str, version| {
            schema::encode_removal(&name.parse().unwrap(), version, &keys.current)
        };
        let mut merge = Merge::default();
        let offers: [(&[u8], Vec<u8>); 7] = [
            (b"c", value("c", "rt-c1", 1)),
            (b"a", value("a", "rt-a2", 2)),
            (b"b", value("b", "rt-b3", 3)),
            (b"c", removal("c", 4)),
            (b"a", value("a", "rt-a5", 5)),
            (b"b", removal("b", 6)),
            (b"b", value("b", "rt-b7", 7)),
        ];
        for (name, value) in &offers {
            merge.offer(Source::Journal, name, value, &keys).unwrap();
        }
        let (accounts, removed) = merge.finish().unwrap().into_accounts();
        let accounts: Vec<(&str, &str)> = accounts
            .iter()
            .map(|a| (a.name.as_str(), a.refresh_token.expose()))
            .collect();
        assert_eq!(accounts, [("a", "rt-a5"), ("b", "rt-b7")]);
        assert_eq!(
            removed.into_iter().collect::<Vec<_>>(),
            [("c".to_owned(), 4)]
        );
    }

    #[test]
    fn an_unreadable_value_is_passed_over_if_a_copy_exists_elsewhere() {
        let keys = keyring();
        let mut damaged = value("a", "rt-1", 1);
        *damaged.last_mut().unwrap() ^= 0x40;
        let mut merge = Merge::default();
        merge
            .offer(Source::Database, b"a", &damaged, &keys)
            .unwrap();
        merge
            .offer(Source::Journal, b"a", &value("a", "rt-1", 1), &keys)
            .unwrap();
        let merge = merge.finish().unwrap();
        assert_eq!(merge.unreadable, [("a".to_owned(), Source::Database)]);
        assert_eq!(merge.database_behind().count(), 1);

        let mut alone = Merge::default();
        alone
            .offer(Source::Database, b"a", &damaged, &keys)
            .unwrap();
        let error = alone.finish().unwrap_err();
        assert!(error.to_string().contains("account \"a\""), "{error}");
    }

    #[test]
    fn a_copy_that_is_the_very_write_already_held_is_not_opened_again() {
        let keys = keyring();
        let written = value("a", "rt-4", 4);
        let mut merge = Merge::default();
        merge
            .offer(Source::Database, b"a", &written, &keys)
            .unwrap();
        // The journal's frame of the same write: same length and header (the random nonce).
        // Its tail is damaged here, which only opening it would show: it is not opened.
        let mut same_write = written.clone();
        *same_write.last_mut().unwrap() ^= 1;
        merge
            .offer(Source::Journal, b"a", &same_write, &keys)
            .unwrap();
        let merge = merge.finish().unwrap();
        assert!(merge.unreadable.is_empty(), "{:?}", merge.unreadable);
        assert_eq!(merge.newest["a"].in_journal, Some(4));
        assert!(merge.journal_complete());
        // Another write of the same record (another nonce) is opened.
        let mut again = Merge::default();
        again
            .offer(Source::Database, b"a", &written, &keys)
            .unwrap();
        let mut other = value("a", "rt-4", 4);
        *other.last_mut().unwrap() ^= 1;
        again.offer(Source::Journal, b"a", &other, &keys).unwrap();
        assert_eq!(again.unreadable.len(), 1);
    }

    #[test]
    fn a_value_under_another_key_is_an_error_not_damage() {
        let other = Keyring::new(StoreKey::from_bytes(&[4; 32]));
        let mut merge = Merge::default();
        let error = merge
            .offer(Source::Journal, b"a", &value("a", "rt", 1), &other)
            .unwrap_err();
        assert!(matches!(error, StoreError::WrongKey { .. }));
    }
}
