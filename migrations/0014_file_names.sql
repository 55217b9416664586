-- Every name a file's content arrived under. The ledger (`ingest_files`) counts a content once,
-- under the first name it came with; a second file of the same bytes (copied, renamed, dropped
-- twice) is recorded here under its own name, so an operator asking what became of it finds it:
-- its rows are duplicates of the content it repeats.
CREATE TABLE IF NOT EXISTS ingest_file_names (
    content_id    TEXT        NOT NULL,
    file_name     TEXT        NOT NULL,
    -- Data rows read under this name (its end message), NULL until it arrived.
    rows_read     BIGINT,
    landed_at     TIMESTAMPTZ,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (content_id, file_name)
);

CREATE INDEX IF NOT EXISTS ingest_file_names_name_idx ON ingest_file_names (file_name);

-- The names the ledger already holds.
INSERT INTO ingest_file_names (content_id, file_name, rows_read, landed_at, first_seen_at)
SELECT content_id, file_name, rows_read, landed_at, first_seen_at FROM ingest_files
ON CONFLICT DO NOTHING;

-- What became of a file, by its name: the ledger's counts for the name the content was counted
-- under, and for every other name of the same content, all its rows as duplicates of that one.
CREATE OR REPLACE VIEW ingest_files_by_name AS
SELECT n.file_name,
       n.content_id,
       n.rows_read,
       n.landed_at,
       n.first_seen_at,
       CASE WHEN n.file_name = f.file_name THEN NULL ELSE f.file_name END AS repeats_content_of,
       CASE WHEN n.file_name = f.file_name THEN f.rows_inserted ELSE 0 END AS rows_inserted,
       CASE WHEN n.file_name = f.file_name THEN f.rows_duplicate ELSE n.rows_read END
           AS rows_duplicate,
       CASE WHEN n.file_name = f.file_name THEN f.rows_rejected ELSE 0 END AS rows_rejected,
       f.reconciled_at
FROM ingest_file_names n
JOIN ingest_files f USING (content_id);
