"""Where a rollout's instances run: local processes behind HAProxy, or Kubernetes Deployments."""
