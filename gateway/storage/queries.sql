-- All SQL the gateway runs, by name. The schema lives in ../../schema.sql.

-- name: ping
-- Readiness probe.
SELECT 1;

-- name: transaction_id
-- The id of the current transaction if it wrote anything (NULL for a read-only one), read just
-- before COMMIT: if the connection is lost during COMMIT, transaction_status tells the outcome.
SELECT pg_current_xact_id_if_assigned();

-- name: transaction_status
-- committed, aborted or in progress (NULL: too old to know).
SELECT pg_xact_status($1::xid8);

-- name: transaction_end_backend
-- End the server process $2 if it still runs transaction $1 (its connection was lost during
-- COMMIT), waiting up to $3 milliseconds for it to exit; afterwards the outcome is final.
SELECT pg_terminate_backend(pid, $3::bigint)
FROM pg_stat_activity WHERE pid = $2 AND backend_xid = $1::xid8::xid;

-- name: schema_lock
-- Serialises schema application across processes starting at once.
SELECT pg_advisory_xact_lock(7283917);

-- name: schema_lock_timeout
-- How long each lock of this transaction may be waited for ($1: '1500ms'): schema.sql gives up
-- and retries rather than hold up, behind its exclusive lock request, every write of the table.
SELECT set_config('lock_timeout', $1, true);

-- name: lock_blockers
-- The sessions that hold a lock backend $1 waits for: who they are and what they are doing,
-- never their query text (it may hold data).
SELECT a.pid, a.application_name, a.state, a.usename::text,
       extract(epoch FROM now() - a.xact_start)::float8
FROM pg_stat_activity a
WHERE a.pid = ANY (pg_blocking_pids($1))
ORDER BY a.pid;

-- name: schema_digest_table_exists
-- Whether the schema_digest table exists yet (a database from before it, or an empty one).
SELECT to_regclass('schema_digest') IS NOT NULL;

-- name: schema_digests
-- The schema files applied here (their SHA-256), when each was last applied and the objects it
-- defined then (NULL when recorded by a release from before schema_digest.objects: read through
-- to_jsonb, so that this also runs on a database without that column yet).
SELECT d.sha256, d.applied_at, to_jsonb(d) -> 'objects' AS objects
FROM schema_digest d ORDER BY d.applied_at;

-- name: schema_objects
-- An md5 of the definition of every function named hookgate_* and of every trigger calling one:
-- what schema.sql defines that an older file applied over it can put back (tables, columns and
-- indexes are only ever added). One catalog query, at every start.
SELECT coalesce(jsonb_object_agg(o.name, md5(o.definition)), '{}')
FROM (
    SELECT 'function ' || p.oid::regprocedure::text AS name,
           pg_get_functiondef(p.oid) AS definition
    FROM pg_proc p
    WHERE p.pronamespace = current_schema()::text::regnamespace AND p.proname LIKE 'hookgate\_%'
    UNION ALL
    SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass), pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE NOT t.tgisinternal
      AND p.pronamespace = current_schema()::text::regnamespace AND p.proname LIKE 'hookgate\_%'
) o;

-- name: schema_digest_record
-- Remember that this schema file (its SHA-256) was applied now, and the objects ($2, from
-- schema_objects) it left.
INSERT INTO schema_digest (sha256, objects) VALUES ($1, $2)
ON CONFLICT (sha256) DO UPDATE SET objects = EXCLUDED.objects, applied_at = now();

-- name: schema_version_table_exists
-- Whether the schema_version table exists yet (an empty database).
SELECT to_regclass('schema_version') IS NOT NULL;

-- name: schema_version
-- The highest applied schema version.
SELECT max(version) FROM schema_version;

-- Users and tokens -----------------------------------------------------------------------------

-- name: user_insert
-- Create a user; the email is unique case-insensitively.
INSERT INTO users (email, name, password_hash, is_admin)
VALUES ($1, $2, $3, $4)
RETURNING id, email, name, is_admin, created_at, disabled_at;

-- name: user_by_email
-- Look up a user for login (a disabled user is not found).
SELECT id, email, name, password_hash, is_admin, created_at, disabled_at
FROM users WHERE lower(email) = lower($1) AND disabled_at IS NULL;

-- name: user_by_email_any
-- Look up a user by email, disabled or not (operator commands).
SELECT id, email, name, is_admin, created_at, disabled_at
FROM users WHERE lower(email) = lower($1);

-- name: user_by_id
-- Look up a user by id.
SELECT id, email, name, is_admin, created_at, disabled_at FROM users WHERE id = $1;

-- name: user_count
-- How many users exist (first-admin bootstrap).
SELECT count(*) FROM users;

-- name: user_list
-- A page of users (the total comes even for a page past the end; storage/paging.py).
SELECT t.total, u.id, u.email, u.name, u.is_admin, u.created_at, u.disabled_at
FROM (SELECT count(*) AS total FROM users) t
LEFT JOIN LATERAL (
    SELECT id, email, name, is_admin, created_at, disabled_at
    FROM users ORDER BY id LIMIT $1 OFFSET $2
) u ON true;

-- name: user_update_password_hash
-- Replace a password hash (re-hash on login when parameters change).
UPDATE users SET password_hash = $2 WHERE id = $1;

-- name: user_rehash_password
-- Replace a password hash with a re-computed one of the same password (a login, when the
-- parameters changed), unless it changed meanwhile: a reset must not be undone. NULL then.
UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2 RETURNING id;

-- name: user_lock_for_password_change
-- The password hash of an active user, locked against other changes (and logins, which
-- share-lock it) while one checked against it replaces it. NULL when disabled or gone.
SELECT password_hash FROM users WHERE id = $1 AND disabled_at IS NULL FOR NO KEY UPDATE;

-- name: user_lock_for_session_end
-- Lock a user's row before ending their sessions: it waits for the logins and refreshes
-- issuing them tokens (they share-lock the row, as the token insert's trigger does) and holds
-- off new ones until the revocation commits.
SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE;

-- name: user_lock_for_login
-- The password hash of an active user, share-locked while a login issues its tokens: a password
-- change or a disable waits for them, then ends them. NULL when the user is disabled or gone.
SELECT password_hash FROM users WHERE id = $1 AND disabled_at IS NULL FOR SHARE;

-- name: user_lock_for_admin_change
-- Lock the acting administrator's row and the changed user's ($1: both ids), in id order, before
-- an administrator changes a user: two administrators demoting (or disabling) each other at once
-- then take turns, and the second finds that it no longer is one, instead of both changes
-- committing and leaving no administrator; one being demoted cannot promote themselves back.
-- Id order: two such changes lock the same two rows alike. A creation locks the acting row only.
SELECT id, email, name, is_admin, created_at, disabled_at FROM users WHERE id = ANY($1::bigint[])
ORDER BY id
FOR NO KEY UPDATE;

-- name: user_update
-- Change a user's name, administrator flag, active state and password hash (NULL: unchanged);
-- disabling keeps the first disabled_at. NULL when there is no such user.
UPDATE users SET name = coalesce($2, name),
                 is_admin = coalesce($3, is_admin),
                 disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at
                                    WHEN $4 THEN NULL
                                    ELSE coalesce(disabled_at, now()) END,
                 password_hash = coalesce($5, password_hash)
WHERE id = $1
RETURNING id, email, name, is_admin, created_at, disabled_at;

-- name: token_revoke_for_user
-- Revoke every live token of the given kinds of a user; returns how many.
WITH revoked AS (
    UPDATE auth_tokens SET revoked_at = now()
    WHERE user_id = $1 AND kind = ANY($2::text[]) AND revoked_at IS NULL
    RETURNING 1
)
SELECT count(*) FROM revoked;

-- name: token_insert
-- Store a new token's hash.
INSERT INTO auth_tokens (user_id, kind, token_hash, name, expires_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, user_id, kind, name, created_at, expires_at;

-- name: token_authenticate
-- Resolve a live token hash of the given kinds to its user, marking it used.
UPDATE auth_tokens t SET last_used_at = now()
FROM users u
WHERE t.token_hash = $1 AND t.kind = ANY($2::text[]) AND t.user_id = u.id
  AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
  AND u.disabled_at IS NULL
RETURNING t.id AS token_id, t.kind, u.id, u.email, u.name, u.is_admin, u.created_at,
          u.disabled_at;

-- name: token_revoke_by_hash
-- Revoke a live token by hash; returns its user id when one was revoked.
UPDATE auth_tokens SET revoked_at = now()
WHERE token_hash = $1 AND kind = $2 AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())
RETURNING user_id;

-- name: token_lock_owner
-- Share-lock the user of a token (by hash and kind) before the token itself: a refresh or a
-- logout then takes its locks in the order a disable or a password change does (the user row,
-- then the tokens), so they cannot deadlock (the token insert's trigger share-locks the user too).
SELECT u.id FROM auth_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1 AND t.kind = $2
FOR SHARE OF u;

-- name: token_spent_refresh_owner
-- The user of a refresh token spent by a refresh before it expired (presented again: it was
-- copied). A refresh revokes it and inserts the new pair in one transaction, so a refresh
-- token of the same user was created at the very time it was revoked (now() is the
-- transaction's time); one ended by a logout or a password change has none.
SELECT t.user_id FROM auth_tokens t
WHERE t.token_hash = $1 AND t.kind = 'refresh' AND t.revoked_at IS NOT NULL
  AND t.expires_at > now()
  AND EXISTS (SELECT 1 FROM auth_tokens n
              WHERE n.user_id = t.user_id AND n.kind = 'refresh' AND n.created_at = t.revoked_at);

-- name: token_retire_refresh
-- A reused refresh token, once its alarm has ended the user's sessions: it expires now, so a
-- copy presented again ends nothing more (token_spent_refresh_owner skips expired ones).
UPDATE auth_tokens SET expires_at = now() WHERE token_hash = $1 AND kind = 'refresh';

-- name: token_personal_expiry
-- The personal token with this hash, with its expiry (NULL: never); no row for another kind.
SELECT expires_at FROM auth_tokens WHERE token_hash = $1 AND kind = 'personal';

-- name: user_lock_for_personal_token
-- Lock a user's row before counting their live personal tokens and adding one: creations for
-- the same user then take turns, so two cannot both take the last place under
-- [auth] max_personal_tokens. (The count is a statement of its own, run once this lock is held:
-- a count in this statement would be read from before the lock wait, missing the token a
-- creation it waited for had just added.) Taken without a limit too, before the bearer token
-- is locked (token_lock_live_bearer): the user row, then the tokens, as a password change or a
-- disable locks them.
SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE;

-- name: token_lock_live_bearer
-- Share-lock the bearer token (access or personal, by hash) that is creating a personal token,
-- if it is still live; no row once it was revoked or expired. Taken after the user's row (the
-- order of a disable or a password change: the user row, then the tokens), right before the
-- insert: a revocation that committed since the token authenticated the request refuses the
-- creation, and one still to come waits for it. Without it, a stolen token revoked while its
-- request was on its way would mint a live personal token after its revocation was answered.
SELECT id FROM auth_tokens
WHERE token_hash = $1 AND kind IN ('access', 'personal') AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())
FOR SHARE;

-- name: token_count_live_personal
-- How many personal tokens of a user are live (neither revoked nor expired).
SELECT count(*) FROM auth_tokens
WHERE user_id = $1 AND kind = 'personal' AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now());

