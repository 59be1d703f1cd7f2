"""The node's build cache: content and entries on its SSD, hydrated from a blob store."""
