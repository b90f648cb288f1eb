-- hookgate schema: the whole PostgreSQL schema in one idempotent file.
-- Applied by `gateway migrate` and at start-up under an advisory lock, so every statement must be
-- safe to run again (IF NOT EXISTS / OR REPLACE). Bump schema_version when the shape changes.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

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
