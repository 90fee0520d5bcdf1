"""HTTP and WebSocket handlers: parse, call a service, answer. No SQL and no policy here."""
