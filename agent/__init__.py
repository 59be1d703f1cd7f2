"""The stoker agent: owns a build node's cache, runs its builds, streams its inventory."""
