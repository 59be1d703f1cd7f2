# syntax=docker/dockerfile:1
# One image for every stoker role: ENTRYPOINT ["stoker"], and the pod (or `docker run`) passes the
# subcommand: `coordinator`, `agent`, `build`, `place`, `release`, `inventory`, `demo`, `cache`.
#
#   docker build -t registry.example.com/stoker:0.1.0 .
#   docker run --rm --init registry.example.com/stoker:0.1.0 coordinator --listen 0.0.0.0:7070
#
# Users. The image runs as the unprivileged user `stoker` (uid/gid 10001), which is all the coordinator
# needs (its state volume is made writable with fsGroup). The agent runs as the same user: its only need
# for root is that kubelet creates the hostPath cache directory owned by root, and in deploy/ a short
# init container (root, CHOWN and DAC_OVERRIDE only) hands that directory to uid 10001 before the
# agent starts. Builds therefore run unprivileged too. If your builds must be root (apt-get install in
# a build step), run the agent as uid 0 in your overlay instead, knowing a build can then do anything
# the hostPath allows.
#
# Builds run inside the agent's container, so extend this image with your toolchains:
#   FROM registry.example.com/stoker:0.1.0
#   USER root
#   RUN apt-get update && apt-get install -y --no-install-recommends git nodejs npm && rm -rf /var/lib/apt/lists/*
#   USER 10001:10001
#
# PID 1: the image has no init. In Kubernetes the agent's pod shares its process namespace, so the pause
# container reaps orphaned build processes; with plain Docker, pass --init.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of stoker, installed with its dependencies into a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
WORKDIR /src
# A C compiler for stoker's own extension (agent/cache/_fastio.c, the cache's file writer); it stays in
# this stage. The runtime image needs only libcrypto, which the Python image has already.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The build context is only what .dockerignore lets through: pyproject.toml, setup.py, README.md and the
# packages.
COPY . .
# Binary wheels only for the dependencies: a dependency that would need a compiler should fail here,
# loudly. The last step fails the build if the compiled writer did not build (it is optional for pip).
# tests/test_image_install.py runs these same steps.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/stoker \
 && /opt/stoker/bin/pip install --only-binary=:all: /wheels/stoker-*.whl \
 && /opt/stoker/bin/stoker --help > /dev/null \
 && /opt/stoker/bin/python -c "import stoker.agent.cache._fastio"

# ---- runtime: the venv and a non-root user, nothing else
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 stoker \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/stoker --create-home \
      --shell /usr/sbin/nologin stoker \
 && mkdir -p /var/lib/stoker /var/lib/stoker-coordinator \
 && chown 10001:10001 /var/lib/stoker /var/lib/stoker-coordinator
COPY --from=build /opt/stoker /opt/stoker
ENV PATH=/opt/stoker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/stoker
# coordinator gRPC and metrics; agent health and metrics
EXPOSE 7070 9100 7071 9101
ENTRYPOINT ["stoker"]
CMD ["--help"]
