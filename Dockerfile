# hookgate image. Configure with a mounted /app/config.toml or GATEWAY_* environment variables;
# point GATEWAY_DATABASE_DSN at PostgreSQL (without it the embedded server keeps data in /app/var).
# Keep the keys beyond the container: GATEWAY_SECURITY_SECRET_KEYS, or /app/var in a named
# volume (else a new container has no key: beside sealed secrets it refuses to start, status
# 2, where a new key would open none of them). Stop with --stop-timeout 25.
# README.md, "Docker".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_CONFIG=/app/config.toml \
    GATEWAY_SERVER_HOST=0.0.0.0

RUN groupadd --system --gid 10001 hookgate \
    && useradd --system --uid 10001 --gid hookgate --home-dir /app hookgate

WORKDIR /app
COPY pyproject.toml README.md schema.sql config.toml ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && mkdir -p /app/var && chown -R 10001:10001 /app/var

USER 10001:10001
EXPOSE 8080
VOLUME ["/app/var"]

# Probes the port GATEWAY_SERVER_PORT names (8080 without it). A port set only in a mounted
# config file needs the variable too, or docker run --health-cmd.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_SERVER_PORT') or '8080'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["gateway"]
CMD ["serve"]
