#!/usr/bin/env bash
# `make image-test`: build the gateway and worker images with podman and run them end to end; the checks are
# tests/test_images.py (containers on a bridge network with auth on, one video per mode, every HEALTHCHECK,
# the non-root user; then the compose files through podman-compose with Prometheus scraping both services).
# No Docker engine or registry is needed:
#   - podman, runc and debootstrap come from apt; podman's config, storage and temporary files live under
#     build/podman (kept between runs: the base image and the layer cache make a warm run quick);
#   - `FROM python:3.11-slim` finds a look-alike made with debootstrap (Debian's python3 with a venv at
#     /usr/local, so `python` and `pip` come first on PATH as in the official image);
#   - the worker gets the CPU build of torch: TORCH_INDEX points at a local index holding the wheel pip
#     installs on this host (the Dockerfile's default stays the CUDA index);
#   - redis and prometheus are stand-ins built from Debian's packages (tests/images/) under the compose
#     file's names. Grafana has no Debian package: its dashboard is checked statically (tests/test_deploy.py).
# Skips (exit 0, saying why) where podman cannot run. `scripts/image-test.sh clean` removes build/podman.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$REPO/build/podman
PYTHON=${PYTHON:-python3}
BIN=${BIN:-.venv/bin}
PODMAN_COMPOSE_VERSION=1.6.0
TORCH_VERSION=2.13.0
BASE=docker.io/library/python:3.11-slim
# The local torch index listens here while images build; a fixed port keeps the worker's torch layer cached
# (the build argument is part of the cache key). Not a port other tests use (8000, 6379, 6380, 9100).
TORCH_INDEX_PORT=${TORCH_INDEX_PORT:-18391}

log() { echo "image-test: $*" >&2; }
skip() { log "SKIPPED: $*"; exit 0; }
STEP_START=$SECONDS
step() { log "$1 ($((SECONDS - STEP_START)) s)"; STEP_START=$SECONDS; }

podman_env() {
  export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
  export TMPDIR=$WORK/tmp BUILDAH_FORMAT=docker  # the OCI format drops HEALTHCHECK
}

if [[ ${1:-} == clean ]]; then
  [[ -d $WORK ]] || exit 0
  podman_env
  podman system reset --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit 0
fi

[[ $(id -u) == 0 ]] || skip "needs root (podman builds and runs the images as root here; debootstrap too)"
command -v apt-get >/dev/null || skip "needs apt-get (Debian or Ubuntu) to install podman, runc and debootstrap"
missing=()
for tool in podman runc debootstrap iptables; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  log "installing podman runc debootstrap"
  { apt-get install -y -q podman runc debootstrap || { apt-get update -q && apt-get install -y -q podman runc debootstrap; }; } \
    >/dev/null || skip "apt-get could not install podman, runc and debootstrap"
fi

