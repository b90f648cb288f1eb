-- hookgate schema: the whole PostgreSQL schema in one idempotent file.
-- Applied by `gateway migrate` and at start-up under an advisory lock, so every statement must be
-- safe to run again (IF NOT EXISTS / OR REPLACE), and should take no lock when it changes
-- nothing (add columns through hookgate_add_column; take table locks only in the block below).
-- Bump schema_version when anything changes, functions and triggers included: a release leaves
-- a database at a newer version alone (storage/schema.py), so that it cannot put its older
-- functions back.

-- Table locks first, all at once, in the order most of the gateway's writers take theirs (the
-- group commit: runs, history, re-key list, outbox; the dispatcher: history, outbox, hook; a
-- status change: run, outbox): the statements below then never wait for a lock while holding
-- another one that those writers wait for. A few take theirs in another order (a concurrency
-- change: runs, then its pipeline; an outgoing hook's deletion: the hook, then its outbox), so
-- a deadlock with them stays possible; the server breaks it and the file is applied again
-- (storage/schema.py). SHARE ROW EXCLUSIVE holds up writes (each wait is bounded:
-- storage/schema.py SCHEMA_LOCK_WAIT), not readers such as pg_dump.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['pipelines', 'pipeline_runs', 'hook_requests',
                                'pipeline_runs_rekey', 'outgoing_deliveries', 'outgoing_hooks',
                                'incoming_hooks', 'users', 'auth_tokens'] LOOP
        IF to_regclass(name) IS NOT NULL THEN
            EXECUTE format('LOCK TABLE %I IN SHARE ROW EXCLUSIVE MODE', name);
        END IF;
    END LOOP;
END;
$$;

-- ALTER TABLE ... ADD COLUMN IF NOT EXISTS takes an ACCESS EXCLUSIVE lock even when the column
-- exists, and would wait behind every reader (a pg_dump) of the table, and every writer behind
-- it: columns are added through this, which alters the table only when the column is missing.
CREATE OR REPLACE FUNCTION hookgate_add_column(relation regclass, column_name name,
                                               definition text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = relation AND attname = column_name AND NOT attisdropped) THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I %s',
                       relation, column_name, definition);
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- SHA-256 of every schema.sql applied here. Start-up skips a file already applied: its ALTER
-- TABLE statements take ACCESS EXCLUSIVE locks even when they change nothing, and behind a long
-- reader (a pg_dump) they would hold up every write of the running gateways. `gateway migrate`
-- applies the file regardless.
CREATE TABLE IF NOT EXISTS schema_digest (
    sha256      text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
-- What the file defined when it was last applied here (storage/database.py, the query
-- schema_objects: an md5 per hookgate_ function and per trigger calling one). A start that
-- finds its file's digest here still applies it when the live definitions differ from these
-- (and from those of every file applied after it): a release from before schema_digest applies
-- its file at every start, putting its older functions back (logged schema_drift_repaired).
SELECT hookgate_add_column('schema_digest', 'objects', 'jsonb');

-- Users and authentication ---------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text NOT NULL,
    name           text NOT NULL DEFAULT '',
    password_hash  text NOT NULL,
    is_admin       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));

-- Opaque bearer tokens, stored only as SHA-256 hashes of the random token.
CREATE TABLE IF NOT EXISTS auth_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('access', 'refresh', 'personal')),
    token_hash    bytea NOT NULL UNIQUE,
    name          text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX IF NOT EXISTS auth_tokens_user_idx ON auth_tokens (user_id, kind);

-- Permissions: roles are sets of resource:verb strings; teams link to environments with a role.

