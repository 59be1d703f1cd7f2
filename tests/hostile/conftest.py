"""The hostile suite's fixtures: real podman, a local registry, a busybox image (tests/helpers/sandbox.py)."""

from tests.helpers.sandbox import local_registry, podman_settings, sandbox_image  # noqa: F401
