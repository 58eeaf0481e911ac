//! Per-key order on the relay side: rows with an ordering key are published in id order,
//! and never while an older unsent row of their key is elsewhere.
//!
//! Three rules, one per way a key could be overtaken:
//!
//! 1. **The claim** (`RelaySql::claim`) leaves out a keyed row while an older unsent row of
//!    its key is parked or not due (an eta, a refused publish waiting for its retry).
//! 2. **After the claim** ([`hold_back`]): a claimed row whose older unsent rows are not all
//!    in this batch (they are locked by another batch in flight, of this relay or another, or
//!    the claim's `LIMIT` cut between them) is held back: kept locked until the batch ends,
//!    but neither published nor touched. The first row of a key (its head) is never held
//!    back, so every key makes progress.
//! 3. **While publishing** ([`Rounds`], `batch::publish_in_order`): the rows of one key go out one at a time, each only
//!    once the broker confirmed the one before. Round `n` publishes the `n`-th row of every
//!    key of the batch (round 0 also every row without a key), so a batch of many keys keeps
//!    many messages in flight. When a row is refused, nacked or unconfirmed, the later rows of
//!    its key in the batch are held back, and the refused row, unsent, then blocks them by
//!    rule 1.
//!
//! A batch without two rows of one key is one round: rows without keys go out exactly as
//! before.

use std::collections::{HashMap, HashSet};

use actix_outbox::Result;
use actix_outbox::outbox_message::Entity;
use actix_outbox::outbox_message::Model;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait};

use super::sql::RelaySql;

/// Splits claimed `rows` into those that may be published now and the number held back
/// (rule 2). Runs one query when the batch has keyed rows, none otherwise.
///
/// # Errors
///
/// Database errors.
pub(crate) async fn hold_back<C: ConnectionTrait>(
    db: &C,
    sql: &RelaySql,
    rows: Vec<Model>,
) -> Result<(Vec<Model>, usize)> {
    let keys: HashSet<&str> = rows
        .iter()
        .filter_map(|r| r.ordering_key.as_deref())
        .collect();
    if keys.is_empty() {
        return Ok((rows, 0));
    }
    let keys: Vec<&str> = keys.into_iter().collect();
    let max_id = rows
        .iter()
        .filter(|r| r.ordering_key.is_some())
        .map(|r| r.id)
        .max()
        .unwrap_or(0);
    let unsent = db.query_all_raw(sql.key_runs(&keys, max_id)).await?;
    let mut runs: Vec<(String, i64)> = Vec::with_capacity(unsent.len());
    for row in unsent {
        runs.push((row.try_get("", "ordering_key")?, row.try_get("", "id")?));
    }
    let (kept, held) = prefixes(rows, &runs);
    if held == 0 || sql.backend() != DbBackend::Postgres {
        return Ok((kept, held));
    }
    // Held-back rows must not stay locked for the whole batch: another batch (of this relay
    // or another) may be the one able to publish them next, and would skip them and claim
    // rows behind them that it must hold back in turn. The claim ran inside a savepoint;
    // rolling back to it releases every lock it took, and the rows to publish are locked
    // again (one of them taken meanwhile by another batch is skipped, and the prefix rule
    // applied once more).
    db.execute_unprepared(&format!("ROLLBACK TO SAVEPOINT {CLAIM_SAVEPOINT}"))
        .await?;
    let ids: Vec<i64> = kept.iter().map(|r| r.id).collect();
    let relocked = Entity::find()
        .from_raw_sql(sql.relock(&ids))
        .all(db)
        .await?;
    let (kept, _) = prefixes(relocked, &runs);
    let dropped = ids.len() - kept.len();
    Ok((kept, held + dropped))
}

/// The savepoint a PostgreSQL claim runs in (see [`hold_back`]).
pub(crate) const CLAIM_SAVEPOINT: &str = "outbox_claim";

