-- Tables of the job-posting example (examples/postings).
--
-- postings_db.connect() applies this file the first time a script meets a database
-- without these tables (under an advisory lock); every statement is safe to repeat.
--
-- postings_staging: what intake received, one row per wavefarm run (a retried
--   intake updates its row instead of adding one), and what validation decided.
-- postings: one row per posting of the feed (source_id), the url unique across
--   postings, and the fields the pipeline saves: extracted_summary, skill_keywords,
--   ihl_score/ihl_verdict ("internal hire likelihood"), each with when it was saved.

CREATE TABLE IF NOT EXISTS postings (
    posting_id        bigserial PRIMARY KEY,
    source_id         text NOT NULL CONSTRAINT postings_source_id_key UNIQUE,
    url               text NOT NULL CONSTRAINT postings_url_key UNIQUE,
    title             text,
    company           text,
    location          text,
    description       text NOT NULL,
    extracted_summary text,
    summary_saved_at  timestamptz,
    skill_keywords    jsonb CONSTRAINT postings_skill_keywords_is_array
                          CHECK (skill_keywords IS NULL OR jsonb_typeof(skill_keywords) = 'array'),
    skills_saved_at   timestamptz,
    ihl_score         int CONSTRAINT postings_ihl_score_range CHECK (ihl_score BETWEEN 1 AND 10),
    ihl_verdict       text CONSTRAINT postings_ihl_verdict_known
                          CHECK (ihl_verdict IN ('GENUINE', 'BORDERLINE', 'LIKELY_INTERNAL')),
    ihl_saved_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS postings_staging (
    id            bigserial PRIMARY KEY,
    run_id        bigint NOT NULL CONSTRAINT postings_staging_run_id_key UNIQUE,
    batch_id      bigint,
    source_id     text,
    payload       jsonb NOT NULL,  -- the row as intake received it
    status        text NOT NULL DEFAULT 'received'
                      CONSTRAINT postings_staging_status_known
                      CHECK (status IN ('received', 'promoted', 'rejected')),
    reject_reason text,
    posting_id    bigint REFERENCES postings (posting_id) ON DELETE SET NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    decided_at    timestamptz
);

CREATE INDEX IF NOT EXISTS postings_staging_source_id_idx ON postings_staging (source_id);
CREATE INDEX IF NOT EXISTS postings_staging_batch_status_idx ON postings_staging (batch_id, status);
