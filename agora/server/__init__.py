"""The node: application factory, middleware, runner, embedded services, ops endpoints."""