CREATE TABLE IF NOT EXISTS roles (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    permissions  text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS teams (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS team_members (
    team_id  bigint NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, user_id)
);

-- Environments and pipelines -------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS environments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS environment_teams (
    environment_id  bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    team_id         bigint NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    role_id         bigint NOT NULL REFERENCES roles (id) ON DELETE RESTRICT,
    PRIMARY KEY (environment_id, team_id)
);

CREATE TABLE IF NOT EXISTS pipelines (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    environment_id      bigint NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    name                text NOT NULL,
    resource_type       text NOT NULL,
    resource_id         bigint NOT NULL,
    action_type         text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pipelines_environment_idx ON pipelines (environment_id);

-- Incoming hooks -------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS incoming_hooks (
    id                          uuid PRIMARY KEY,
    pipeline_id                 bigint NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    name                        text NOT NULL,
    active                      boolean NOT NULL DEFAULT true,
    action_type                 text NOT NULL,
    requires_secret             boolean NOT NULL DEFAULT true,
    secret_algorithm            text NOT NULL DEFAULT 'sha256',
    secret_header_name          text NOT NULL DEFAULT 'x-hub-signature-256',
    secret                      text,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    trigger_when                jsonb NOT NULL DEFAULT '{}',
    settings                    jsonb NOT NULL DEFAULT '{}',
    created_by                  bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS incoming_hooks_pipeline_idx ON incoming_hooks (pipeline_id);

-- Every worker caches hook definitions; a change anywhere tells them all to drop their copy.
CREATE OR REPLACE FUNCTION hookgate_notify_hook_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookgate_hook_changed', OLD.id::text);
    RETURN NULL;
END;
$$;
CREATE OR REPLACE TRIGGER incoming_hooks_changed
    AFTER UPDATE OR DELETE ON incoming_hooks
    FOR EACH ROW EXECUTE FUNCTION hookgate_notify_hook_changed();

-- Request history: one row per call to a hook URL (accepted, skipped, duplicate or rejected).
-- No foreign key to the hook on purpose: it is the hottest insert, and history outlives hooks.
CREATE TABLE IF NOT EXISTS hook_requests (
    id             uuid PRIMARY KEY,
    hook_id        uuid NOT NULL,
    hook_type      text NOT NULL DEFAULT 'incoming',
    received_at    timestamptz NOT NULL DEFAULT now(),
    client_ip      inet,
    headers        jsonb NOT NULL DEFAULT '{}',
    body           bytea,
    body_encoding  text,
    body_size      integer NOT NULL DEFAULT 0,
    outcome        text NOT NULL,
    status_code    smallint NOT NULL,
    message        text NOT NULL DEFAULT '',
    run_id         uuid,
    delivery_id    text,
    latency_ms     real,
    retry_of       uuid
);
CREATE INDEX IF NOT EXISTS hook_requests_hook_idx ON hook_requests (hook_id, received_at DESC);
CREATE INDEX IF NOT EXISTS hook_requests_received_idx ON hook_requests (received_at);

-- The group-commit writer runs most batches as one statement without BEGIN/COMMIT (queries.sql,
-- ingest_insert_batch). This aborts such a statement, and with it everything the statement
-- wrote, when the batch needs more than one statement after all; the writer (which recognises
-- SQLSTATE HGB01) then writes the batch again in a transaction.
CREATE OR REPLACE FUNCTION hookgate_batch_fits_one_statement(fits boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF fits IS NOT TRUE THEN  -- NULL fails too
        RAISE EXCEPTION 'the batch needs more than one statement' USING ERRCODE = 'HGB01';
    END IF;
    RETURN true;
END;
$$;

-- Pipeline runs --------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS pipeline_runs (
    id                uuid PRIMARY KEY,
    pipeline_id       bigint NOT NULL,
    hook_id           uuid,
    request_id        uuid,
    delivery_id       text,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'in-progress', 'completed', 'failed',
                                        'skipped', 'cancelled')),
    variables         jsonb NOT NULL DEFAULT '{}',
    attempt           integer NOT NULL DEFAULT 0,
    lease_token       uuid,
    lease_expires_at  timestamptz,
    message           text NOT NULL DEFAULT '',
    output            text NOT NULL DEFAULT '',
    exit_code         integer,
    queued_at         timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);
-- Idempotency: one run per (hook, delivery id); repeats find the original.
CREATE UNIQUE INDEX IF NOT EXISTS pipeline_runs_delivery_key
    ON pipeline_runs (hook_id, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS pipeline_runs_pipeline_idx ON pipeline_runs (pipeline_id, queued_at DESC);
-- The pending queue stays small: only queued rows are indexed for claiming.
CREATE INDEX IF NOT EXISTS pipeline_runs_pending_idx
    ON pipeline_runs (queued_at) WHERE status = 'queued';

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;

-- Runs -----------------------------------------------------------------------------------------
-- Leases, attempts and per-key concurrency for executors (gateway/storage/runs.py).

-- A pipeline runs at most one run per value of the variable named by concurrency_key at a time
-- (NULL key: no limit). queue: later runs wait; skip-if-running: they end 'skipped';
-- cancel-in-progress: the newest run wins and older queued/in-progress ones are cancelled.
SELECT hookgate_add_column('pipelines', 'concurrency_policy', $$text NOT NULL DEFAULT 'queue'
    CHECK (concurrency_policy IN ('queue', 'skip-if-running', 'cancel-in-progress'))$$);
SELECT hookgate_add_column('pipelines', 'concurrency_key', $$text$$);
SELECT hookgate_add_column('pipelines', 'max_attempts', $$integer NOT NULL DEFAULT 3
    CHECK (max_attempts BETWEEN 1 AND 100)$$);

SELECT hookgate_add_column('pipeline_runs', 'concurrency_key_value', $$text$$);
SELECT hookgate_add_column('pipeline_runs', 'claimed_by', $$text$$);
SELECT hookgate_add_column('pipeline_runs', 'updated_at', $$timestamptz NOT NULL DEFAULT now()$$);

-- Claiming one pipeline's runs walks only its queued rows, oldest first.
CREATE INDEX IF NOT EXISTS pipeline_runs_pending_pipeline_idx
    ON pipeline_runs (pipeline_id, queued_at) WHERE status = 'queued';
-- Expired-lease scans touch only in-progress rows.
CREATE INDEX IF NOT EXISTS pipeline_runs_lease_idx
    ON pipeline_runs (lease_expires_at) WHERE status = 'in-progress';
-- Concurrency checks: "is a run with this key in progress?" and "which queued run of this key
-- is oldest/newest?" each read a small partial index.
CREATE INDEX IF NOT EXISTS pipeline_runs_running_key_idx
    ON pipeline_runs (pipeline_id, concurrency_key_value)
    WHERE status = 'in-progress' AND concurrency_key_value IS NOT NULL;
CREATE INDEX IF NOT EXISTS pipeline_runs_queued_key_idx
    ON pipeline_runs (pipeline_id, concurrency_key_value, queued_at)
    WHERE status = 'queued' AND concurrency_key_value IS NOT NULL;
-- Pruning walks finished runs by age.
CREATE INDEX IF NOT EXISTS pipeline_runs_finished_idx
    ON pipeline_runs (finished_at) WHERE finished_at IS NOT NULL;

-- A run's concurrency key value: the variable named by the pipeline's concurrency_key, as text;
-- over 256 bytes, its SHA-256 instead (still exact equality, and B-tree index entries cannot
-- exceed ~2.7 KB: a long value would otherwise fail the insert, a 500 on every retry).
CREATE OR REPLACE FUNCTION hookgate_concurrency_key(variables jsonb, key_name text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length(v) > 256
                THEN 'sha256:' || encode(sha256(convert_to(v, 'UTF8')), 'hex')
                ELSE v END
    FROM (SELECT variables ->> key_name AS v) AS value
$$;

-- On enqueue (whoever inserts: the ingest batcher, replay, tests): record the run's key value,
-- and under skip-if-running end a run at once when its key already has a run in progress.
-- Read-only on other rows: cancel-in-progress is applied by claim and heartbeat instead, so the
-- hot insert never waits on, or deadlocks over, row locks held by executors.
CREATE OR REPLACE FUNCTION hookgate_run_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    policy    text;
    key_name  text;
    running   uuid;
BEGIN
    -- FOR SHARE: a change of the pipeline (its concurrency settings, its deletion) waits for
    -- the runs being written against the old row, and runs written after it wait for it, so
    -- every run is keyed by the settings in force when it is committed (storage/runs.py
    -- set_concurrency, storage/pipelines.py delete_pipeline).
    SELECT p.concurrency_policy, p.concurrency_key INTO policy, key_name
    FROM pipelines p WHERE p.id = NEW.pipeline_id
    FOR SHARE;
    IF NOT FOUND AND NEW.status IN ('queued', 'in-progress') THEN
        -- The pipeline was deleted while the request was on its way (a worker's hook cache
        -- not yet told): nothing could ever claim the run, so it ends at once, saying why.
        NEW.status := 'cancelled';
        NEW.finished_at := now();
        NEW.message := 'cancelled: the pipeline was deleted';
        RETURN NEW;
    END IF;
    IF key_name IS NULL THEN
        NEW.concurrency_key_value := NULL;
        RETURN NEW;
    END IF;
    NEW.concurrency_key_value := hookgate_concurrency_key(NEW.variables, key_name);
    IF policy = 'skip-if-running' AND NEW.status = 'queued'
            AND NEW.concurrency_key_value IS NOT NULL THEN
        SELECT r.id INTO running FROM pipeline_runs r
        WHERE r.pipeline_id = NEW.pipeline_id AND r.status = 'in-progress'
          AND r.concurrency_key_value = NEW.concurrency_key_value
        LIMIT 1;
        IF running IS NOT NULL THEN
            NEW.status := 'skipped';
            NEW.finished_at := now();
            NEW.message := format('skipped: run %s with the same %s is in progress',
                                  running, key_name);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
CREATE OR REPLACE TRIGGER pipeline_runs_before_insert
    BEFORE INSERT ON pipeline_runs
    FOR EACH ROW EXECUTE FUNCTION hookgate_run_before_insert();

-- Every state change (and every enqueue) tells listeners on 'hookgate_run_changed' with
-- {"run_id", "pipeline_id", "status"}; delivered only when the transaction commits.
-- Inserts notify once per (pipeline, status) per statement, not once per row: listeners (the
-- executors) only need "pipeline X has new runs"; a batch of thousands of runs would otherwise
-- queue thousands of notifications for every listening connection to read. The payload has
-- "run_id" when the statement inserted one run of that pipeline and status, else "runs": n.
CREATE OR REPLACE FUNCTION hookgate_notify_runs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookgate_run_changed', CASE WHEN g.runs = 1
        THEN json_build_object('run_id', g.run_id, 'pipeline_id', g.pipeline_id,
                               'status', g.status)
        ELSE json_build_object('pipeline_id', g.pipeline_id, 'status', g.status,
                               'runs', g.runs) END::text)
    FROM (SELECT n.pipeline_id, n.status, count(*) AS runs, (array_agg(n.id))[1] AS run_id
          FROM new_runs n GROUP BY n.pipeline_id, n.status) g;
    RETURN NULL;
END;
$$;
-- Statement level: one call per multi-row INSERT from the batcher, not one per row.
CREATE OR REPLACE TRIGGER pipeline_runs_inserted
    AFTER INSERT ON pipeline_runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION hookgate_notify_runs_inserted();

CREATE OR REPLACE FUNCTION hookgate_notify_run_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hookgate_run_changed', json_build_object(
        'run_id', NEW.id, 'pipeline_id', NEW.pipeline_id, 'status', NEW.status)::text);
    RETURN NULL;
END;
$$;
CREATE OR REPLACE TRIGGER pipeline_runs_status_changed
    AFTER UPDATE OF status ON pipeline_runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION hookgate_notify_run_changed();

INSERT INTO schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
-- end Runs -------------------------------------------------------------------------------------

-- Outgoing hooks -------------------------------------------------------------------------------
-- Requests sent to external systems when a run changes state (gateway/dispatcher/,
-- gateway/storage/outgoing.py). Deliveries are written into an outbox in the same transaction as
-- the state change; the dispatcher claims due rows with SKIP LOCKED and a lease.

CREATE TABLE IF NOT EXISTS outgoing_hooks (
    id                    uuid PRIMARY KEY,
    pipeline_id           bigint NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    active                boolean NOT NULL DEFAULT true,
    target_url            text NOT NULL,
    -- run.queued | run.started | run.completed | run.failed | run.status_changed
    events                text[] NOT NULL,
    trigger_when          jsonb NOT NULL DEFAULT '{}',  -- {"events": [...], "conditions": [...]}
    -- {request_headers: [{name, value}], request_body, method, timeout, signature_header,
    --  signature_algorithm}
    settings              jsonb NOT NULL DEFAULT '{}',
    requires_secret       boolean NOT NULL DEFAULT true,
    secret                text,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    disabled_reason       text,
    created_by            bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outgoing_hooks_pipeline_idx ON outgoing_hooks (pipeline_id);

-- The outbox. payload is the event context frozen at event time: {event, run, pipeline, hook}.
CREATE TABLE IF NOT EXISTS outgoing_deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    hook_id           uuid NOT NULL REFERENCES outgoing_hooks (id) ON DELETE CASCADE,
    run_id            uuid,
    event             text NOT NULL,
    payload           jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed',
                                        'skipped')),
    attempt           integer NOT NULL DEFAULT 0,  -- attempts started
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    locked_until      timestamptz,  -- lease of the dispatcher holding a 'delivering' row
    last_status_code  smallint,
    last_error        text,
    retry_of          uuid,  -- the hook_requests row a manual redelivery repeats
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- Only due work is indexed: pending rows by due time, and leases that may expire.
CREATE INDEX IF NOT EXISTS outgoing_deliveries_due_idx
    ON outgoing_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outgoing_deliveries_lease_idx
    ON outgoing_deliveries (locked_until) WHERE status = 'delivering';
