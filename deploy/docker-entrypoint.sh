#!/bin/sh
# Container entry point: `voice-bridge serve` with the mounted config and $PORT.
#
#   IMAGE                      serve /config/pipeline.yaml if mounted, else the built-in chain
#   IMAGE serve --workers 2    the same, with extra `voice-bridge serve` options
#   IMAGE check | call … | schema   any other voice-bridge command
#
# VOICE_BRIDGE_CONFIG names another config path. PORT (set by Cloud Run, default 8082 in the image)
# always wins over the file's server.port, so the platform and the HEALTHCHECK agree on the port.
# `exec` keeps python as PID 1 of the container: SIGTERM reaches it and live calls drain.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- serve "$@"
fi
command=$1
case "$command" in
    serve|check)
        shift
        config=${VOICE_BRIDGE_CONFIG:-/config/pipeline.yaml}
        if [ -f "$config" ]; then
            set -- -c "$config" "$@"
        elif [ -n "${VOICE_BRIDGE_CONFIG:-}" ]; then
            echo "voice-bridge: VOICE_BRIDGE_CONFIG=$config: no such file" >&2
            exit 1
        fi
        if [ "$command" = serve ] && [ -n "${PORT:-}" ]; then
            set -- --port "$PORT" "$@"
        fi
        if [ "$command" = serve ] && [ -n "${VOICE_BRIDGE_WORKERS:-}" ]; then
            set -- --workers "$VOICE_BRIDGE_WORKERS" "$@"
        fi
        set -- "$command" "$@"
        ;;
esac
exec voice-bridge "$@"
