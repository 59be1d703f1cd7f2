# syntax=docker/dockerfile:1
# One image for every stoker role: ENTRYPOINT ["stoker"], and the pod (or `docker run`) passes the
# subcommand: `coordinator`, `agent`, `build`, `place`, `release`, `inventory`, `demo`, `cache`.
#
#   docker build -t registry.example.com/stoker:0.1.0 .
#   docker run --rm --init registry.example.com/stoker:0.1.0 coordinator --listen 0.0.0.0:7070
#
# Users. The image runs as the unprivileged user `stoker` (uid/gid 10001), which is all the coordinator
# needs (its state volume is made writable with fsGroup). The agent runs each build in a container of its
# own through podman, which this image installs; podman runs rootful, so deploy/ runs the agent pod as
# root inside a user namespace of its own (docs/kubernetes.md, "Builds in containers").
#
# Builds run in the images they name (`stoker build --image`), not in this one: put toolchains there.
#
# PID 1: the image has no init. In Kubernetes the agent's pod shares its process namespace, so the pause
# container reaps podman's exited monitors; with plain Docker, pass --init. Each build has its own init
# (catatonit).

# Debian bookworm: its podman 4.3, runc 1.1 and CNI plugins are the versions the agent's sandbox tests
# run against.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

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

# ---- runtime: the venv, podman for the agent's builds, and a non-root user
FROM ${PYTHON_IMAGE} AS runtime
# podman and what the agent's executor runs it with: runc (works on cgroup v1/hybrid hosts, where crun
# refuses), catatonit (each build's init), the CNI plugins and iptables (podman 4's default bridge
# network). Not installed, because rootful podman with explicit --uidmap and the kernel's overlay do not
# use them: uidmap (newuidmap, /etc/subuid) and fuse-overlayfs (/dev/fuse).
RUN apt-get update \
 && apt-get install -y --no-install-recommends podman runc catatonit containernetworking-plugins iptables \
 && rm -rf /var/lib/apt/lists/*
# podman's configuration, for the agent's podman and for an operator's `kubectl exec … podman`:
# - keyring = false: the RuntimeDefault seccomp profile of the agent's pod blocks keyctl, with which runc
#   would give each build a new session keyring (and fail);
# - storage (the kernel's overlay, no fuse) on the node's SSD, where the agent passes it too
#   (STOKER_AGENT_PODMAN_DIR=/var/lib/stoker/podman: --root …/storage, --runroot …/run);
# - cgroupfs and file events: no systemd in the container.
RUN mkdir -p /etc/containers \
 && printf '%s\n' \
      '[containers]' \
      'keyring = false' \
      '[engine]' \
      'cgroup_manager = "cgroupfs"' \
      'events_logger = "file"' \
      > /etc/containers/containers.conf \
 && printf '%s\n' \
      '[storage]' \
      'driver = "overlay"' \
      'graphroot = "/var/lib/stoker/podman/storage"' \
      'runroot = "/var/lib/stoker/podman/run"' \
      > /etc/containers/storage.conf
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