# --- podman's configuration and state, all under build/podman ------------------------------------------------
mkdir -p "$WORK"/{storage,run,tmp,networks,libpod}
# crun 1.8 refuses this machine's hybrid cgroup layout: runc. Without systemd: cgroupfs and a file event log.
# podman's default ulimits exceed the hard limits here. netavark gives the bridge networks. Only paths that
# conmon's exit command (`podman container cleanup`) is also given: with any other, say static_dir, it finds
# no container and every container's exit waits 20 s for it.
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/libpod"
[network]
network_backend = "netavark"
network_config_dir = "$WORK/networks"
EOF
cat > "$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
podman_env
exec 9>"$WORK/lock"
flock -n 9 || { log "another make image-test is running (lock: $WORK/lock)"; exit 1; }
# What podman leaves outside its configured paths, to be removed at the end if it was not there before.
OUTSIDE=(/run/containers /var/lib/containers)
declare -A EXISTED=()
for path in "${OUTSIDE[@]}"; do [[ -e $path ]] && EXISTED[$path]=1; done
INDEX_PID=
# netavark's iptables chains are removed at the end only if there were none before (else someone else's podman
# uses them).
NETAVARK_BEFORE=$(iptables-save 2>/dev/null | grep -c NETAVARK || true)
# Our storage is private (build/podman): every container, network and volume in it is ours.
remove_containers() {
  podman pod rm -af -t 0 >/dev/null 2>&1
  podman rm -af -t 0 >/dev/null 2>&1
  podman network prune -f >/dev/null 2>&1
  podman volume prune -f >/dev/null 2>&1
}
cleanup() {
  set +e
  [[ -n $INDEX_PID ]] && kill "$INDEX_PID" 2>/dev/null
  remove_containers
  [[ $NETAVARK_BEFORE == 0 ]] && remove_netavark_chains
  for path in "${OUTSIDE[@]}"; do [[ -z ${EXISTED[$path]:-} ]] && rm -rf "$path"; done
}
# netavark removes a network's rules with it but leaves its own chains (and a few rules) in the host's tables.
remove_netavark_chains() {
  local table rule chain chains
  for table in nat filter; do
    while read -r rule; do  # the jumps into them from the built-in chains
      eval "iptables -t $table ${rule/-A /-D }"
    done < <(iptables -t "$table" -S | grep -E -- "^-A [A-Z]+ .*-j NETAVARK")
    chains=$(iptables -t "$table" -S | awk '$1 == "-N" && $2 ~ /^NETAVARK/ {print $2}')
    for chain in $chains; do iptables -t "$table" -F "$chain"; done
    for chain in $chains; do iptables -t "$table" -X "$chain"; done
  done
}
trap cleanup EXIT
remove_containers || true  # left by a run that was killed
# Can podman run a container here at all (runc, namespaces, cgroups, overlay)? This host's root, overlaid.
if ! out=$(podman run --rm --network=none --rootfs /:O true 2>&1); then
  skip "podman cannot run containers here: $(tail -n 3 <<<"$out")"
fi
step "podman $(podman version --format '{{.Client.Version}}') runs containers; its state is in build/podman"

# --- the base image: a look-alike of python:3.11-slim -----------------------------------------------------------
if ! podman image exists "$BASE"; then
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources \
           /etc/apt/sources.list 2>/dev/null || true)
  log "debootstrap bookworm from ${mirror:=http://deb.debian.org/debian} (a minute or two)"
  debootstrap --variant=minbase --include=ca-certificates,netbase,tzdata,python3,python3-venv,python3-pip \
    bookworm "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
  # pip inside the builds must trust what pip on this host trusts (a proxy's CA, say).
  "$PYTHON" - "$rootfs" <<'EOF'
import re, ssl, sys
from pathlib import Path
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt").read_text()
image = (Path(sys.argv[1]) / "etc/ssl/certs/ca-certificates.crt").read_text()
extra = [c for c in pem.findall(host) if c not in set(pem.findall(image))]
for i, cert in enumerate(extra):
    (Path(sys.argv[1]) / f"usr/local/share/ca-certificates/host-{i}.crt").write_text(cert + "\n")
print(f"image-test: {len(extra)} CA certificate(s) of this host added to the base image", file=sys.stderr)
EOF
  TMPDIR=/tmp chroot "$rootfs" update-ca-certificates >/dev/null
  TMPDIR=/tmp chroot "$rootfs" python3 -m venv /usr/local
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - localhost/python:3.11-slim >/dev/null
  podman tag localhost/python:3.11-slim "$BASE"
  rm -rf "$rootfs"
  step "base image $BASE made"
fi

