# mcp-gateway: the gateway and its embedded demo server in one slim image.
#
#   docker build -t mcp-gateway .
#   docker run -p 8080:8080 -v ./gateway.yaml:/etc/mcp-gateway/gateway.yaml:ro mcp-gateway
#
# The install is `make run`'s (`pip install` of this repo, then `mcp-gateway serve`), without the
# editable mode and the dev extras a checkout wants. tests/deploy/test_stack.py builds a wheel from
# exactly the files copied below and checks it carries the packages and the `mcp-gateway` command.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# What `pip install .` reads: the project metadata (its readme included) and the two packages.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY telemetry ./telemetry
RUN python -m pip install --upgrade pip \
    && python -m pip install . \
    && rm -rf /src

# A config to start with (the compose stack's: the demo servers, OTLP only when OTEL_* asks);
# mount yours over it.
COPY deploy/compose/gateway.yaml /etc/mcp-gateway/gateway.yaml

# Never root: the gateway spawns its stdio servers as this user too.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway gateway
USER 10001:10001
WORKDIR /home/gateway

EXPOSE 8080
# /healthz answers while the process serves; the stdlib only (the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

# Bound to every interface: in a container the published port arrives from outside loopback.
# Set gateway.auth.tokens in the config before publishing it beyond your machine.
ENTRYPOINT ["mcp-gateway"]
CMD ["serve", "--config", "/etc/mcp-gateway/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
