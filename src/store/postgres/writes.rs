//! The PostgreSQL engine's statements for one batch of completions
//! ([`BatchWrites`]): what they mean is `store/batch.rs`'s.

use super::*;

/// [`BatchWrites`] on a PostgreSQL transaction of daemon `worker`;
/// `again`: the batch may have been committed already (its commit's answer
/// was lost), so attempts already recorded are not inserted twice.
pub(super) struct PgBatch<'t, 'c> {
    pub(super) tx: &'t mut Transaction<'c, Postgres>,
    pub(super) worker: &'t str,
    pub(super) again: bool,
}

impl BatchWrites for PgBatch<'_, '_> {
    type Error = sqlx::Error;

    async fn update_urls(
        &mut self,
        completions: &[Completion],
        changes: &[UrlChange],
    ) -> Result<BTreeSet<(i64, i64)>, sqlx::Error> {
        update_urls(self.tx, completions, changes).await
    }

    async fn stored_content(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, StoredContent>, sqlx::Error> {
        let rows: Vec<ContentColumns> = sqlx::query_as(
            "SELECT DISTINCT ON (url_id) url_id, content_type, body_bytes, body_sha256 FROM attempts
             WHERE url_id = ANY($1::int8[]) AND outcome = 'done' ORDER BY url_id, id DESC",
        )
        .bind(ids)
        .fetch_all(&mut **self.tx)
        .await?;
        Ok(rows.into_iter().map(stored).collect())
    }

    async fn insert_attempts(&mut self, rows: &[AttemptRow<'_>]) -> Result<(), sqlx::Error> {
        let mut rows: Vec<&AttemptRow> = rows.iter().collect();
        if self.again {
            let recorded = recorded_attempts(self.tx, &rows, self.worker).await?;
            rows.retain(|r| {
                !recorded.contains(&(r.url_id, i32::try_from(r.attempt).unwrap_or(i32::MAX), r.started_ms))
            });
        }
        if rows.is_empty() {
            return Ok(());
        }
        // Redirect hops need their attempt's id, and a batch may hold two
        // attempts of one URL (a stale one and the live one), so when any
        // attempt has hops the ids are taken first and hops find theirs by
        // position. Otherwise (most batches) the insert takes them itself:
        // an empty array unnests to NULLs beside the others.
        let ids: Vec<i64> = if rows.iter().any(|r| !r.record.hops.is_empty()) {
            sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('attempts', 'id')) FROM generate_series(1, $1)",
            )
            .bind(rows.len() as i64)
            .fetch_all(&mut **self.tx)
            .await?
        } else {
            Vec::new()
        };
        insert_attempts(self.tx, &rows, &ids, self.worker).await?;
        insert_hops(self.tx, &rows, &ids).await
    }

    async fn update_hosts(&mut self, changes: &[(&str, i64, i64)]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE hosts SET work_at_ms = least(hosts.work_at_ms, v.work_at_ms),
             backoff_until_ms = CASE v.backoff_until_ms WHEN 0 THEN hosts.backoff_until_ms
                                ELSE v.backoff_until_ms END
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(host, work_at_ms, backoff_until_ms)
             WHERE hosts.host = v.host",
        )
        .bind(changes.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.2).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn page_depths(&mut self, ids: &[i64]) -> Result<BTreeMap<i64, u32>, sqlx::Error> {
        Ok(sqlx::query_as::<_, (i64, i32)>("SELECT id, depth FROM urls WHERE id = ANY($1::int8[])")
            .bind(ids)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .map(|(id, depth)| (id, u32::try_from(depth).unwrap_or(0)))
            .collect())
    }

    async fn stored_urls(&mut self, urls: &[&str]) -> Result<BTreeSet<String>, sqlx::Error> {
        Ok(sqlx::query_scalar("SELECT url FROM urls WHERE url = ANY($1::text[])")
            .bind(urls)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .collect())
    }

    async fn url_counts(
        &mut self,
        total: bool,
        hosts: &[&str],
    ) -> Result<(i64, BTreeMap<String, i64>), sqlx::Error> {
        let all = match total {
            true => {
                sqlx::query_scalar("SELECT coalesce(sum(urls), 0)::int8 FROM hosts")
                    .fetch_one(&mut **self.tx)
                    .await?
            }
            false => 0,
        };
        if hosts.is_empty() {
            return Ok((all, BTreeMap::new()));
        }
        let per_host = sqlx::query_as("SELECT host, urls FROM hosts WHERE host = ANY($1::text[])")
            .bind(hosts)
            .fetch_all(&mut **self.tx)
            .await?
            .into_iter()
            .collect();
        Ok((all, per_host))
    }

    async fn insert_urls(&mut self, urls: &[NewUrl]) -> Result<u64, sqlx::Error> {
        insert_urls(self.tx, urls).await
    }

