# syntax=docker/dockerfile:1
# agent-voice-bridge: the bridge as a small, non-root container.
#
#   docker build -t voice-bridge .
#   docker run -p 8082:8082 -v $PWD/pipeline.yaml:/config/pipeline.yaml:ro \
#       -e TWILIO_AUTH_TOKEN -e GEMINI_API_KEY voice-bridge
#
# Config: /config/pipeline.yaml when mounted (VOICE_BRIDGE_CONFIG names another path), else the built-in
# chain for whichever AI key is set (the offline echo line with none). ${VAR} in the file comes from -e.
# PORT (default 8082; Cloud Run sets it) overrides server.port. See README.md "Deploy".
#
# BASE: any Debian-like image with python3 (>= 3.11) whose `python3 -m venv` works, the same in both stages.
# A build behind a TLS-intercepting proxy can hand pip that proxy's CA as a build secret (never stored in a
# layer): --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE=python:3.11-slim

# ---------------------------------------------------------------- builder: the wheel, then a venv of it
FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src
# The Silero VAD model ships inside pipecat's wheel (pipecat/audio/vad/data/silero_vad.onnx) and is loaded
# from there, so the venv holds everything a call needs: nothing is downloaded at start.
RUN --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . ; \
    /opt/venv/bin/pip install /wheels/agent_voice_bridge-*.whl ; \
    /opt/venv/bin/python -c "import importlib.resources as r; \
        assert r.files('pipecat.audio.vad.data').joinpath('silero_vad.onnx').is_file(), 'no Silero model'" ; \
    /opt/venv/bin/pip uninstall --yes --quiet pip setuptools wheel ; \
    /opt/venv/bin/python -m compileall -q -j 0 /opt/venv >/dev/null

# ---------------------------------------------------------------- runtime: the venv, a user, nothing else
FROM ${BASE}
# ORT_DISABLE_TELEMETRY: onnxruntime (Silero VAD) otherwise creates a device id under ~/.cache and a
# telemetry uploader to Microsoft at start; this opts out before it initialises.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    HOST=0.0.0.0 \
    PORT=8082
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/voicebridge \
        --shell /usr/sbin/nologin voicebridge \
    && mkdir -p /config
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker-entrypoint.sh /usr/local/bin/voice-bridge-entrypoint
USER 10001:10001
WORKDIR /home/voicebridge
EXPOSE 8082
# A draining server still answers 200 (status "draining"): it must not be killed while calls finish.
# With server.tls set, build/run with HEALTHCHECK_SCHEME=https (the check does not verify the certificate).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; u.urlopen(os.environ.get('HEALTHCHECK_SCHEME', 'http') + '://127.0.0.1:' + os.environ.get('PORT', '8082') + '/healthz', timeout=4, context=ssl._create_unverified_context())"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["voice-bridge-entrypoint"]
CMD ["serve"]
