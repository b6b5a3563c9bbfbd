# Stand-in for redis:7.2-alpine (no registry here): Debian's redis-server, run as user redis, protected mode off
# as in the official image (it takes connections from other containers). Built by `make image-test` only.
FROM python:3.11-slim
LABEL org.opencontainers.image.description="videogpt-serve image-test stand-in for redis, from Debian's package"
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY --chmod=0755 redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]
