# Stand-in for prom/prometheus (no registry here): Debian's prometheus with the official image's layout
# (entrypoint the server, config in /etc/prometheus, data in /prometheus, user nobody). Built by `make image-test`.
FROM python:3.11-slim
LABEL org.opencontainers.image.description="videogpt-serve image-test stand-in for prometheus, from Debian's package"
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
WORKDIR /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