    async fn shorter_paths(
        &mut self,
        candidates: &[(&str, u32, Option<i64>)],
    ) -> Result<Vec<Shorter>, sqlx::Error> {
        let rows: Vec<(i64, i32, Option<i64>, i32, String)> = sqlx::query_as(
            "WITH RECURSIVE
               found(url, depth, via) AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])),
               lowered(id, depth, via) AS (
                 SELECT u.id, f.depth, f.via FROM found f JOIN urls u ON u.url = f.url WHERE f.depth < u.depth
                 UNION
                 SELECT l.to_id, p.depth + 1, p.id FROM lowered p
                 JOIN links l ON l.from_id = p.id JOIN urls v ON v.id = l.to_id
                 WHERE p.depth + 1 < v.depth)
             SELECT l.id, min(l.depth), (array_agg(l.via ORDER BY l.depth))[1], u.depth, u.state
             FROM lowered l JOIN urls u ON u.id = l.id
             GROUP BY l.id, u.depth, u.state",
        )
        .bind(candidates.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| i32::try_from(c.1).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.2).collect::<Vec<_>>())
        .fetch_all(&mut **self.tx)
        .await?;
        let depth = |d: i32| u32::try_from(d).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(|(id, d, via, before, state)| {
                (id, depth(d), via, depth(before), rules::stored_state(&state))
            })
            .collect())
    }

    async fn lower_depths(&mut self, rows: &[Lowered]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE urls SET depth = v.depth, found_on = coalesce(v.via, urls.found_on),
               state = CASE WHEN v.refetch THEN 'queued' ELSE urls.state END,
               lease = CASE WHEN v.refetch THEN NULL ELSE urls.lease END,
               leased_at_ms = CASE WHEN v.refetch THEN NULL ELSE urls.leased_at_ms END,
               not_before_ms = CASE WHEN v.refetch THEN 0 ELSE urls.not_before_ms END,
               recrawl_at_ms = CASE WHEN v.refetch THEN NULL ELSE urls.recrawl_at_ms END,
               etag = CASE WHEN v.refetch THEN NULL ELSE urls.etag END,
               last_modified = CASE WHEN v.refetch THEN NULL ELSE urls.last_modified END
             FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::bool[]) AS v(id, depth, via, refetch)
             WHERE urls.id = v.id",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| i32::try_from(r.1).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        let woken: Vec<i64> = rows.iter().filter(|r| r.3).map(|r| r.0).collect();
        if !woken.is_empty() {
            sqlx::query("UPDATE hosts SET work_at_ms = 0 WHERE host IN (SELECT host FROM urls WHERE id = ANY($1::int8[]))")
                .bind(&woken)
                .execute(&mut **self.tx)
                .await?;
        }
        Ok(())
    }

    async fn insert_links(&mut self, edges: &[(i64, &str)]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO links (from_id, to_id)
             SELECT v.from_id, u.id FROM unnest($1::int8[], $2::text[]) AS v(from_id, url)
             JOIN urls AS u ON u.url = v.url
             ON CONFLICT DO NOTHING",
        )
        .bind(edges.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(edges.iter().map(|e| e.1).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }

    async fn add_dropped_links(&mut self, rows: &[DroppedRow]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO dropped_links (url_id, reason, count)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])
             ON CONFLICT (url_id, reason) DO UPDATE SET count = dropped_links.count + excluded.count",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut **self.tx)
        .await?;
        Ok(())
    }
}

/// Applies `changes[i]` to `completions[i]`'s URL where the URL still
/// carries its lease and is in flight; returns the (URL id, lease) applied.
async fn update_urls(
    tx: &mut Transaction<'_, Postgres>,
    completions: &[Completion],
    changes: &[UrlChange],
) -> Result<BTreeSet<(i64, i64)>, sqlx::Error> {
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE urls SET state = v.state, attempts = urls.attempts_before + v.attempt,
             not_before_ms = v.not_before_ms, lease = NULL, leased_at_ms = NULL,
             finished_ms = coalesce(v.finished_ms, urls.finished_ms),
             recrawl_at_ms = v.finished_ms + v.recrawl_after_ms,
             etag = CASE WHEN v.done THEN v.etag ELSE urls.etag END,
             last_modified = CASE WHEN v.done THEN v.last_modified ELSE urls.last_modified END,
             body_sha256 = CASE WHEN v.done THEN v.body_sha256 ELSE urls.body_sha256 END,
             changed_ms = coalesce(v.changed_ms, urls.changed_ms),
             recrawl_interval_ms = CASE WHEN v.done THEN v.recrawl_interval_ms ELSE urls.recrawl_interval_ms END
         FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int4[], $5::int8[], $6::int8[], $7::int8[],
                     $8::bool[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[])
              AS v(url_id, lease, state, attempt, not_before_ms, finished_ms, recrawl_after_ms,
                   done, etag, last_modified, body_sha256, changed_ms, recrawl_interval_ms)
         WHERE urls.id = v.url_id AND urls.lease = v.lease AND urls.state = 'in_flight'
         RETURNING urls.id, v.lease",
    )
    .bind(completions.iter().map(|c| c.url_id).collect::<Vec<_>>())
    .bind(completions.iter().map(|c| c.lease).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.state.as_str()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| i32::try_from(c.attempts).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.not_before_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.finished_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.recrawl_after_ms).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.is_some()).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.validators.etag.as_deref())).collect::<Vec<_>>())
    .bind(
        changes
            .iter()
            .map(|c| c.content.as_ref().and_then(|c| c.validators.last_modified.as_deref()))
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.body_sha256.as_deref())).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.changed_ms)).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.content.as_ref().and_then(|c| c.recrawl_interval_ms)).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(applied.into_iter().collect())
}

