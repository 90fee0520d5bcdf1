"""PostgreSQL (the record) and Redis access.

Only this package holds SQL; one store per aggregate.
"""
