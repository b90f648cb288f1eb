"""Behind a real load balancer: nginx (deploy/nginx.conf) in front of two `gateway serve`
instances (deploy/config.instance.toml) sharing one PostgreSQL database — nothing lost or doubled.

One cluster for the module (starting it costs a few seconds); every test makes its own
environment, pipeline and hooks. Clients connect from distinct loopback addresses (127.0.0.3,
127.0.0.4; all of 127.0.0.0/8 is loopback on Linux) while nginx reaches the instances from
127.0.0.2 (proxy_bind), the only trusted proxy — the realistic setup where sender and proxy
differ; any other local process (127.0.0.1) is a client like the senders.
The failover tests stop instance B (starting a new one first when needed), so they run last.
Figures are printed (also without -s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from gateway.security.secret_keys import new_key_line
from tests.acceptance.lb_client import Api, client_from, trigger, until
from tests.acceptance.lb_helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Cluster,
    Instance,
    Nginx,
    Ports,
    login,
    start_instance,
    stop_instance,
)
from tests.acceptance.lb_load import (
    check_nothing_lost_or_doubled,
    hook_entries,
    load_while_stopping_b,
    served_by,
    until_nginx_routes_to_b,
)
from tests.acceptance.live_gateway import fresh_database
from tests.acceptance.process_helpers import free_port

# Hook definition changes reach the other instance through LISTEN/NOTIFY; the cache TTL
# (hooks.cache_ttl = 60 s in the instance config) could never explain a change seen this soon.
PROPAGATION_LIMIT = 1.0
DISPATCH_RUNS = 24


@pytest.fixture(scope="module")
def cluster(
    server_dsn: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A fresh database with the schema, instances A and B on it, nginx in front."""
    with fresh_database(server_dsn, template_database) as dsn:
        yield from _cluster_on(dsn, tmp_path_factory)


def _cluster_on(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ports = Ports.allocate()
    env = {
        "GATEWAY_DATABASE_DSN": dsn,
        "GATEWAY_SERVER_PUBLIC_URL": f"http://127.0.0.1:{ports.public}",
        "GATEWAY_SECURITY_SECRET_KEYS": new_key_line("lbtest"),  # the same on both
        "GATEWAY_SERVER_SHUTDOWN_TIMEOUT": "5",
        "GATEWAY_OUTGOING_ALLOW_PRIVATE_TARGETS": "true",  # the receiver is on loopback
        "GATEWAY_OUTGOING_POLL_INTERVAL": "0.5",
    }
    instances: list[Instance] = []
    nginx: Nginx | None = None
    try:
        # One after the other: each applies the (idempotent) schema at start-up.
        bootstrap = {"GATEWAY_ADMIN_EMAIL": ADMIN_EMAIL, "GATEWAY_ADMIN_PASSWORD": ADMIN_PASSWORD}
        instances.append(
            start_instance("A", ports.a_ingest, ports.a_management, {**env, **bootstrap})
        )
        instances.append(start_instance("B", ports.b_ingest, ports.b_management, env))
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), ports)
        token = login(ports.internal)  # through nginx's internal management server
        yield Cluster(ports, dsn, env, nginx, instances[0], instances[1], token, instances)
    finally:
        if nginx is not None:
            nginx.stop()
        for instance in instances:  # the cluster appends replacements of B here
            stop_instance(instance)


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> str:
    """Print figures to the terminal even when output is captured; return the line."""
    line = f"[load balancer] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    with capsys.disabled():
        print("\n" + line)
    return line