CREATE INDEX IF NOT EXISTS outgoing_deliveries_hook_idx
    ON outgoing_deliveries (hook_id, created_at DESC);
-- Pruning walks finished deliveries by age (`gateway prune`).
CREATE INDEX IF NOT EXISTS outgoing_deliveries_finished_idx
    ON outgoing_deliveries (updated_at) WHERE status IN ('succeeded', 'failed', 'skipped');

-- Wake dispatchers when deliveries are written (delivered at commit; skipped for empty inserts,
-- so run inserts on the ingest path that match no outgoing hook notify nobody).
CREATE OR REPLACE FUNCTION hookgate_notify_delivery_due() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_deliveries) THEN
        PERFORM pg_notify('hookgate_delivery_due', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE TRIGGER outgoing_deliveries_inserted
    AFTER INSERT ON outgoing_deliveries REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION hookgate_notify_delivery_due();

-- Each attempt is a hook_requests row with hook_type = 'outgoing' (delivery_id = the delivery,
-- status_code 0 when no response came back, outcome succeeded | failed | refused).
SELECT hookgate_add_column('hook_requests', 'target_url', $$text$$);
SELECT hookgate_add_column('hook_requests', 'response_excerpt', $$text$$);
SELECT hookgate_add_column('hook_requests', 'attempt', $$integer$$);
SELECT hookgate_add_column('hook_requests', 'request_method', $$text$$);

INSERT INTO schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
-- end Outgoing hooks ---------------------------------------------------------------------------

-- Ingest performance (issue 7) -----------------------------------------------------------------
-- Stored bodies are already zstd-compressed (or incompressible): never let TOAST try pglz on
-- them, and keep rows up to a page inline instead of moving a 3 KB body into the TOAST table
-- (one heap tuple instead of a heap tuple + TOAST chunks + a TOAST index entry per request).
-- Only when not set yet: both take locks (SET STORAGE an ACCESS EXCLUSIVE one) even when they
-- change nothing.
DO $$
BEGIN
    IF (SELECT attstorage FROM pg_attribute
        WHERE attrelid = 'hook_requests'::regclass AND attname = 'body') <> 'e' THEN
        ALTER TABLE hook_requests ALTER COLUMN body SET STORAGE EXTERNAL;
    END IF;
    IF NOT coalesce((SELECT reloptions FROM pg_class WHERE oid = 'hook_requests'::regclass)
                    @> '{toast_tuple_target=8160}', false) THEN
        ALTER TABLE hook_requests SET (toast_tuple_target = 8160);
    END IF;
END;
$$;
-- end Ingest performance -----------------------------------------------------------------------

-- User lifecycle ---------------------------------------------------------------------------------
-- A disabled user (PUT /users/{id} {"is_active": false}) can neither log in nor use any token;
-- the row stays, so everything that names the user keeps its history.
SELECT hookgate_add_column('users', 'disabled_at', $$timestamptz$$);

INSERT INTO schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;
-- end User lifecycle -----------------------------------------------------------------------------

-- Re-keying without the pipeline row ------------------------------------------------------------
-- Runs inserted while a concurrency change re-keys its pipeline's queued and in-progress runs
-- (storage/concurrency.py), listed for that change to re-key too (below). That change deletes
-- its pipeline's rows before it commits; rows written during a change that failed wait for the
-- next one. Nothing here outlives a crash that matters: unlogged.
CREATE UNLOGGED TABLE IF NOT EXISTS pipeline_runs_rekey (
    pipeline_id  bigint NOT NULL,
    run_id       uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_runs_rekey_pipeline_idx ON pipeline_runs_rekey (pipeline_id);

-- The advisory lock a re-keying change holds (exclusively) on its pipeline for its transaction.
CREATE OR REPLACE FUNCTION hookgate_rekey_lock(pipeline_id bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('hookgate:rekey:' || pipeline_id, 0)
$$;

-- A concurrency change re-keying a pipeline's backlog holds its re-key lock (exclusive), not the
-- pipeline row, so that run inserts do not wait seconds for it: their runs are keyed by the
-- settings still in force (hookgate_run_before_insert) and listed here for that change to re-key
-- before it commits. The lock is taken shared (and held to commit) once per statement and
-- pipeline, so that a change waits for the inserts already past this point.
CREATE OR REPLACE FUNCTION hookgate_list_runs_for_rekey() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pipeline bigint;
BEGIN
    FOR pipeline IN
        SELECT DISTINCT n.pipeline_id FROM new_runs n WHERE n.status IN ('queued', 'in-progress')
    LOOP
        IF NOT pg_try_advisory_xact_lock_shared(hookgate_rekey_lock(pipeline)) THEN
            INSERT INTO pipeline_runs_rekey (pipeline_id, run_id)
            SELECT pipeline, n.id FROM new_runs n
            WHERE n.pipeline_id = pipeline AND n.status IN ('queued', 'in-progress');
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE TRIGGER pipeline_runs_listed_for_rekey
    AFTER INSERT ON pipeline_runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION hookgate_list_runs_for_rekey();

INSERT INTO schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;
-- end Re-keying ----------------------------------------------------------------------------------
-- Outgoing event order ---------------------------------------------------------------------------
-- Each run change's deliveries carry the next number of this sequence ("sequence" in their
-- payload). The changes of one run are made one after another, each under the run's row lock
-- and after the previous one committed, so a later change of a run always has a larger number:
-- receivers order by it the deliveries that arrive out of order (a retried earlier event lands
-- after a later one). Across runs the numbers say nothing; gaps are normal.
CREATE SEQUENCE IF NOT EXISTS outgoing_event_sequence;

INSERT INTO schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;
-- end Outgoing event order -----------------------------------------------------------------------

-- Disabled users in a mixed fleet --------------------------------------------------------------
-- Releases from before the user lifecycle (schema version 4) do not know users.disabled_at: on
-- their own they would log a disabled user in and issue tokens, and after a rollback to one
-- every disabled account would work again. No token is stored for a disabled user, whichever
-- release asks (this one refuses them before it gets here: accounts.py); disabling revokes
-- every token of the user (accounts.update_user), which older releases check too.
-- FOR SHARE: a token written while the user is being disabled waits for that change and is then
-- refused, or the change waits for it and revokes it.
CREATE OR REPLACE FUNCTION hookgate_token_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    disabled timestamptz;
BEGIN
    SELECT u.disabled_at INTO disabled FROM users u WHERE u.id = NEW.user_id FOR SHARE;
    IF disabled IS NOT NULL THEN
        RAISE EXCEPTION 'user % is disabled: no token is issued to a disabled user', NEW.user_id
            USING ERRCODE = 'HGU01';
    END IF;
    RETURN NEW;
END;
$$;
CREATE OR REPLACE TRIGGER auth_tokens_before_insert
    BEFORE INSERT ON auth_tokens
    FOR EACH ROW EXECUTE FUNCTION hookgate_token_before_insert();

INSERT INTO schema_version (version) VALUES (6) ON CONFLICT DO NOTHING;
-- end Disabled users ---------------------------------------------------------------------------

-- Outgoing secret rotation ---------------------------------------------------------------------
-- POST /hooks/outgoing/{hook_id}/secret/rotate: during the grace the dispatcher signs each
-- delivery with the new and the previous secret (two entries in webhook-signature), so that
-- receivers can switch at their own pace; sealed like secret (security/secret_box.py).
SELECT hookgate_add_column('outgoing_hooks', 'previous_secret', $$text$$);
SELECT hookgate_add_column('outgoing_hooks', 'previous_secret_expires_at', $$timestamptz$$);

INSERT INTO schema_version (version) VALUES (7) ON CONFLICT DO NOTHING;
-- end Outgoing secret rotation -----------------------------------------------------------------
