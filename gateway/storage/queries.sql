-- All SQL the gateway runs, by name. The schema lives in ../../schema.sql.

-- name: ping
-- Readiness probe.
SELECT 1;

-- name: schema_lock
-- Serialises schema application across processes starting at once.
SELECT pg_advisory_xact_lock(7283917);

-- name: schema_version
-- The highest applied schema version.
SELECT max(version) FROM schema_version;

-- Users and tokens -----------------------------------------------------------------------------

-- name: user_insert
-- Create a user; the email is unique case-insensitively.
INSERT INTO users (email, name, password_hash, is_admin)
VALUES ($1, $2, $3, $4)
RETURNING id, email, name, is_admin, created_at;

-- name: user_by_email
-- Look up a user for login.
SELECT id, email, name, password_hash, is_admin, created_at
FROM users WHERE lower(email) = lower($1);

-- name: user_by_id
-- Look up a user by id.
SELECT id, email, name, is_admin, created_at FROM users WHERE id = $1;

-- name: user_count
-- How many users exist (first-admin bootstrap).
SELECT count(*) FROM users;

-- name: user_list
-- A page of users.
SELECT id, email, name, is_admin, created_at, count(*) OVER () AS total
FROM users ORDER BY id LIMIT $1 OFFSET $2;

-- name: user_update_password_hash
-- Replace a password hash (re-hash on login when parameters change).
UPDATE users SET password_hash = $2 WHERE id = $1;

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
RETURNING t.id AS token_id, t.kind, u.id, u.email, u.name, u.is_admin, u.created_at;

-- name: token_revoke_by_hash
-- Revoke a live token by hash; returns its user id when one was revoked.
UPDATE auth_tokens SET revoked_at = now()
WHERE token_hash = $1 AND kind = $2 AND revoked_at IS NULL
  AND (expires_at IS NULL OR expires_at > now())
RETURNING user_id;

-- name: token_list_personal
-- A user's personal access tokens (never the hash).
SELECT id, name, created_at, expires_at, revoked_at, last_used_at
FROM auth_tokens WHERE user_id = $1 AND kind = 'personal' ORDER BY id;

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
