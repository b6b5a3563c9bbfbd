#!/bin/sh
# The official image's redis-server has protected mode off; Debian's has it on (no remote clients).
if [ "$1" = redis-server ]; then shift; exec redis-server --protected-mode no "$@"; fi
exec "$@"