-- name: token_personal_live
-- The personal token with this hash when it is live (neither revoked nor expired); no row else.
SELECT id FROM auth_tokens
WHERE token_hash = $1 AND kind = 'personal' AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now());

-- name: token_list_personal
-- A user's personal access tokens (never the hash).
SELECT id, name, created_at, expires_at, revoked_at, last_used_at
FROM auth_tokens WHERE user_id = $1 AND kind = 'personal' ORDER BY id;

-- name: tokens_prune_dead
-- Delete up to $2 tokens dead (expired, or revoked) since before $1 (gateway prune). A revoked
-- refresh token that has not expired stays: presented again, it is the alarm of a copied
-- token (token_spent_refresh_owner). Oldest first: dead tokens are the old ones.
WITH doomed AS (
    SELECT id FROM auth_tokens
    WHERE expires_at < $1
       OR (revoked_at < $1 AND (kind <> 'refresh' OR expires_at < now()))
    ORDER BY id
    LIMIT $2
), deleted AS (
    DELETE FROM auth_tokens t USING doomed d WHERE t.id = d.id RETURNING 1
)
SELECT count(*) FROM deleted;

-- name: token_revoke_personal
-- Revoke one of a user's personal access tokens.
UPDATE auth_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND user_id = $2 AND kind = 'personal'
RETURNING id;

-- Permissions ----------------------------------------------------------------------------------

-- name: permissions_in_environment
-- The union of a user's role permissions in one environment (via their teams); NULL when the
-- user has no team linked to it (the environment is invisible to them).
SELECT array_agg(DISTINCT p) FILTER (WHERE p IS NOT NULL) AS permissions, count(*) > 0 AS linked
FROM environment_teams et
JOIN team_members tm ON tm.team_id = et.team_id AND tm.user_id = $2
JOIN roles r ON r.id = et.role_id
LEFT JOIN LATERAL unnest(r.permissions) AS p ON true
WHERE et.environment_id = $1;

-- name: visible_environment_ids
-- Environments a user can see: those a team of theirs is linked to.
SELECT DISTINCT et.environment_id
FROM environment_teams et JOIN team_members tm ON tm.team_id = et.team_id
WHERE tm.user_id = $1;

-- Management: environments, pipelines, incoming hooks, request history, runs (read side) -------
-- Lists return one row even for an empty page (total set, other columns NULL), so the total is
-- known for the Link header without a second round trip.

-- name: environment_insert
-- Create an environment.
INSERT INTO environments (name, description) VALUES ($1, $2)
RETURNING id, name, description, created_at;

-- name: environment_by_id
-- One environment.
SELECT id, name, description, created_at FROM environments WHERE id = $1;

-- name: environment_list
-- A page of environments, restricted to the given ids unless $1 is NULL (administrators).
SELECT t.total, e.id, e.name, e.description, e.created_at
FROM (SELECT count(*) AS total FROM environments
      WHERE $1::bigint[] IS NULL OR id = ANY($1::bigint[])) t
LEFT JOIN LATERAL (
    SELECT id, name, description, created_at FROM environments
    WHERE $1::bigint[] IS NULL OR id = ANY($1::bigint[])
    ORDER BY id LIMIT $2 OFFSET $3
) e ON true;

-- name: pipeline_insert
-- Create a pipeline in an environment.
INSERT INTO pipelines (environment_id, name, resource_type, resource_id, action_type)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, environment_id, name, resource_type, resource_id, action_type, created_at,
          updated_at;

-- name: pipeline_by_id
-- One pipeline.
SELECT id, environment_id, name, resource_type, resource_id, action_type, created_at, updated_at
FROM pipelines WHERE id = $1;

-- name: pipeline_list
-- A page of an environment's pipelines.
SELECT t.total, p.id, p.environment_id, p.name, p.resource_type, p.resource_id, p.action_type,
       p.created_at, p.updated_at
FROM (SELECT count(*) AS total FROM pipelines WHERE environment_id = $1) t
LEFT JOIN LATERAL (
    SELECT * FROM pipelines WHERE environment_id = $1 ORDER BY id LIMIT $2 OFFSET $3
) p ON true;

-- name: pipeline_update
-- Change the given fields of a pipeline (NULL keeps the current value).
UPDATE pipelines SET
    name = coalesce($2, name),
    resource_type = coalesce($3, resource_type),
    resource_id = coalesce($4, resource_id),
    action_type = coalesce($5, action_type),
    updated_at = now()
WHERE id = $1
RETURNING id, environment_id, name, resource_type, resource_id, action_type, created_at,
          updated_at;

-- name: pipeline_delete
-- Delete a pipeline (its hooks go with it; runs and history stay). Waits for runs being
-- inserted against it (the insert trigger holds its row FOR SHARE); runs inserted after it are
-- cancelled by that trigger. Touches no run: its unfinished runs are cancelled next, in chunks
-- and transactions of their own (pipeline_cancel_runs), so that the row is held only briefly.
DELETE FROM pipelines WHERE id = $1 RETURNING id;

-- name: pipeline_cancel_runs
-- Cancel up to $2 queued and up to $2 in-progress runs of deleted pipeline $1: nothing could
-- ever claim them (claims join the pipeline), and prune only removes finished runs. An executor
-- holding one gets a 409 when it reports. Returns how many runs were found and how many
-- cancelled (fewer when some finished meanwhile); none found: none is left.
WITH found AS (
    (SELECT id FROM pipeline_runs WHERE pipeline_id = $1 AND status = 'queued' LIMIT $2)
    UNION ALL
    (SELECT id FROM pipeline_runs WHERE pipeline_id = $1 AND status = 'in-progress' LIMIT $2)
), cancelled AS (
    UPDATE pipeline_runs r
    SET status = 'cancelled', finished_at = now(), lease_token = NULL, lease_expires_at = NULL,
        message = 'cancelled: the pipeline was deleted', updated_at = now()
    FROM found f
    WHERE r.id = f.id AND r.status IN ('queued', 'in-progress')
    RETURNING 1
)
SELECT (SELECT count(*) FROM found) AS found, (SELECT count(*) FROM cancelled) AS cancelled;

