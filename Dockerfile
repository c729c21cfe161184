# fspl-gw in watch mode: the gateway as a container.
#   docker build -t fspl-gw .
#   docker run -v /path/config.toml:/etc/fspl-gw/config.toml:ro -v fspl-queues:/var/spool/fspl-gw fspl-gw
# See docs/deployment.md and docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fspl_gateway ./fspl_gateway
COPY transports ./transports
# all extras: s3 (boto3), sftp (paramiko), dropbox, watch (watchdog), media (pycdlib), rich
RUN pip install ".[all]" && rm -rf /src

# An unprivileged user owns the queues; a named volume mounted on /var/spool/fspl-gw
# starts with this ownership.
RUN useradd --system --uid 10001 --user-group --home-dir /var/spool/fspl-gw fspl \
    && mkdir -p /var/spool/fspl-gw /etc/fspl-gw \
    && chown fspl:fspl /var/spool/fspl-gw
USER fspl
WORKDIR /var/spool/fspl-gw
VOLUME ["/var/spool/fspl-gw"]

# SIGTERM: finish the running transfer or job, then exit 0 (give it time: docker stop -t).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["fspl-gw", "status", "--config", "/etc/fspl-gw/config.toml", "--json", "--quiet"]
CMD ["fspl-gw", "watch", "--config", "/etc/fspl-gw/config.toml"]