/// Keeps, of each key's claimed rows, those that form an unbroken prefix of the key's unsent
/// rows (`unsent`: key and id, ascending ids); rows without a key are all kept. Returns the
/// kept rows (claim order) and how many were held back.
pub(crate) fn prefixes(rows: Vec<Model>, unsent: &[(String, i64)]) -> (Vec<Model>, usize) {
    let claimed: HashSet<i64> = rows
        .iter()
        .filter(|r| r.ordering_key.is_some())
        .map(|r| r.id)
        .collect();
    let mut last_of_key: HashMap<&str, i64> = HashMap::new();
    for row in &rows {
        if let Some(key) = row.ordering_key.as_deref() {
            let last = last_of_key.entry(key).or_insert(row.id);
            *last = (*last).max(row.id);
        }
    }
    // Per key: the highest id up to which every unsent row is ours.
    let mut allowed: HashMap<&str, i64> = HashMap::new();
    let mut broken: HashSet<&str> = HashSet::new();
    for (key, id) in unsent {
        let key = key.as_str();
        let Some(&last) = last_of_key.get(key) else {
            continue;
        };
        if *id > last || broken.contains(key) {
            continue;
        }
        if claimed.contains(id) {
            allowed.insert(key, *id);
        } else {
            broken.insert(key);
        }
    }
    let before = rows.len();
    let kept: Vec<Model> = rows
        .into_iter()
        .filter(|r| match r.ordering_key.as_deref() {
            None => true,
            Some(key) => allowed.get(key).is_some_and(|&max| r.id <= max),
        })
        .collect();
    let held = before - kept.len();
    (kept, held)
}

/// A batch's publishing order (rule 3): which rows go out in which round.
pub(crate) struct Rounds;

impl Rounds {
    /// The rounds of `rows`, as indices into it: round 0 holds every row without a key (in
    /// claim order) and the oldest row of each key, round `n` the `n`-th row of each key.
    pub(crate) fn of(rows: &[Model]) -> Vec<Vec<usize>> {
        let mut keyed: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].ordering_key.is_some())
            .collect();
        keyed.sort_by_key(|&i| rows[i].id);
        let mut rounds: Vec<Vec<usize>> = vec![
            (0..rows.len())
                .filter(|&i| rows[i].ordering_key.is_none())
                .collect(),
        ];
        let mut rank: HashMap<&str, usize> = HashMap::new();
        for i in keyed {
            let n = rank
                .entry(rows[i].ordering_key.as_deref().unwrap_or_default())
                .or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push(i);
            *n += 1;
        }
        rounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn row(id: i64, key: Option<&str>) -> Model {
        let now = Utc::now();
        Model {
            id,
            message_id: Uuid::now_v7(),
            routing_key: "order.changed".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            headers: serde_json::json!({}),
            created_at: now,
            send_after: now,
            expires_at: None,
            attempts: 0,
            last_error: None,
            sent_at: None,
            parked_at: None,
            ordering_key: key.map(str::to_owned),
        }
    }

    fn ids(rows: &[Model]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    fn unsent(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(k, id)| ((*k).to_owned(), *id)).collect()
    }

    #[test]
    fn a_key_whose_older_row_is_elsewhere_is_held_back() {
        // Key a: rows 1 (locked by another batch), 3, 5 claimed here. Key b: 2, 4, both ours.
        let rows = vec![
            row(3, Some("a")),
            row(2, Some("b")),
            row(4, Some("b")),
            row(5, Some("a")),
            row(6, None),
        ];
        let runs = unsent(&[("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]);
        let (kept, held) = prefixes(rows, &runs);
        assert_eq!(ids(&kept), [2, 4, 6]);
        assert_eq!(held, 2);
    }

    #[test]
    fn a_gap_inside_a_key_cuts_its_run() {
        // Key a: 1 and 2 ours, 3 in another batch (the claim's limit or a lock), 4 ours.
        let rows = vec![row(1, Some("a")), row(2, Some("a")), row(4, Some("a"))];
        let runs = unsent(&[("a", 1), ("a", 2), ("a", 3), ("a", 4)]);
        let (kept, held) = prefixes(rows, &runs);
        assert_eq!(ids(&kept), [1, 2]);
        assert_eq!(held, 1);
    }

    #[test]
    fn rows_without_keys_are_never_held() {
        let rows = vec![row(1, None), row(2, None)];
        let (kept, held) = prefixes(rows, &[]);
        assert_eq!((ids(&kept), held), (vec![1, 2], 0));
    }

    #[test]
    fn rounds_take_one_row_per_key_each() {
        let rows = vec![
            row(9, None),
            row(5, Some("b")),
            row(1, Some("a")),
            row(2, Some("a")),
            row(7, Some("b")),
            row(3, Some("a")),
            row(8, None),
        ];
        let rounds: Vec<Vec<i64>> = Rounds::of(&rows)
            .into_iter()
            .map(|round| round.into_iter().map(|i| rows[i].id).collect())
            .collect();
        assert_eq!(rounds, [vec![9, 8, 1, 5], vec![2, 7], vec![3]]);
    }

    #[test]
    fn a_batch_without_repeated_keys_is_one_round() {
        let rows = vec![row(1, None), row(2, Some("a")), row(3, Some("b"))];
        assert_eq!(Rounds::of(&rows), [vec![0, 1, 2]]);
        assert_eq!(Rounds::of(&[]), [Vec::<usize>::new()]);
    }
}