async def test_public_listener_exposes_only_ingest(cluster: Cluster) -> None:
    async with client_from("127.0.0.3") as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        _, hook = await a.seed_hook()
        public = cluster.public_url
        hook_path = f"/hooks/incoming/{hook['id']}"
        assert hook["url"] == public + hook_path  # public_url: what senders see

        status, headers, body = await trigger(
            session, public + hook_path, hook["secret"], extra_headers={"X-Request-Id": "lb-1"}
        )
        assert status == 202, body
        assert headers["x-request-id"] == "lb-1"  # passed through nginx and echoed
        status, headers, _ = await trigger(session, public + hook_path, hook["secret"])
        logged = [e["request_id"] for e in await hook_entries(cluster, hook["id"], 2)]
        assert status == 202 and headers["x-request-id"] == logged[-1]  # nginx's $request_id

        for path in ("/healthz", "/readyz"):
            async with session.get(public + path) as response:
                assert response.status == 200, path
        # Management routes and metrics are not public; the hook URL only takes POST.
        for method, path in (
            ("POST", "/users/login"),
            ("GET", "/environments"),
            ("GET", "/metrics"),
            ("POST", f"{hook_path}/secret/rotate"),
            ("GET", f"{hook_path}/requests"),
        ):
            async with session.request(method, public + path) as response:
                assert response.status == 404, (method, path, response.status)
                assert (await response.json())["message"] == "not found"
        async with session.get(public + hook_path) as response:
            assert response.status == 405 and response.headers["Allow"] == "POST"
        # client_max_body_size 1m = max_body_bytes: the same 413 from nginx and the gateway.
        too_big = b"x" * (1_048_576 + 1)
        for url in (public + hook_path, f"http://127.0.0.1:{cluster.a.ingest_port}{hook_path}"):
            async with session.post(url, data=io.BytesIO(too_big)) as response:
                assert response.status == 413, url
        # The instance's ingest listener has no management routes at all.
        async with session.post(f"http://127.0.0.1:{cluster.a.ingest_port}/users/login") as r:
            assert r.status == 404
        # The internal server proxies the whole management API.
        internal = Api(session, cluster.internal_url, cluster.token)
        await internal.call("GET", f"/hooks/incoming/{hook['id']}", expect=200)


