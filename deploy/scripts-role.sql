-- A database role for script steps: it may write the tables your scripts write (here,
-- the job-posting example's) and nothing of the farm's own (workflows, batches, runs,
-- interactions, attempts, events, workers). Give its URL to script workers as
-- WAVEFARM_SCRIPTS_DATABASE_URL; the orchestrator keeps WAVEFARM_DATABASE_URL.
--
-- Run it as the owner of the farm's database, after `orchestrator db upgrade` and after
-- your tables exist (for the example: psql -f examples/postings/scripts/schema.sql):
--   psql "$WAVEFARM_DATABASE_URL" -v password="'CHANGE_ME'" -f deploy/scripts-role.sql

CREATE ROLE wavefarm_scripts LOGIN PASSWORD :password;

-- Nothing by default. (Before Postgres 15 every role may create tables in the public
-- schema through PUBLIC; there, also run: REVOKE CREATE ON SCHEMA public FROM PUBLIC.)
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM wavefarm_scripts;
REVOKE CREATE ON SCHEMA public FROM wavefarm_scripts;
GRANT USAGE ON SCHEMA public TO wavefarm_scripts;

-- Your tables (and their id sequences): the example's. Name yours here.
GRANT SELECT, INSERT, UPDATE ON postings, postings_staging TO wavefarm_scripts;
GRANT USAGE, SELECT ON SEQUENCE postings_posting_id_seq, postings_staging_id_seq TO wavefarm_scripts;
