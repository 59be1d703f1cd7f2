"""stoker: keep a fleet of persistent CI build nodes warm."""