/// The attempts of `rows` that daemon `worker` has recorded already, as
/// `(url_id, attempt, started_ms)`.
async fn recorded_attempts(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    worker: &str,
) -> Result<BTreeSet<(i64, i32, i64)>, sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT url_id, attempt, started_ms FROM attempts WHERE worker = $1 AND url_id = ANY($2::int8[])",
    )
    .bind(worker)
    .bind(rows.iter().map(|r| r.url_id).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect())
}

/// Inserts `rows`, with `ids` when given (else the sequence's).
async fn insert_attempts(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    ids: &[i64],
    worker: &str,
) -> Result<(), sqlx::Error> {
    let records = || rows.iter().map(|r| r.record);
    sqlx::query(
        "INSERT INTO attempts (id, url_id, attempt, started_at, started_ms, fetched_at, elapsed_ms, dns_ms, ttfb_ms,
             outcome, http_status, error_kind, error_message, retry_at, final_url, redirects, redirect_chain,
             content_type, body_bytes, body_sha256, headers, worker, noindex, canonical_url)
         SELECT coalesce(id, nextval(pg_get_serial_sequence('attempts', 'id'))), url_id, attempt, to_timestamp(started_ms / 1000.0), started_ms, to_timestamp(fetched_ms / 1000.0),
             elapsed_ms, dns_ms, ttfb_ms, outcome, http_status, error_kind, error_message,
             to_timestamp(retry_ms / 1000.0), final_url, redirects, redirect_chain::jsonb,
             content_type, body_bytes, body_sha256, headers::jsonb, $20, noindex, canonical_url
         FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                     $8::text[], $9::int4[], $10::text[], $11::text[], $12::int8[], $13::text[], $14::int4[],
                     $15::text[], $16::text[], $17::int8[], $18::text[], $19::text[], $21::int8[],
                     $22::bool[], $23::text[])
              AS v(url_id, attempt, started_ms, fetched_ms, elapsed_ms, dns_ms, ttfb_ms, outcome, http_status,
                   error_kind, error_message, retry_ms, final_url, redirects, redirect_chain, content_type,
                   body_bytes, body_sha256, headers, id, noindex, canonical_url)",
    )
    .bind(rows.iter().map(|r| r.url_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.started_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.fetched_ms).collect::<Vec<_>>())
    .bind(records().map(|r| to_i64(r.elapsed_ms)).collect::<Vec<_>>())
    .bind(records().map(|r| r.dns_ms.map(to_i64)).collect::<Vec<_>>())
    .bind(records().map(|r| r.ttfb_ms.map(to_i64)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
    .bind(records().map(|r| r.http_status.map(i32::from)).collect::<Vec<_>>())
    .bind(records().map(|r| r.error_kind.map(ErrorKind::as_str)).collect::<Vec<_>>())
    .bind(records().map(|r| r.error_message.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.retry_ms).collect::<Vec<_>>())
    .bind(records().map(|r| r.final_url.as_deref()).collect::<Vec<_>>())
    .bind(records().map(|r| i32::try_from(r.redirect_chain.len()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.redirect_chain.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.content_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_bytes.map(to_i64)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body_sha256).collect::<Vec<_>>())
    .bind(records().map(|r| r.headers.as_deref()).collect::<Vec<_>>())
    .bind(worker)
    .bind(ids)
    .bind(records().map(|r| r.noindex).collect::<Vec<_>>())
    .bind(records().map(|r| r.canonical_url.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts the redirect hops of `rows`, whose attempts have `ids`.
async fn insert_hops(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&AttemptRow<'_>],
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    let hops: Vec<(i64, i32, &Hop)> = ids
        .iter()
        .zip(rows)
        .flat_map(|(id, r)| r.record.hops.iter().enumerate().map(move |(i, hop)| (*id, i as i32 + 1, hop)))
        .collect();
    if !hops.is_empty() {
        sqlx::query(
            "INSERT INTO redirect_hops (attempt_id, hop, url, host, started_ms, http_status)
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::int4[])",
        )
        .bind(hops.iter().map(|h| h.0).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.1).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.url.as_str()).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.host.as_str()).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| unix_ms(h.2.started_at)).collect::<Vec<_>>())
        .bind(hops.iter().map(|h| h.2.http_status.map(i32::from)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