# --- a local index holding the CPU build of torch and its dependencies ------------------------------------------
INDEX=$WORK/torch-index
if [[ ! -f $INDEX/ready ]]; then
  rm -rf "$INDEX" && mkdir -p "$INDEX/wheels"
  pip_download() { "$PYTHON" -m pip download --quiet "$@" >>"$WORK/torch-index.log" 2>&1 \
                     || { tail -n 20 "$WORK/torch-index.log" >&2; exit 1; }; }
  pip_download --no-deps --dest "$INDEX/wheels" "torch==$TORCH_VERSION"
  wheel=$(ls "$INDEX"/wheels/torch-*.whl)
  [[ $wheel == *+cpu* ]] || { log "pip on this host fetched $(basename "$wheel"), not a CPU build of torch"; exit 1; }
  pip_download --dest "$INDEX/wheels" "$wheel"
  for file in "$INDEX"/wheels/*; do  # PEP 503: simple/<normalized project name>/<files>
    name=$(basename "$file" | sed -E 's/^([A-Za-z0-9_.]+)-[0-9].*/\1/' | tr 'A-Z_.' 'a-z--')
    mkdir -p "$INDEX/simple/$name" && mv "$file" "$INDEX/simple/$name/"
  done
  touch "$INDEX/ready"
  step "torch index: $(ls "$INDEX/simple" | tr '\n' ' ')"
fi
if ! "$PYTHON" -c "import socket, sys; socket.create_server(('127.0.0.1', int(sys.argv[1]))).close()" \
    "$TORCH_INDEX_PORT" 2>/dev/null; then
  taken=$TORCH_INDEX_PORT
  TORCH_INDEX_PORT=$("$PYTHON" -c "import socket; s = socket.create_server(('127.0.0.1', 0)); print(s.getsockname()[1])")
  log "port $taken is taken: the torch index listens on $TORCH_INDEX_PORT (the worker's torch layer rebuilds)"
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$INDEX" "$TORCH_INDEX_PORT" >>"$WORK/torch-index.log" 2>&1 &
INDEX_PID=$!
export VGS_TEST_TORCH_INDEX=http://127.0.0.1:$TORCH_INDEX_PORT/simple/
for _ in $(seq 50); do curl -fs -o /dev/null "$VGS_TEST_TORCH_INDEX" && break; sleep 0.1; done

# --- the images ------------------------------------------------------------------------------------------------
# --network=host: the builds reach the torch index on 127.0.0.1 (and PyPI as this host does).
BUILD=(podman build --format docker --pull=never --network=host)
"${BUILD[@]}" --target gateway -t videogpt-serve-gateway:latest . > "$WORK/build-gateway.log" 2>&1 \
  || { tail -n 30 "$WORK/build-gateway.log" >&2; exit 1; }
step "gateway image built (log: build/podman/build-gateway.log)"
"${BUILD[@]}" --target worker --build-arg "TORCH_INDEX=$VGS_TEST_TORCH_INDEX" -t videogpt-serve-worker:latest . \
  > "$WORK/build-worker.log" 2>&1 || { tail -n 30 "$WORK/build-worker.log" >&2; exit 1; }
step "worker image built (log: build/podman/build-worker.log)"
"${BUILD[@]}" -f tests/images/redis.Dockerfile -t docker.io/library/redis:7.2-alpine tests/images \
  > "$WORK/build-stand-ins.log" 2>&1 || { tail -n 30 "$WORK/build-stand-ins.log" >&2; exit 1; }
"${BUILD[@]}" -f tests/images/prometheus.Dockerfile -t docker.io/prom/prometheus:v2.53.0 tests/images \
  >> "$WORK/build-stand-ins.log" 2>&1 || { tail -n 30 "$WORK/build-stand-ins.log" >&2; exit 1; }
step "stand-ins for redis and prometheus built"
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -v '<none>' | sed 's/^/  /' >&2
# Superseded layers of earlier builds, once they are a few days old (recent ones are the warm cache).
podman image prune -f --filter until=72h >/dev/null

# --- podman-compose, then the checks -----------------------------------------------------------------------------
COMPOSE_VENV=$WORK/compose
if [[ ! -x $COMPOSE_VENV/bin/podman-compose ]] \
    || ! "$COMPOSE_VENV/bin/podman-compose" --version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
  rm -rf "$COMPOSE_VENV"
  "$PYTHON" -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION"
fi
export VGS_IMAGE_TEST=1 VGS_TEST_PODMAN_COMPOSE=$COMPOSE_VENV/bin/podman-compose
"$BIN/python" -m pytest -q -p no:cacheprovider tests/test_images.py
step "tests/test_images.py passed"
