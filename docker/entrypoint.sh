#!/bin/sh
# The image's entrypoint: `cangku ARGS` (default `serve`) with /etc/cangku/config.yml, as the
# user `cangku`.
#
# Started as root (the default), it first gives the data directory to `cangku` when it is not
# theirs: a host directory that `docker run -v` had to create belongs to root. Then it drops
# to uid/gid 10001 with setpriv (util-linux) and execs, so cangku is PID 1 and gets SIGTERM.
# Started as another user (`docker run --user`), it runs cangku as that user unchanged.
set -eu

CONFIG=${CANGKU_CONFIG_FILE:-/etc/cangku/config.yml}
if [ "${1:-}" = "serve" ] || [ "${1:-}" = "" ]; then
    [ "$#" -gt 0 ] && shift
    set -- serve --config "$CONFIG" "$@"
fi

if [ "$(id -u)" = 0 ]; then
    DATA=${CANGKU_DATA:-/var/lib/registry}
    mkdir -p "$DATA"
    if [ "$(stat -c %u:%g "$DATA")" != "10001:10001" ]; then
        echo "cangku-entrypoint: giving $DATA to the user cangku (10001:10001)" >&2
        chown -R 10001:10001 "$DATA"
    fi
    exec setpriv --reuid=10001 --regid=10001 --clear-groups -- cangku "$@"
fi
exec cangku "$@"