async def test_a_status_report_over_1_mib_passes_the_internal_server(cluster: Cluster) -> None:
    """POST /runs/{id}/status takes up to 16 MiB in the gateway (an executor's long output):
    nginx's internal server must not cap it at the 1 MiB of the other management routes."""
    async with client_from("127.0.0.3") as session:
        internal = Api(session, cluster.internal_url, cluster.token)
        pipeline_id, hook = await internal.seed_hook()
        path = f"/hooks/incoming/{hook['id']}"
        status, _, body = await trigger(session, cluster.public_url + path, hook["secret"])
        assert status == 202, body
        _, [run] = await internal.call(
            "POST", "/runs/claim", {"pipeline_id": pipeline_id}, expect=200
        )
        output = "x" * (2 * 1_048_576) + "the end"
        report = {
            "status": "completed",
            "lease_token": run["lease_token"],
            "exit_code": 0,
            "output": output,
        }
        async with session.post(
            f"{cluster.internal_url}/runs/{run['id']}/status",
            data=io.BytesIO(orjson.dumps(report)),  # large: streamed, not one raw write
            headers=internal.headers,
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["status"] == "completed"
        # Any other management body reaches the gateway up to 1 MiB, kept in nginx's memory
        # (its temporary directory may be out of reach of nginx's workers: a 500) ...
        async with session.post(
            f"{cluster.internal_url}/environments",
            data=io.BytesIO(orjson.dumps({"name": "big", "description": "y" * 300_000})),
            headers=internal.headers,
        ) as response:
            assert response.status == 422, await response.text()  # the gateway's answer
        # ... and is refused by nginx above.
        async with session.put(
            f"{cluster.internal_url}/pipelines/{pipeline_id}",
            data=io.BytesIO(orjson.dumps({"description": "y" * 1_048_576})),
            headers=internal.headers,
        ) as response:
            assert response.status == 413
            message = (await response.json())["message"]
            assert message.startswith("request body is larger than 1 MiB"), message


async def test_hook_changes_through_a_are_enforced_by_b(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with client_from("127.0.0.3") as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        _, hook = await a.seed_hook()
        hook_id, first_secret = hook["id"], hook["secret"]
        path = f"/hooks/incoming/{hook_id}"
        at_b = f"http://127.0.0.1:{cluster.b.ingest_port}{path}"

        # Created through A, triggerable through B at once: directly, and through nginx,
        # which alternates between the instances.
        status, _, body = await trigger(session, at_b, first_secret)
        assert status == 202, body
        for number in range(4):
            status, _, body = await trigger(
                session, cluster.public_url + path, first_secret, number=number
            )
            assert status == 202, body
        entries = await hook_entries(cluster, hook_id, 4)
        assert {served_by(cluster, e) for e in entries} == {"A", "B"}

        async def b_answers(expected: int, secret: str) -> bool:
            return (await trigger(session, at_b, secret))[0] == expected

        seconds: dict[str, float] = {}

        async def enforced(what: str, expected: int, secret: str) -> None:
            seconds[what] = await until(
                lambda: b_answers(expected, secret),
                PROPAGATION_LIMIT,
                f"B answering {expected} after {what} through A",
            )

        await a.call("PUT", path, {"active": False}, expect=200)
        await enforced("deactivate", 403, first_secret)
        await a.call("PUT", path, {"active": True}, expect=200)
        await enforced("reactivate", 202, first_secret)

        _, rotated = await a.call(
            "POST", f"{path}/secret/rotate", {"grace_period_seconds": 3600}, expect=200
        )
        second_secret = rotated["secret"]
        await enforced("rotate (new secret)", 202, second_secret)
        assert await b_answers(202, first_secret)  # the old one, within its grace period

        _, rotated = await a.call(
            "POST", f"{path}/secret/rotate", {"grace_period_seconds": 0}, expect=200
        )
        await enforced("rotate without grace (old secret)", 401, second_secret)
        assert await b_answers(202, rotated["secret"])

        await a.call("DELETE", path, expect=204)
        await enforced("delete", 404, rotated["secret"])
        status, _, _ = await trigger(session, cluster.public_url + path, rotated["secret"])
        assert status == 404
    report(capsys, "propagation A -> B (s)", {k: f"{v:.3f}" for k, v in seconds.items()})


async def _recorded_ip(api: Api, hook_id: str, delivery_id: str) -> tuple[str, dict[str, Any]]:
    """The client_ip (and headers) recorded for one delivery, read back through the API."""
    _, rows = await api.call("GET", f"/hooks/incoming/{hook_id}/requests?per_page=100", expect=200)
    [row] = [r for r in rows if r["delivery_id"] == delivery_id]
    _, detail = await api.call("GET", f"/hook-requests/{row['id']}", expect=200)
    return detail["client_ip"], detail["headers"]


@pytest.mark.parametrize("source", ["127.0.0.4", "127.0.0.1"])  # a sender; a local process
async def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(
    cluster: Cluster, source: str
) -> None:
    """Only nginx (127.0.0.2) is trusted: not a sender, nor a process on the instances' host
    (an SSH tunnel to a management port arrives from 127.0.0.1 too)."""
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with client_from(source) as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        _, hook = await a.seed_hook()
        for instance in (cluster.a, cluster.b):
            delivery = str(uuid.uuid4())
            url = f"http://127.0.0.1:{instance.ingest_port}/hooks/incoming/{hook['id']}"
            status, _, body = await trigger(
                session, url, hook["secret"], delivery_id=delivery, extra_headers=forged
            )
            assert status == 202, body
            ip, _ = await _recorded_ip(a, hook["id"], delivery)
            assert ip == source, f"instance {instance.name} recorded {ip}"


async def _link_scheme(session: Any, base_url: str, token: str, proto: str | None) -> str:
    """The scheme of the pagination Link a management list answers (X-Forwarded-Proto sent)."""
    headers = {"Authorization": f"Bearer {token}"}
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    async with session.get(f"{base_url}/environments?per_page=1", headers=headers) as response:
        assert response.status == 200, await response.text()
        return response.headers["Link"].partition("<")[2].partition("://")[0]


async def test_forwarded_proto_is_believed_from_a_listed_tls_balancer_only(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """nginx sends its own scheme as X-Forwarded-Proto, except for a request from a balancer
    listed in $hookgate_tls_balancer (here 127.0.0.5, as an operator would add one), whose
    X-Forwarded-Proto it passes on; the instances believe nginx."""
    async with client_from("127.0.0.3") as sender:  # as shipped: nobody is such a balancer
        assert await _link_scheme(sender, cluster.internal_url, cluster.token, "https") == "http"
    ports = dataclasses.replace(cluster.ports, public=free_port(), internal=free_port())
    balancer_nginx = Nginx(
        tmp_path_factory.mktemp("nginx-tls-balancer"),
        ports,
        edits={"        default 0;\n": "        default 0;\n        127.0.0.5/32 1;\n"},
    )
    internal = f"http://127.0.0.1:{ports.internal}"
    try:
        async with client_from("127.0.0.5") as balancer, client_from("127.0.0.3") as sender:
            assert await _link_scheme(balancer, internal, cluster.token, "https") == "https"
            assert await _link_scheme(balancer, internal, cluster.token, "http") == "http"
            assert await _link_scheme(balancer, internal, cluster.token, None) == "http"
            assert await _link_scheme(sender, internal, cluster.token, "https") == "http"
    finally:
        balancer_nginx.stop()


async def test_pagination_links_keep_the_host_and_port_the_client_used(cluster: Cluster) -> None:
    """nginx passes the client's Host header as sent, port included, so a management list's
    Link points where the client can follow it (with ``$host`` the port was dropped)."""
    async with client_from("127.0.0.3") as session:
        headers = {"Authorization": f"Bearer {cluster.token}"}
        url = f"{cluster.internal_url}/environments?per_page=1"
        async with session.get(url, headers=headers) as response:
            assert response.status == 200, await response.text()
            first = response.headers["Link"].partition("<")[2].partition(">")[0]
    assert first.startswith(f"{cluster.internal_url}/environments?"), first
    async with client_from("127.0.0.3") as session, session.get(first, headers=headers) as again:
        assert again.status == 200, await again.text()


async def test_client_ip_recorded_is_the_one_nginx_saw(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The history row names the sender nginx saw (the last `X-Forwarded-For` entry, which
    nginx appends), not nginx and not an entry the sender forged: `[server] trusted_proxies`
    lists nginx's address (127.0.0.2) only."""
    async with client_from("127.0.0.3") as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        _, hook = await a.seed_hook()
        url = cluster.public_url + f"/hooks/incoming/{hook['id']}"
        seen: dict[str, Any] = {}
        for source, extra in (
            ("127.0.0.3", {"X-Forwarded-For": "203.0.113.9"}),  # forged by the sender
            ("127.0.0.4", {}),
        ):
            async with client_from(source) as sender:
                delivery = str(uuid.uuid4())
                status, _, body = await trigger(
                    sender, url, hook["secret"], delivery_id=delivery, extra_headers=extra
                )
                assert status == 202, body
            ip, headers = await _recorded_ip(a, hook["id"], delivery)
            seen[source] = (ip, headers.get("x-forwarded-for"))
        line = report(capsys, "client ip (sender: recorded, X-Forwarded-For)", seen)
        # nginx appended the sender's address to the forged entry; only nginx is trusted.
        assert seen["127.0.0.3"][1] == "203.0.113.9, 127.0.0.3", line
        assert seen["127.0.0.4"][1] == "127.0.0.4", line
        assert {source: ip for source, (ip, _) in seen.items()} == {
            "127.0.0.3": "127.0.0.3",
            "127.0.0.4": "127.0.0.4",
        }, line


async def test_dispatchers_in_both_instances_deliver_each_event_once(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], aiohttp_server: Any
) -> None:
    received: list[tuple[str, str]] = []  # (webhook-id, run id)

    async def receive(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        received.append((request.headers["webhook-id"], body["run_id"]))
        return web.json_response({"ok": True})

    receiver_app = web.Application()
    receiver_app.router.add_post("/deliveries", receive)
    receiver = await aiohttp_server(receiver_app)

    async with client_from("127.0.0.3") as session:
        a = Api(session, f"http://127.0.0.1:{cluster.a.management_port}", cluster.token)
        b = Api(session, f"http://127.0.0.1:{cluster.b.management_port}", cluster.token)
        pipeline_id, hook = await a.seed_hook()
        _, outgoing = await a.call(
            "POST",
            f"/pipelines/{pipeline_id}/hooks/outgoing",
            {
                "name": "lb-notify",
                "target_url": f"http://127.0.0.1:{receiver.port}/deliveries",
                "trigger_when": {"events": ["run.completed"]},
                "settings": {"request_body": {"run_id": "{{ run.id }}"}},
            },
            expect=201,
        )
        for number in range(DISPATCH_RUNS):  # runs queued through nginx
            status, _, body = await trigger(
                session, cluster.public_url + f"/hooks/incoming/{hook['id']}", hook["secret"],
                number=number,
            )  # fmt: skip
            assert status == 202, body
        _, claimed = await a.call(
            "POST", "/runs/claim", {"pipeline_id": pipeline_id, "limit": 100}, expect=200
        )
        assert len(claimed) == DISPATCH_RUNS
        for index, run in enumerate(claimed):  # completed alternately through A and B
            api = (a, b)[index % 2]
            await api.call(
                "POST",
                f"/runs/{run['id']}/status",
                {"status": "completed", "lease_token": run["lease_token"], "exit_code": 0},
                expect=200,
            )
    completed = {run["id"] for run in claimed}

    conn = await asyncpg.connect(cluster.dsn)
    try:
        hook_uuid = uuid.UUID(outgoing["id"])

        async def all_delivered() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM outgoing_deliveries WHERE hook_id = $1 "
                "AND status = 'succeeded'",
                hook_uuid,
            )
            return bool(done == DISPATCH_RUNS)

        await until(all_delivered, 30.0, "every delivery succeeded", interval=0.05)
        attempts = await conn.fetch(
            "SELECT delivery_id, count(*) AS n FROM hook_requests "
            "WHERE hook_id = $1 AND hook_type = 'outgoing' GROUP BY delivery_id",
            hook_uuid,
        )
        outbox = await conn.fetchval(
            "SELECT count(*) FROM outgoing_deliveries WHERE hook_id = $1", hook_uuid
        )
    finally:
        await conn.close()
    await asyncio.sleep(0.3)  # let a (wrong) second send of any delivery arrive before counting

    per_id = Counter(webhook_id for webhook_id, _ in received)
    by_instance = {
        instance.name: sum(
            1
            for e in instance.served("outgoing_delivery_attempt")
            if e.get("hook_id") == outgoing["id"]
        )
        for instance in (cluster.a, cluster.b)
    }
    figures = {
        "runs_completed": len(completed),
        "outbox_rows": outbox,
        "received": len(received),
        "distinct_deliveries": len(per_id),
        "attempts_recorded": sum(r["n"] for r in attempts),
        "sent_by": by_instance,
    }
    cluster.figures["deliveries"] = len(received)
    line = report(capsys, "outgoing", figures)
    assert outbox == DISPATCH_RUNS, line
    assert len(received) == DISPATCH_RUNS and set(per_id.values()) == {1}, line
    assert {run_id for _, run_id in received} == completed, line
    assert len(attempts) == DISPATCH_RUNS and {r["n"] for r in attempts} == {1}, line


async def test_failover_when_an_instance_stops_gracefully_under_load(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM to B mid-load (a rolling restart): B closes its listener, nginx sends the
    requests B refuses on to A, B finishes what it accepted and exits 0; no hang, errors (if
    any: connections caught in B's accept backlog when it closed) only 502/503, exactly one run
    per 2xx, and per delivery once the sender has retried."""
    cluster.ensure_b_running()
    await until_nginx_routes_to_b(cluster)
    result = await load_while_stopping_b(cluster, signal.SIGTERM)
    exit_code = await asyncio.to_thread(cluster.b.gateway.process.wait, 60)
    line = report(capsys, "graceful stop", {**result.figures, "B_exit_code": exit_code})
    check_nothing_lost_or_doubled(result, line)
    assert exit_code == 0, line
    # nginx noticed B going away: a connection to B's closed listener is refused and the request
    # sent on to A (a failover), or — when nginx's connection was still in B's accept backlog at
    # the moment B closed its listener — reset after the request was sent, which nginx answers
    # with 502 (a POST is not retried on another upstream); the sender retries those.
    assert result.figures["nginx_failovers"] + result.figures["non_2xx"].get(502, 0) > 0, line


async def test_failover_when_an_instance_dies_under_load(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL to B mid-load (a crash): requests in flight on B get 502 from nginx — some of
    them were committed before B died — and nginx takes B out; no hang, errors only 502/503,
    exactly one run per 2xx, and per delivery once the sender has retried."""
    cluster.ensure_b_running()
    await until_nginx_routes_to_b(cluster)
    result = await load_while_stopping_b(cluster, signal.SIGKILL)
    line = report(capsys, "crash", result.figures)
    check_nothing_lost_or_doubled(result, line)
