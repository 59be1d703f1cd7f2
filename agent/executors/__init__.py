"""What runs a build's command: the interface in :mod:`.base`, the implementations beside it."""
