"""Nodes forming one cluster through Redis: registry, inboxes, presence, routing."""