-- name: incoming_hook_insert
-- Create an incoming hook; returns the hook (with its secret, shown once) and its environment.
WITH h AS (
    INSERT INTO incoming_hooks (id, pipeline_id, name, active, action_type, requires_secret,
                                secret_algorithm, secret_header_name, secret, trigger_when,
                                settings, created_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    RETURNING *
)
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.secret, h.trigger_when,
       h.settings, h.previous_secret_expires_at, h.created_at, h.updated_at
FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: incoming_hook_by_id
-- One incoming hook without its secrets, with the environment that owns it.
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.trigger_when, h.settings,
       h.previous_secret_expires_at, h.created_at, h.updated_at
FROM incoming_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.id = $1;

-- name: incoming_hook_lock
-- One incoming hook without its secrets, locked for a read-modify-write update or a rotation:
-- FOR NO KEY UPDATE, the lock the UPDATE itself takes (FOR UPDATE, a delete's, would also stop
-- the foreign key checks of rows that refer to the hook).
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.trigger_when, h.settings,
       h.previous_secret_expires_at, h.created_at, h.updated_at
FROM incoming_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.id = $1
FOR NO KEY UPDATE OF h;

-- name: incoming_hook_full_by_id
-- One incoming hook including its secrets (replay re-evaluates requests against it).
SELECT h.*, p.environment_id,
       extract(epoch FROM h.previous_secret_expires_at - now())::float8
           AS previous_secret_seconds_left
FROM incoming_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.id = $1;

-- name: incoming_hook_list_for_pipeline
-- Every incoming hook of a pipeline, without secrets, oldest first.
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.trigger_when, h.settings,
       h.previous_secret_expires_at, h.created_at, h.updated_at
FROM incoming_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.pipeline_id = $1
ORDER BY h.created_at, h.id;

-- name: incoming_hook_update
-- Change the given fields of a hook (NULL keeps the current value; settings keys are merged,
-- and a limit given as null is removed: a hook without limits has no such key, whether it
-- never had one or had one taken away).
WITH h AS (
    UPDATE incoming_hooks SET
        name = coalesce($2, name),
        active = coalesce($3, active),
        action_type = coalesce($4, action_type),
        requires_secret = coalesce($5, requires_secret),
        secret_algorithm = coalesce($6, secret_algorithm),
        secret_header_name = coalesce($7, secret_header_name),
        trigger_when = coalesce($8, trigger_when),
        settings = (settings || coalesce($9, '{}'::jsonb))
            - ARRAY(SELECT given.key FROM jsonb_each(coalesce($9, '{}'::jsonb)) AS given
                    WHERE given.key IN ('rate_limit', 'allowed_ips')
                      AND given.value = 'null'::jsonb),
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.trigger_when, h.settings,
       h.previous_secret_expires_at, h.created_at, h.updated_at
FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: incoming_hook_rotate_secret
-- Replace the secret; the old one stays valid for $3 seconds (0: not at all).
WITH h AS (
    UPDATE incoming_hooks SET
        secret = $2,
        previous_secret = CASE WHEN $3::integer > 0 THEN secret END,
        previous_secret_expires_at =
            CASE WHEN $3::integer > 0 THEN now() + make_interval(secs => $3::integer) END,
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT h.id, h.pipeline_id, p.environment_id, h.name, h.active, h.action_type,
       h.requires_secret, h.secret_algorithm, h.secret_header_name, h.secret, h.trigger_when,
       h.settings, h.previous_secret_expires_at, h.created_at, h.updated_at
FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: incoming_hook_delete
-- Delete an incoming hook (its request history stays).
DELETE FROM incoming_hooks WHERE id = $1 RETURNING id;

-- name: hook_request_list
-- A page of one hook's requests, newest first, optionally only one outcome (no headers/body).
SELECT t.total, r.id, r.hook_id, r.hook_type, r.received_at, r.client_ip, r.body_size,
       r.body_encoding, r.outcome, r.status_code, r.message, r.run_id, r.delivery_id,
       r.latency_ms, r.retry_of
FROM (SELECT count(*) AS total FROM hook_requests
      WHERE hook_id = $1 AND hook_type = $2 AND ($3::text IS NULL OR outcome = $3)) t
LEFT JOIN LATERAL (
    SELECT * FROM hook_requests
    WHERE hook_id = $1 AND hook_type = $2 AND ($3::text IS NULL OR outcome = $3)
    ORDER BY received_at DESC, id DESC LIMIT $4 OFFSET $5
) r ON true;

-- name: hook_request_by_id
-- One request with headers and body, plus the pipeline/environment of its hook when the hook
-- still exists (history outlives hooks).
SELECT r.*, coalesce(h.pipeline_id, o.pipeline_id) AS pipeline_id, p.environment_id
FROM hook_requests r
LEFT JOIN incoming_hooks h ON h.id = r.hook_id AND r.hook_type = 'incoming'
LEFT JOIN outgoing_hooks o ON o.id = r.hook_id AND r.hook_type = 'outgoing'  -- issue 6
LEFT JOIN pipelines p ON p.id = coalesce(h.pipeline_id, o.pipeline_id)
WHERE r.id = $1;

-- name: run_list_for_pipeline
-- A page of a pipeline's runs, newest first, optionally only one status.
SELECT t.total, r.id, r.pipeline_id, r.hook_id, r.request_id, r.status, r.variables,
       r.attempt, r.message, r.exit_code, r.queued_at, r.started_at, r.finished_at
FROM (SELECT count(*) AS total FROM pipeline_runs
      WHERE pipeline_id = $1 AND ($2::text IS NULL OR status = $2)) t
LEFT JOIN LATERAL (
    SELECT * FROM pipeline_runs
    WHERE pipeline_id = $1 AND ($2::text IS NULL OR status = $2)
    ORDER BY queued_at DESC, id DESC LIMIT $3 OFFSET $4
) r ON true;

-- name: run_by_id
-- One run with its output and the environment of its pipeline (NULL once the pipeline is gone).
SELECT r.id, r.pipeline_id, r.hook_id, r.request_id, r.delivery_id, r.status, r.variables,
       r.attempt, r.message, r.output, r.exit_code, r.queued_at, r.started_at, r.finished_at,
       p.environment_id
FROM pipeline_runs r LEFT JOIN pipelines p ON p.id = r.pipeline_id
WHERE r.id = $1;

-- Access: roles, teams, members and environment links -----------------------------------------

-- name: role_insert
-- Create a role (names are unique).
INSERT INTO roles (name, permissions) VALUES ($1, $2::text[])
RETURNING id, name, permissions, created_at;

-- name: role_list
-- A page of roles with the total count (storage/paging.py).
SELECT t.total, r.id, r.name, r.permissions, r.created_at
FROM (SELECT count(*) AS total FROM roles) t
LEFT JOIN LATERAL (
    SELECT id, name, permissions, created_at FROM roles ORDER BY id LIMIT $1 OFFSET $2
) r ON true;

-- name: role_by_id
-- One role.
SELECT id, name, permissions, created_at FROM roles WHERE id = $1;

-- name: role_update
-- Replace a role's name and permissions.
UPDATE roles SET name = $2, permissions = $3::text[] WHERE id = $1
RETURNING id, name, permissions, created_at;

-- name: role_lock
-- Lock a role before deleting it, so no link to it can be added meanwhile.
SELECT id FROM roles WHERE id = $1 FOR UPDATE;

-- name: role_linked_environments
-- Environments whose team links use a role (a role in use cannot be deleted).
SELECT DISTINCT environment_id FROM environment_teams WHERE role_id = $1 ORDER BY environment_id;

-- name: role_delete
-- Delete a role.
DELETE FROM roles WHERE id = $1 RETURNING id;

-- name: team_insert
-- Create a team (names are unique).
INSERT INTO teams (name) VALUES ($1) RETURNING id, name, created_at, 0::bigint AS member_count;

-- name: team_list
-- A page of teams with their member counts and the total count (storage/paging.py).
SELECT c.total, t.id, t.name, t.created_at, t.member_count
FROM (SELECT count(*) AS total FROM teams) c
LEFT JOIN LATERAL (
    SELECT t.id, t.name, t.created_at,
           (SELECT count(*) FROM team_members m WHERE m.team_id = t.id) AS member_count
    FROM teams t ORDER BY t.id LIMIT $1 OFFSET $2
) t ON true;

-- name: team_by_id
-- One team with its member count.
SELECT t.id, t.name, t.created_at,
       (SELECT count(*) FROM team_members m WHERE m.team_id = t.id) AS member_count
FROM teams t WHERE t.id = $1;

-- name: team_delete
-- Delete a team; its memberships and environment links go with it.
DELETE FROM teams WHERE id = $1 RETURNING id;

-- name: team_member_add
-- Add a user to a team; nothing is returned when they already are a member.
INSERT INTO team_members (team_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
RETURNING team_id, user_id;

-- name: team_member_list
-- A page of a team's members with the total count (storage/paging.py).
SELECT c.total, u.id, u.email, u.name, u.is_admin, u.created_at, u.disabled_at
FROM (SELECT count(*) AS total FROM team_members WHERE team_id = $1) c
LEFT JOIN LATERAL (
    SELECT u.id, u.email, u.name, u.is_admin, u.created_at, u.disabled_at
    FROM team_members m JOIN users u ON u.id = m.user_id
    WHERE m.team_id = $1 ORDER BY u.id LIMIT $2 OFFSET $3
) u ON true;

-- name: team_member_remove
-- Remove a user from a team.
DELETE FROM team_members WHERE team_id = $1 AND user_id = $2 RETURNING user_id;

-- name: env_team_environment_exists
-- Whether an environment exists (links name one).
SELECT EXISTS (SELECT 1 FROM environments WHERE id = $1);

-- name: env_team_link
-- Link a team to an environment with a role; re-linking changes the role.
INSERT INTO environment_teams (environment_id, team_id, role_id) VALUES ($1, $2, $3)
ON CONFLICT (environment_id, team_id) DO UPDATE SET role_id = EXCLUDED.role_id
RETURNING (xmax = 0) AS created;

-- name: env_team_unlink
-- Remove a team's link to an environment.
DELETE FROM environment_teams WHERE environment_id = $1 AND team_id = $2 RETURNING team_id;

-- name: env_team_list
-- A page of the teams linked to an environment, with their roles, and the total count
-- (storage/paging.py).
SELECT c.total, l.environment_id, l.team_id, l.team_name, l.role_id, l.role_name, l.permissions
FROM (SELECT count(*) AS total FROM environment_teams WHERE environment_id = $1) c
LEFT JOIN LATERAL (
    SELECT et.environment_id, t.id AS team_id, t.name AS team_name,
           r.id AS role_id, r.name AS role_name, r.permissions
    FROM environment_teams et
    JOIN teams t ON t.id = et.team_id
    JOIN roles r ON r.id = et.role_id
    WHERE et.environment_id = $1 ORDER BY t.id LIMIT $2 OFFSET $3
) l ON true;

-- name: env_team_one
-- One team's link to an environment, with its role.
SELECT et.environment_id, t.id AS team_id, t.name AS team_name,
       r.id AS role_id, r.name AS role_name, r.permissions
FROM environment_teams et
JOIN teams t ON t.id = et.team_id
JOIN roles r ON r.id = et.role_id
WHERE et.environment_id = $1 AND et.team_id = $2;

-- Ingest (gateway/storage/ingest.py) -----------------------------------------------------------

-- name: ingest_hook_by_id
-- The incoming hook definition the ingest cache compiles (with secrets). The previous secret's
-- grace period is given as the seconds it has left by the database's clock, which also set its
-- start: a gateway whose clock is off keeps it for exactly the period granted.
SELECT id, pipeline_id, name, active, action_type, requires_secret, secret_algorithm,
       secret_header_name, secret, previous_secret,
       extract(epoch FROM previous_secret_expires_at - now())::float8
           AS previous_secret_seconds_left,
       trigger_when, settings
FROM incoming_hooks WHERE id = $1;

-- name: ingest_runs_by_delivery
-- The existing runs of (hook id, delivery id) pairs: the originals of duplicate deliveries.
SELECT r.hook_id, r.delivery_id, r.id
FROM pipeline_runs r
JOIN unnest($1::uuid[], $2::text[]) AS k (hook_id, delivery_id)
  ON r.hook_id = k.hook_id AND r.delivery_id = k.delivery_id;

-- name: ingest_insert_requests
-- Group commit: the history rows of a batch of requests (accepted, duplicate, skipped, rejected).
-- $3: each request's age in seconds when the statement was sent; received_at is the database's
-- clock less that age (no gateway host's clock decides it: see ingest_insert_batch).
INSERT INTO hook_requests (id, hook_id, received_at, client_ip, headers, body, body_encoding,
                           body_size, outcome, status_code, message, run_id, delivery_id,
                           latency_ms, retry_of)
SELECT q.id, q.hook_id, statement_timestamp() - make_interval(secs => q.age), q.client_ip,
       q.headers, q.body, q.body_encoding, q.body_size, q.outcome, q.status_code, q.message,
       q.run_id, q.delivery_id, q.latency_ms, q.retry_of
FROM unnest($1::uuid[], $2::uuid[], $3::float8[], $4::text[]::inet[], $5::jsonb[],
            $6::bytea[], $7::text[], $8::integer[], $9::text[], $10::smallint[],
            $11::text[], $12::uuid[], $13::text[], $14::real[], $15::uuid[])
     AS q (id, hook_id, age, client_ip, headers, body, body_encoding, body_size, outcome,
           status_code, message, run_id, delivery_id, latency_ms, retry_of);

-- name: ingest_insert_batch
-- Group commit in one statement: queue the runs ($1-$7; repeats of a (hook, delivery id) are
-- skipped) and write the history rows ($8-$22, client ip as text) of every request whose run was
-- inserted or that has no run. A run's queued_at is its request's received_at, so that runs
-- are ordered by arrival (within a batch, and across batches written in parallel) rather than
-- by the start of the transaction that wrote them. Both are the database's clock less the
-- request's age when the statement was sent ($7, $10: seconds, measured by the gateway's
-- monotonic clock), so instances whose clocks disagree still order runs by arrival. Returns one row: the runs inserted, and
-- those of them whose pipeline has an active outgoing hook (the caller then writes the outbox
-- rows in the same transaction). Duplicates get their history row from the caller once their original run is
-- known. With $23 true the statement is run as its own transaction (no BEGIN/COMMIT round
-- trips), and it aborts, writing nothing, when the batch needs more statements: a run not
-- inserted (a repeated delivery) or an outgoing hook to notify.
WITH runs AS (
    INSERT INTO pipeline_runs (id, pipeline_id, hook_id, request_id, delivery_id, variables,
                               queued_at)
    SELECT u.id, u.pipeline_id, u.hook_id, u.request_id, u.delivery_id, u.variables,
           statement_timestamp() - make_interval(secs => u.age)
    FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[], $6::jsonb[],
                $7::float8[]) AS u (id, pipeline_id, hook_id, request_id, delivery_id, variables,
                                    age)
    ON CONFLICT (hook_id, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING
    RETURNING id, pipeline_id
), requests AS (
    INSERT INTO hook_requests (id, hook_id, received_at, client_ip, headers, body, body_encoding,
                               body_size, outcome, status_code, message, run_id, delivery_id,
                               latency_ms, retry_of)
    SELECT q.id, q.hook_id, statement_timestamp() - make_interval(secs => q.age),
           q.client_ip::inet, q.headers, q.body,
           q.body_encoding, q.body_size, q.outcome, q.status_code, q.message, q.run_id,
           q.delivery_id, q.latency_ms, q.retry_of
    FROM unnest($8::uuid[], $9::uuid[], $10::float8[], $11::text[], $12::jsonb[],
                $13::bytea[], $14::text[], $15::integer[], $16::text[], $17::smallint[],
                $18::text[], $19::uuid[], $20::text[], $21::real[], $22::uuid[])
         AS q (id, hook_id, age, client_ip, headers, body, body_encoding, body_size,
               outcome, status_code, message, run_id, delivery_id, latency_ms, retry_of)
    WHERE q.run_id IS NULL OR q.run_id IN (SELECT id FROM runs)
), inserted AS (
    SELECT r.id, EXISTS (SELECT 1 FROM outgoing_hooks h
                         WHERE h.pipeline_id = r.pipeline_id AND h.active) AS has_outgoing
    FROM runs r
)
-- An aggregate: exactly one row, so the check below runs even when no run was inserted.
SELECT coalesce(array_agg(i.id), '{}') AS inserted,
       coalesce(array_agg(i.id) FILTER (WHERE i.has_outgoing), '{}') AS with_outgoing,
       CASE WHEN $23::boolean THEN hookgate_batch_fits_one_statement(
           count(*) = cardinality($1::uuid[]) AND NOT coalesce(bool_or(i.has_outgoing), false)
       ) END AS fits_one_statement
FROM inserted i;
-- name: ingest_writer_backend
-- Who a new group-commit connection is on the server: its process id and start time (a process
-- id alone may be reused by a later connection once this one is gone).
SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid();

-- name: ingest_end_lost_writer
-- After a writer connection was lost with its commit possibly under way: end its server process,
-- if it still exists, and wait up to $3 milliseconds for it to exit. No row: it had already
-- gone; false: it is still there (the batch's outcome stays unknown). Once it has gone, its
-- transaction either committed or never will.
SELECT pg_terminate_backend(pid, $3::bigint) AS ended
FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2;

-- name: ingest_requests_stored
-- The history rows that exist among a batch's request ids (every request of a batch has one,
-- written in the batch's transaction): any row means the batch committed.
SELECT id, run_id, outcome FROM hook_requests WHERE id = ANY($1::uuid[]);
-- end Ingest -----------------------------------------------------------------------------------

-- Runs: claim, lease, status, concurrency, prune (gateway/storage/runs.py) --------------------
-- Every statement that changes a run's status returns the run (r.*) plus previous_status, so
-- storage/runs.py can pass each change to on_status_change in the same transaction.

-- name: runs_enqueue
-- Queue runs (manual runs, tests); the insert trigger records the key and applies skip-if-running.
INSERT INTO pipeline_runs (id, pipeline_id, variables, hook_id, request_id, delivery_id)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[], $4::uuid[], $5::uuid[], $6::text[])
RETURNING *, NULL::text AS previous_status;

-- name: runs_expire_leases
-- Up to $3 in-progress runs whose lease expired: back to queued, or failed at max_attempts.
-- lost_by: who held the lease (the row's claimed_by is cleared).
WITH expired AS (
    SELECT r.id, r.claimed_by, coalesce(p.max_attempts, 1) AS max_attempts
    FROM pipeline_runs r LEFT JOIN pipelines p ON p.id = r.pipeline_id
    WHERE r.status = 'in-progress' AND r.lease_expires_at < now()
      AND ($1::bigint IS NULL OR r.pipeline_id = $1)
      AND ($2::bigint[] IS NULL OR p.environment_id = ANY($2::bigint[]))
    ORDER BY r.lease_expires_at
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE pipeline_runs r SET
    status = CASE WHEN r.attempt >= e.max_attempts THEN 'failed' ELSE 'queued' END,
    message = CASE WHEN r.attempt >= e.max_attempts
                   THEN format('lease expired after %s attempt%s', r.attempt,
                               CASE WHEN r.attempt = 1 THEN '' ELSE 's' END)
                   ELSE format('lease expired on attempt %s; queued again', r.attempt) END,
    finished_at = CASE WHEN r.attempt >= e.max_attempts THEN now() END,
    -- No token survives: a late report of the executor that lost the lease must get its 409,
    -- not pass for a repeat of an outcome it recorded (see runs.report_status).
    lease_token = NULL,
    lease_expires_at = NULL,
    claimed_by = NULL,
    updated_at = now()
FROM expired e
WHERE r.id = e.id
RETURNING r.*, 'in-progress'::text AS previous_status, e.claimed_by AS lost_by;

-- name: runs_cancel_superseded
-- cancel-in-progress: cancel up to $3 queued/in-progress runs that a newer active run of the
-- same key supersedes ($4: only that run, for a heartbeat).
WITH doomed AS (
    SELECT r.id, r.status AS previous_status, n.id AS newer_id
    FROM pipeline_runs r
    JOIN pipelines p ON p.id = r.pipeline_id AND p.concurrency_policy = 'cancel-in-progress'
    JOIN LATERAL (
        SELECT n.id FROM pipeline_runs n
        WHERE n.pipeline_id = r.pipeline_id
          AND n.concurrency_key_value = r.concurrency_key_value
          AND n.status IN ('queued', 'in-progress')
          AND (n.queued_at, n.id) > (r.queued_at, r.id)
        ORDER BY n.queued_at DESC, n.id DESC
        LIMIT 1
    ) n ON true
    WHERE r.status IN ('queued', 'in-progress') AND r.concurrency_key_value IS NOT NULL
      AND ($1::bigint IS NULL OR r.pipeline_id = $1)
      AND ($2::bigint[] IS NULL OR p.environment_id = ANY($2::bigint[]))
      AND ($4::uuid IS NULL OR r.id = $4)
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE pipeline_runs r SET
    status = 'cancelled',
    message = format('superseded by run %s', d.newer_id),
    finished_at = now(),
    -- No token survives: the lease holder's own cancelled report must get its 409, not pass
    -- for a repeat of an outcome it recorded (see runs.report_status).
    lease_token = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM doomed d
WHERE r.id = d.id
RETURNING r.*, d.previous_status;

-- name: runs_lock_keys
-- queue / skip-if-running: try to take the transaction-scoped advisory lock of the $3 oldest
-- keys that have queued runs and none in progress; returns the keys this claimer may start.
SELECT k.pipeline_id, k.key
FROM (
    SELECT r.pipeline_id, r.concurrency_key_value AS key, min(r.queued_at) AS oldest
    FROM pipeline_runs r JOIN pipelines p ON p.id = r.pipeline_id
    WHERE r.status = 'queued' AND r.concurrency_key_value IS NOT NULL
      AND p.concurrency_policy IN ('queue', 'skip-if-running')
      AND ($1::bigint IS NULL OR r.pipeline_id = $1)
      AND ($2::bigint[] IS NULL OR p.environment_id = ANY($2::bigint[]))
      AND NOT EXISTS (
          SELECT 1 FROM pipeline_runs o
          WHERE o.pipeline_id = r.pipeline_id AND o.status = 'in-progress'
            AND o.concurrency_key_value = r.concurrency_key_value)
    GROUP BY r.pipeline_id, r.concurrency_key_value
    ORDER BY oldest
    LIMIT $3
) k
WHERE pg_try_advisory_xact_lock(
    hashtextextended('hookgate:run-key:' || k.pipeline_id || ':' || k.key, 0));

-- name: runs_claim
-- Claim up to $3 queued runs, oldest first: in-progress, new lease token, lease of $4 seconds,
-- attempt + 1. A keyed run is claimable under queue/skip-if-running only when its key is in
-- the locked set ($5, $6), it is the oldest queued run of its key and none is in progress;
-- under cancel-in-progress only when it is the newest active run of its key.
WITH locked_keys AS (
    SELECT * FROM unnest($5::bigint[], $6::text[]) AS k (pipeline_id, key)
), candidates AS (
    SELECT r.id
    FROM pipeline_runs r JOIN pipelines p ON p.id = r.pipeline_id
    WHERE r.status = 'queued'
      AND ($1::bigint IS NULL OR r.pipeline_id = $1)
      AND ($2::bigint[] IS NULL OR p.environment_id = ANY($2::bigint[]))
      AND (
          r.concurrency_key_value IS NULL
          OR (p.concurrency_policy = 'cancel-in-progress'
              AND NOT EXISTS (
                  SELECT 1 FROM pipeline_runs n
                  WHERE n.pipeline_id = r.pipeline_id
                    AND n.concurrency_key_value = r.concurrency_key_value
                    AND n.status IN ('queued', 'in-progress')
                    AND (n.queued_at, n.id) > (r.queued_at, r.id)))
          OR (p.concurrency_policy IN ('queue', 'skip-if-running')
              AND EXISTS (
                  SELECT 1 FROM locked_keys k
                  WHERE k.pipeline_id = r.pipeline_id AND k.key = r.concurrency_key_value)
              AND NOT EXISTS (
                  SELECT 1 FROM pipeline_runs o
                  WHERE o.pipeline_id = r.pipeline_id AND o.status = 'in-progress'
                    AND o.concurrency_key_value = r.concurrency_key_value)
              AND NOT EXISTS (
                  SELECT 1 FROM pipeline_runs o
                  WHERE o.pipeline_id = r.pipeline_id AND o.status = 'queued'
                    AND o.concurrency_key_value = r.concurrency_key_value
                    AND (o.queued_at, o.id) < (r.queued_at, r.id)))
      )
    ORDER BY r.queued_at, r.id
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE pipeline_runs r SET
    status = 'in-progress',
    attempt = r.attempt + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $4::double precision),
    started_at = now(),
    claimed_by = $7,
    message = '',
    output = '',
    exit_code = NULL,
    updated_at = now()
FROM candidates c
WHERE r.id = c.id
RETURNING r.*, 'queued'::text AS previous_status;

-- name: runs_skip_running
-- skip-if-running: end up to $3 queued runs whose key already has a run in progress.
WITH doomed AS (
    SELECT r.id, x.id AS running_id, p.concurrency_key AS key_name
    FROM pipeline_runs r
    JOIN pipelines p ON p.id = r.pipeline_id AND p.concurrency_policy = 'skip-if-running'
    JOIN LATERAL (
        SELECT o.id FROM pipeline_runs o
        WHERE o.pipeline_id = r.pipeline_id AND o.status = 'in-progress'
          AND o.concurrency_key_value = r.concurrency_key_value
        LIMIT 1
    ) x ON true
    WHERE r.status = 'queued' AND r.concurrency_key_value IS NOT NULL
      AND ($1::bigint IS NULL OR r.pipeline_id = $1)
      AND ($2::bigint[] IS NULL OR p.environment_id = ANY($2::bigint[]))
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE pipeline_runs r SET
    status = 'skipped',
    message = format('skipped: run %s with the same %s is in progress', d.running_id, d.key_name),
    finished_at = now(),
    updated_at = now()
FROM doomed d
WHERE r.id = d.id
RETURNING r.*, 'queued'::text AS previous_status;

-- name: runs_lock_one
-- One run locked for a status change, with whether its lease is still live (database clock).
SELECT r.*, coalesce(r.lease_expires_at > now(), false) AS lease_live
FROM pipeline_runs r WHERE r.id = $1
FOR UPDATE;

-- name: runs_finish
-- Move a locked run to $2 (completed, failed or cancelled) with message, output and exit code.
-- The lease token stays only when the lease holder ($7, checked by the caller) reported it, so
-- that its retry is known for a repeat; a cancel without the lease clears it (as above).
UPDATE pipeline_runs SET
    status = $2,
    message = coalesce($3, message),
    output = coalesce($4, output),
    exit_code = coalesce($5, exit_code),
    finished_at = now(),
    lease_token = $7::uuid,
    lease_expires_at = NULL,
    updated_at = now()
WHERE id = $1
RETURNING *, $6::text AS previous_status;

-- name: runs_release
-- Hand a locked in-progress run back to the queue without using up its attempt.
UPDATE pipeline_runs SET
    status = 'queued',
    attempt = greatest(attempt - 1, 0),
    message = coalesce($2, ''),
    lease_token = NULL,
    lease_expires_at = NULL,
    claimed_by = NULL,
    started_at = NULL,
    updated_at = now()
WHERE id = $1
RETURNING *, 'in-progress'::text AS previous_status;

-- name: runs_heartbeat
-- Extend a live lease to $3 seconds from now; no row unless token, status and lease all match.
UPDATE pipeline_runs SET
    lease_expires_at = now() + make_interval(secs => $3::double precision),
    updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'in-progress' AND lease_expires_at > now()
RETURNING id, pipeline_id, status, attempt, lease_expires_at;

-- name: runs_pipeline_settings
-- A pipeline's environment and concurrency settings.
SELECT id, environment_id, concurrency_policy, concurrency_key, max_attempts
FROM pipelines WHERE id = $1;

-- name: runs_rekey_lock
-- The pipeline's re-key lock: waits for the run inserts in flight (a statement trigger on the
-- insert holds it shared); later ones list their runs in pipeline_runs_rekey instead of waiting.
SELECT pg_advisory_xact_lock(hookgate_rekey_lock($1));

-- name: runs_rekey_chunk
-- Re-key by key $2 the next $5 of pipeline $1's queued runs after ($3, $4) in (queued_at, id)
-- order, writing only those whose key value changes but locking them all, as the whole-backlog
-- update did: until the change commits, no claim may start (or sweep) a run by key values that
-- are about to change around it. In-progress runs are left to runs_rekey_in_progress, at the
-- end: locked from the first chunk on, their heartbeats and status reports would wait for the
-- whole change. Returns how many were read (none: no run is left; fewer than $5 need not mean
-- that, a run may have been claimed while it was waited for), how many changed, and the last
-- one read (where the next chunk starts).
WITH chunk AS (
    SELECT r.id, r.queued_at,
           r.concurrency_key_value IS DISTINCT FROM
               hookgate_concurrency_key(r.variables, $2::text) AS changes
    FROM pipeline_runs r
    WHERE r.pipeline_id = $1 AND r.status = 'queued'
      AND (r.queued_at, r.id) > ($3::timestamptz, $4::uuid)
    ORDER BY r.queued_at, r.id
    LIMIT $5
    FOR UPDATE
), changed AS (
    UPDATE pipeline_runs r
    SET concurrency_key_value = hookgate_concurrency_key(r.variables, $2::text)
    FROM chunk c
    WHERE r.id = c.id AND c.changes
    RETURNING 1
), last AS (
    SELECT queued_at, id FROM chunk ORDER BY queued_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM chunk) AS read, (SELECT count(*) FROM changed) AS changed,
       (SELECT queued_at FROM last) AS last_queued_at, (SELECT id FROM last) AS last_id;

-- name: runs_rekey_in_progress
-- Re-key by key $2 pipeline $1's in-progress runs (at most its concurrency: a short statement),
-- locking them all until the change commits, after its queued runs (runs_rekey_chunk): those
-- claimed while the chunks ran are in-progress by now. Returns how many were read and changed.
WITH running AS (
    SELECT r.id,
           r.concurrency_key_value IS DISTINCT FROM
               hookgate_concurrency_key(r.variables, $2::text) AS changes
    FROM pipeline_runs r
    WHERE r.pipeline_id = $1 AND r.status = 'in-progress'
    FOR UPDATE
), changed AS (
    UPDATE pipeline_runs r
    SET concurrency_key_value = hookgate_concurrency_key(r.variables, $2::text)
    FROM running c
    WHERE r.id = c.id AND c.changes
    RETURNING 1
)
SELECT (SELECT count(*) FROM running) AS read, (SELECT count(*) FROM changed) AS changed;

-- name: runs_set_concurrency
-- Change a pipeline's concurrency settings (waits for runs being inserted against the old row:
-- the insert trigger holds it FOR SHARE). Taken after the backlog was re-keyed, so that the row
-- is held only for the few runs inserted meanwhile (runs_rekey_inserted_meanwhile).
UPDATE pipelines SET
    concurrency_policy = $2, concurrency_key = $3, max_attempts = $4, updated_at = now()
WHERE id = $1
RETURNING id, environment_id, concurrency_policy, concurrency_key, max_attempts;

-- name: runs_rekey_inserted_meanwhile
-- Re-key by the pipeline's current key the runs the inserts listed while the backlog
-- was re-keyed, and clear the list; returns how many changed.
WITH listed AS (
    DELETE FROM pipeline_runs_rekey WHERE pipeline_id = $1 RETURNING run_id
), changed AS (
    UPDATE pipeline_runs r
    SET concurrency_key_value = hookgate_concurrency_key(r.variables, p.concurrency_key)
    FROM pipelines p
    WHERE p.id = $1 AND r.pipeline_id = p.id AND r.id IN (SELECT run_id FROM listed)
      AND r.status IN ('queued', 'in-progress')
      AND r.concurrency_key_value IS DISTINCT FROM
          hookgate_concurrency_key(r.variables, p.concurrency_key)
    RETURNING 1
)
SELECT count(*) FROM changed;

-- name: runs_active_count
-- How many queued and in-progress runs a pipeline has (for messages about its backlog).
SELECT count(*) FROM pipeline_runs WHERE pipeline_id = $1 AND status IN ('queued', 'in-progress');

-- name: runs_execute_environment_ids
-- Environments where user $1 holds permission $2 through one of their teams.
SELECT DISTINCT et.environment_id
FROM environment_teams et
JOIN team_members tm ON tm.team_id = et.team_id AND tm.user_id = $1
JOIN roles ro ON ro.id = et.role_id
WHERE $2::text = ANY(ro.permissions);

-- name: runs_cancel_orphaned
-- Cancel unfinished runs whose pipeline is gone: written by a batch already in flight when the
-- pipeline was deleted (its delete could not see them, the insert trigger saw the pipeline).
WITH cancelled AS (
    UPDATE pipeline_runs r
    SET status = 'cancelled', finished_at = now(), lease_token = NULL, lease_expires_at = NULL,
        message = 'cancelled: the pipeline was deleted', updated_at = now()
    WHERE r.status IN ('queued', 'in-progress')
      AND NOT EXISTS (SELECT 1 FROM pipelines p WHERE p.id = r.pipeline_id)
    RETURNING 1
)
SELECT count(*) FROM cancelled;

-- name: runs_prune_finished
-- Delete up to $2 runs that finished (completed/failed/cancelled/skipped) before $1.
WITH doomed AS (
    SELECT id FROM pipeline_runs
    WHERE finished_at < $1 AND status IN ('completed', 'failed', 'cancelled', 'skipped')
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM pipeline_runs r USING doomed d WHERE r.id = d.id RETURNING 1
)
SELECT count(*) FROM deleted;

-- name: hook_requests_drop_bodies
-- Clear the stored bodies of up to $2 hook requests received before $1 and not before $3 (a
-- keyset: the caller passes the last received_at of the previous batch). The row stays (outcome,
-- headers, size, run); replay then answers that the body is not stored.
WITH doomed AS (
    SELECT id, received_at FROM hook_requests
    WHERE received_at < $1 AND received_at >= $3 AND body IS NOT NULL
    ORDER BY received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), cleared AS (
    UPDATE hook_requests h SET body = NULL, body_encoding = NULL
    FROM doomed d WHERE h.id = d.id
    RETURNING d.received_at
)
SELECT count(*) AS cleared, max(received_at) AS last FROM cleared;

-- name: runs_prune_requests
-- Delete up to $2 hook requests received before $1 whose run is gone or that never had one.
WITH doomed AS (
    SELECT h.id FROM hook_requests h
    WHERE h.received_at < $1
      AND (h.run_id IS NULL
           OR NOT EXISTS (SELECT 1 FROM pipeline_runs r WHERE r.id = h.run_id))
    ORDER BY h.received_at
    LIMIT $2
), deleted AS (
    DELETE FROM hook_requests h USING doomed d WHERE h.id = d.id RETURNING 1
)
SELECT count(*) FROM deleted;
-- end Runs -------------------------------------------------------------------------------------

-- Outgoing hooks (gateway/storage/outgoing.py) -------------------------------------------------

-- name: outgoing_hook_insert
-- Create an outgoing hook; returns it with the environment that owns it.
WITH h AS (
    INSERT INTO outgoing_hooks (id, pipeline_id, name, active, target_url, events, trigger_when,
                                settings, requires_secret, secret, created_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    RETURNING *
)
SELECT h.*, p.environment_id FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: outgoing_hook_by_id
-- One outgoing hook (with its secret; the API masks it) and its environment.
SELECT h.*, p.environment_id
FROM outgoing_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.id = $1;

-- name: outgoing_hook_lock
-- One outgoing hook locked for a read-modify-write update: FOR NO KEY UPDATE, the lock the
-- UPDATE itself takes. FOR UPDATE (a delete's) also stopped every delivery written for the
-- hook meanwhile (its foreign key check): the run state changes and ingest batches of the
-- pipeline waited for the update to commit.
SELECT h.*, p.environment_id
FROM outgoing_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.id = $1
FOR NO KEY UPDATE OF h;

-- name: outgoing_hook_list_for_pipeline
-- Every outgoing hook of a pipeline, oldest first.
SELECT h.*, p.environment_id
FROM outgoing_hooks h JOIN pipelines p ON p.id = h.pipeline_id
WHERE h.pipeline_id = $1
ORDER BY h.created_at, h.id;

-- name: outgoing_hook_update
-- Replace a hook's definition; re-activating it clears the failure count and disabled reason.
WITH h AS (
    UPDATE outgoing_hooks SET
        name = $2, active = $3, target_url = $4, events = $5, trigger_when = $6, settings = $7,
        requires_secret = $8, secret = $9,
        -- A new secret (or none) ends the grace of the one a rotation replaced.
        previous_secret = CASE WHEN $9 IS NOT DISTINCT FROM secret THEN previous_secret END,
        previous_secret_expires_at =
            CASE WHEN $9 IS NOT DISTINCT FROM secret THEN previous_secret_expires_at END,
        consecutive_failures = CASE WHEN $3 AND NOT active THEN 0 ELSE consecutive_failures END,
        disabled_reason = CASE WHEN $3 THEN NULL ELSE disabled_reason END,
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT h.*, p.environment_id FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: outgoing_hook_rotate_secret
-- Replace the secret of a hook locked by the caller; the old one keeps signing (next to the
-- new one) for $3 seconds (0: not at all).
WITH h AS (
    UPDATE outgoing_hooks SET
        secret = $2,
        previous_secret = CASE WHEN $3::integer > 0 THEN secret END,
        previous_secret_expires_at =
            CASE WHEN $3::integer > 0 THEN now() + make_interval(secs => $3::integer) END,
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT h.*, p.environment_id FROM h JOIN pipelines p ON p.id = h.pipeline_id;

-- name: outgoing_hook_delete
-- Delete an outgoing hook and its pending deliveries (the request history stays).
DELETE FROM outgoing_hooks WHERE id = $1 RETURNING id;

-- name: outgoing_enqueue_run_events
-- The outbox write, in the transaction of the state change: one pending delivery per active
-- hook of the run's pipeline subscribed to the event (or to run.status_changed), carrying the
-- event context as it is now (a hook deleted meanwhile gets none). $1 run ids, $2 previous
-- statuses, $3 new statuses (NULL: the run's current status). Each change takes one number of outgoing_event_sequence (the same for
-- every hook it is sent to; nextval in a subquery's target list: once per change), by which
-- receivers order a run's events (schema.sql).
INSERT INTO outgoing_deliveries (hook_id, run_id, event, payload)
SELECT h.id, r.id, e.event, jsonb_build_object(
    'event', e.event,
    'timestamp', now(),
    'sequence', c.sequence,
    'run', jsonb_build_object(
        'id', r.id, 'pipeline_id', r.pipeline_id, 'status', e.status,
        'previous_status', c.previous_status, 'variables', r.variables, 'attempt', r.attempt,
        'message', r.message, 'exit_code', r.exit_code,
        'triggered_from', CASE WHEN r.hook_id IS NULL THEN NULL ELSE jsonb_build_object(
            'type', 'incoming_hook', 'hook_id', r.hook_id, 'request_id', r.request_id) END,
        'queued_at', r.queued_at, 'started_at', r.started_at, 'finished_at', r.finished_at),
    'pipeline', jsonb_build_object(
        'id', p.id, 'name', p.name, 'action_type', p.action_type,
        'environment_id', p.environment_id, 'resource_type', p.resource_type,
        'resource_id', p.resource_id),
    'hook', jsonb_build_object('id', h.id, 'name', h.name))
FROM (
    SELECT u.*, nextval('outgoing_event_sequence') AS sequence
    FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u (run_id, previous_status, status)
) AS c
JOIN pipeline_runs r ON r.id = c.run_id
JOIN pipelines p ON p.id = r.pipeline_id
CROSS JOIN LATERAL (
    SELECT s.status, CASE s.status
        WHEN 'queued' THEN 'run.queued'
        WHEN 'in-progress' THEN 'run.started'
        WHEN 'completed' THEN 'run.completed'
        WHEN 'failed' THEN 'run.failed'
        ELSE 'run.status_changed' END AS event
    FROM (SELECT coalesce(c.status, r.status) AS status) s
) e
JOIN outgoing_hooks h ON h.pipeline_id = r.pipeline_id AND h.active
    AND h.events && ARRAY[e.event, 'run.status_changed']
-- The lock the foreign key check takes anyway, taken here: a hook deleted (or changed) by a
-- transaction that commits meanwhile is then skipped (or seen as changed), where the check
-- would fail the whole state change.
FOR KEY SHARE OF h;

-- name: outgoing_claim
-- Claim up to $1 due deliveries (pending and due, or delivering with an expired lease), oldest
-- due first, skipping hooks in $3 (their targets are busy) and taking at most $4 per hook, or
-- for the hooks in $5 the number in $6 (their target's free slots): a busy target's backlog is
-- not claimed only to be handed back. Per environment the same: none of the environments in
-- $8 (busy), at most $9 of any other (NULL: no limit), or for those in $10 the number in $11.
-- Never the deliveries in $7: the claimer still holds their answer and is recording it (past
-- their lease while the database was away). Lease of $2 seconds, attempt + 1. Candidates are
-- the $1 * 8 oldest due rows (a bounded scan: the rest wait for the next round). Returns each
-- with the hook definition it is sent with and its environment.
WITH candidates AS (
    SELECT d.id, d.hook_id, d.next_attempt_at FROM outgoing_deliveries d
    WHERE ((d.status = 'pending' AND d.next_attempt_at <= now())
           OR (d.status = 'delivering' AND d.locked_until < now()))
      AND NOT (d.hook_id = ANY($3::uuid[]))
      -- The busy environments' hooks, listed once (a hashed subplan): their backlog is
      -- passed over without a lookup per row.
      AND d.hook_id NOT IN (SELECT h.id FROM outgoing_hooks h
                            JOIN pipelines p ON p.id = h.pipeline_id
                            WHERE p.environment_id = ANY($8::bigint[]))
      AND NOT (d.id = ANY($7::uuid[]))
    ORDER BY d.next_attempt_at
    LIMIT $1 * 8
), per_hook AS (
    SELECT c.id, c.next_attempt_at, p.environment_id,
           row_number() OVER (PARTITION BY c.hook_id ORDER BY c.next_attempt_at) AS n,
           coalesce(room.free, $4::integer) AS allowed
    FROM candidates c
    JOIN outgoing_hooks h ON h.id = c.hook_id
    JOIN pipelines p ON p.id = h.pipeline_id
    LEFT JOIN unnest($5::uuid[], $6::integer[]) AS room (hook_id, free)
        ON room.hook_id = c.hook_id
), ranked AS (
    -- Ranked within the environment among the rows its hooks' limits let through, so that
    -- one hook's backlog does not use up the environment's room.
    SELECT r.id, r.next_attempt_at,
           row_number() OVER (PARTITION BY r.environment_id ORDER BY r.next_attempt_at) AS n,
           coalesce(env_room.free, $9::integer) AS allowed
    FROM per_hook r
    LEFT JOIN unnest($10::bigint[], $11::integer[]) AS env_room (environment_id, free)
        ON env_room.environment_id = r.environment_id
    WHERE r.n <= r.allowed
), due AS (
    -- Locked here, not in candidates (no FOR UPDATE next to a window function); the due test
    -- is evaluated again on the locked row, so one another dispatcher took meanwhile drops out.
    SELECT d.id FROM outgoing_deliveries d JOIN ranked r ON r.id = d.id
    WHERE (r.allowed IS NULL OR r.n <= r.allowed)
      AND ((d.status = 'pending' AND d.next_attempt_at <= now())
           OR (d.status = 'delivering' AND d.locked_until < now()))
    ORDER BY r.next_attempt_at
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE outgoing_deliveries d SET
    status = 'delivering',
    attempt = d.attempt + 1,
    locked_until = now() + make_interval(secs => $2::double precision),
    updated_at = now()
FROM due, outgoing_hooks h, pipelines p
WHERE d.id = due.id AND h.id = d.hook_id AND p.id = h.pipeline_id
RETURNING d.id, d.hook_id, d.run_id, d.event, d.payload, d.attempt, d.retry_of,
          p.environment_id,
          h.active AS hook_active, h.name AS hook_name, h.target_url, h.trigger_when,
          h.events AS hook_events, h.settings, h.requires_secret, h.secret,
          h.previous_secret, h.previous_secret_expires_at,
          extract(epoch FROM h.previous_secret_expires_at - now())::float8
              AS previous_secret_seconds_left,
          h.updated_at AS hook_updated_at;

-- name: outgoing_release
-- Give claimed deliveries back without using up an attempt ($1 ids, $2 their claimed attempt),
-- due again at once ($3 = 0) or $3 seconds from now.
UPDATE outgoing_deliveries d SET
    status = 'pending', attempt = greatest(d.attempt - 1, 0), locked_until = NULL,
    next_attempt_at = CASE WHEN $3::double precision > 0
                           THEN now() + make_interval(secs => $3::double precision)
                           ELSE d.next_attempt_at END,
    updated_at = now()
FROM unnest($1::uuid[], $2::integer[]) AS c (id, attempt)
WHERE d.id = c.id AND d.attempt = c.attempt AND d.status = 'delivering';

-- name: outgoing_next_due
-- Seconds until the next delivery is due (<= 0: now), ignoring the hooks in $1 and those of
-- the environments in $3 (busy: outgoing_claim passes them over, and a finished delivery wakes
-- the dispatcher) and the leases of the deliveries in $2 (the caller is recording them, see
-- outgoing_claim); NULL when none.
WITH busy AS (
    SELECT unnest($1::uuid[]) AS hook_id
    UNION ALL
    SELECT h.id FROM outgoing_hooks h JOIN pipelines p ON p.id = h.pipeline_id
    WHERE p.environment_id = ANY($3::bigint[])
)
SELECT extract(epoch FROM least(
    (SELECT min(next_attempt_at) FROM outgoing_deliveries
     WHERE status = 'pending' AND hook_id NOT IN (SELECT hook_id FROM busy)),
    (SELECT min(locked_until) FROM outgoing_deliveries
     WHERE status = 'delivering' AND NOT (id = ANY($2::uuid[]))
       AND hook_id NOT IN (SELECT hook_id FROM busy))
) - clock_timestamp())::double precision;

-- name: outgoing_delivery_finish
-- Record the outcome of a claimed attempt: $3 succeeded | failed | pending (retry after $4
-- seconds). No row when the claim was lost (the lease expired and another dispatcher took it).
UPDATE outgoing_deliveries SET
    status = $3,
    next_attempt_at = CASE WHEN $3 = 'pending'
                           THEN now() + make_interval(secs => $4::double precision)
                           ELSE next_attempt_at END,
    locked_until = NULL,
    last_status_code = $5,
    last_error = $6,
    updated_at = now()
WHERE id = $1 AND attempt = $2 AND status = 'delivering'
RETURNING id;

-- name: outgoing_delivery_skip
-- End a claimed delivery without sending it (hook inactive, conditions not met).
UPDATE outgoing_deliveries SET
    status = 'skipped', attempt = greatest(attempt - 1, 0), locked_until = NULL,
    last_error = $3, updated_at = now()
WHERE id = $1 AND attempt = $2 AND status = 'delivering';

-- name: outgoing_request_insert
-- One attempt in the request history (hook_type 'outgoing').
INSERT INTO hook_requests (id, hook_id, hook_type, received_at, headers, body, body_encoding,
                           body_size, outcome, status_code, message, run_id, delivery_id,
                           latency_ms, retry_of, target_url, response_excerpt, attempt,
                           request_method)
VALUES ($1, $2, 'outgoing', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
        $18);

-- name: outgoing_hook_count_result
-- Count a finished delivery against its hook: success resets the run of failures, a failure
-- extends it. Returns the new count and whether the hook is still active.
UPDATE outgoing_hooks SET
    consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END
WHERE id = $1
RETURNING consecutive_failures, active;

-- name: outgoing_hook_disable
-- Disable a hook (410 Gone, or too many failed deliveries in a row), saying why.
UPDATE outgoing_hooks SET active = false, disabled_reason = $2, updated_at = now()
WHERE id = $1 AND active
RETURNING id;

-- name: outgoing_request_list
-- A page of an outgoing hook's attempts, newest first, optionally only one outcome (no bodies).
SELECT t.total, r.id, r.hook_id, r.hook_type, r.received_at, r.request_method, r.target_url,
       r.headers, r.body_size, r.body_encoding, r.outcome, r.status_code, r.message,
       r.response_excerpt, r.run_id, r.delivery_id, r.attempt, r.latency_ms, r.retry_of,
       r.client_ip
FROM (SELECT count(*) AS total FROM hook_requests
      WHERE hook_id = $1 AND hook_type = 'outgoing' AND ($2::text IS NULL OR outcome = $2)) t
LEFT JOIN LATERAL (
    SELECT * FROM hook_requests
    WHERE hook_id = $1 AND hook_type = 'outgoing' AND ($2::text IS NULL OR outcome = $2)
    ORDER BY received_at DESC, id DESC LIMIT $3 OFFSET $4
) r ON true;

-- name: outgoing_delivery_by_id
-- One delivery with its hook's pipeline, environment and whether the hook is active.
SELECT d.*, h.pipeline_id, h.active AS hook_active, p.environment_id
FROM outgoing_deliveries d
JOIN outgoing_hooks h ON h.id = d.hook_id
JOIN pipelines p ON p.id = h.pipeline_id
WHERE d.id = $1;

-- name: outgoing_redeliver
-- A manual redelivery: a new pending delivery of the same event snapshot, retry_of = $3.
INSERT INTO outgoing_deliveries (id, hook_id, run_id, event, payload, retry_of)
SELECT $1, hook_id, run_id, event, payload, $3 FROM outgoing_deliveries WHERE id = $2
RETURNING id, hook_id, run_id, event, status, next_attempt_at, retry_of, created_at;

-- name: outgoing_delivery_list
-- A page of an outgoing hook's deliveries, newest first, optionally only one status (no
-- payloads).
SELECT t.total, d.id, d.hook_id, d.run_id, d.event, d.status, d.attempt, d.next_attempt_at,
       d.last_status_code, d.last_error, d.retry_of, d.created_at, d.updated_at
FROM (SELECT count(*) AS total FROM outgoing_deliveries
      WHERE hook_id = $1 AND ($2::text IS NULL OR status = $2)) t
LEFT JOIN LATERAL (
    SELECT * FROM outgoing_deliveries WHERE hook_id = $1 AND ($2::text IS NULL OR status = $2)
    ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4
) d ON true;
-- name: outgoing_prune_finished
-- Delete up to $2 deliveries that finished (succeeded, failed, skipped) before $1.
WITH doomed AS (
    SELECT id FROM outgoing_deliveries
    WHERE status IN ('succeeded', 'failed', 'skipped') AND updated_at < $1
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM outgoing_deliveries d USING doomed x WHERE d.id = x.id RETURNING 1
)
SELECT count(*) FROM deleted;
-- end Outgoing hooks ---------------------------------------------------------------------------

-- Secrets at rest (operations, issue 8; gateway/storage/secret_rotation.py) -------------------

-- name: secrets_incoming_page
-- Incoming hooks after id $1 with a secret not sealed under prefix $2 (the primary key's); $3 max.
SELECT id, secret, previous_secret
FROM incoming_hooks
WHERE id > $1
  AND ((secret <> '' AND NOT starts_with(secret, $2))
       OR (previous_secret <> '' AND NOT starts_with(previous_secret, $2)))
ORDER BY id
LIMIT $3;

-- name: secrets_incoming_update
-- Store re-encrypted secrets, each only if the row still holds what was read (else skipped).
UPDATE incoming_hooks h
SET secret = u.secret, previous_secret = u.previous_secret
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS u(id, secret, previous_secret, old_secret, old_previous)
WHERE h.id = u.id
  AND h.secret IS NOT DISTINCT FROM u.old_secret
  AND h.previous_secret IS NOT DISTINCT FROM u.old_previous
RETURNING h.id;

-- name: secrets_outgoing_page
-- Outgoing hooks after id $1 whose secret or previous secret is not sealed under prefix $2, or
-- that have request headers (which of them are sensitive, and so sealed, is decided in
-- Python); $3 at most.
SELECT id, secret, previous_secret, settings
FROM outgoing_hooks
WHERE id > $1
  AND ((secret <> '' AND NOT starts_with(secret, $2))
       OR (previous_secret <> '' AND NOT starts_with(previous_secret, $2))
       OR jsonb_typeof(settings -> 'request_headers') = 'array'
          AND jsonb_array_length(settings -> 'request_headers') > 0)
ORDER BY id
LIMIT $3;

-- name: secrets_outgoing_update
-- Store re-encrypted secrets and settings, each only if the row still holds what was read
-- (else skipped).
UPDATE outgoing_hooks h
SET secret = u.secret, previous_secret = u.previous_secret, settings = u.settings
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
            $7::jsonb[])
    AS u(id, secret, previous_secret, old_secret, old_previous, settings, old_settings)
WHERE h.id = u.id AND h.secret IS NOT DISTINCT FROM u.old_secret
  AND h.previous_secret IS NOT DISTINCT FROM u.old_previous
  AND h.settings = u.old_settings
RETURNING h.id;

-- name: secrets_key_usage
-- Stored secrets per location and key id ('' = plaintext), for `gateway keys status`.
SELECT location, key_id, count(*) AS secrets
FROM (
    SELECT 'incoming_hooks.secret' AS location, secret AS value FROM incoming_hooks
    UNION ALL
    SELECT 'incoming_hooks.previous_secret', previous_secret FROM incoming_hooks
    UNION ALL
    SELECT 'outgoing_hooks.secret', secret FROM outgoing_hooks
    UNION ALL
    SELECT 'outgoing_hooks.previous_secret', previous_secret FROM outgoing_hooks
    UNION ALL
    -- Sealed values of sensitive request headers (plain ones are not secrets).
    SELECT 'outgoing_hooks.settings.request_headers', e.header ->> 'value'
    FROM outgoing_hooks o
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(o.settings -> 'request_headers') = 'array'
             THEN o.settings -> 'request_headers' ELSE '[]'::jsonb END) AS e(header)
    WHERE starts_with(e.header ->> 'value', 'enc:')
) s
CROSS JOIN LATERAL (
    SELECT CASE WHEN starts_with(s.value, 'enc:v1:') THEN split_part(s.value, ':', 3)
                ELSE '' END AS key_id
) k
WHERE s.value <> ''
GROUP BY location, key_id
ORDER BY location, key_id;
-- name: outgoing_unsealed_header_names
-- Names of outgoing request headers whose values are stored unsealed, per hook (the caller
-- keeps the sensitive ones: written before the sensitive-header rule covered them, they stay
-- plaintext until `gateway keys rotate` or the hook's next update seals them).
SELECT e.header ->> 'name' AS name
FROM outgoing_hooks o
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(o.settings -> 'request_headers') = 'array'
         THEN o.settings -> 'request_headers' ELSE '[]'::jsonb END) AS e(header)
WHERE NOT starts_with(coalesce(e.header ->> 'value', ''), 'enc:')
  AND coalesce(e.header ->> 'value', '') <> '';
-- end Secrets at rest --------------------------------------------------------------------------
