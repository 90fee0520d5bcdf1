"""Actors: one task, a bounded mailbox, private state. Session and conversation actors live here."""
