"""Password hashing with argon2id, off the event loop (argon2 releases the GIL), bounded.

Each hash takes ``memory_kib`` (64 MiB by default) and tens of milliseconds of a core: the
cheapest way to stall a node is to send it sign-ins. At most ``workers`` hashes run at once and
``queue`` more wait; beyond that a sign-in or sign-up is refused at once with 503 and
``Retry-After: 1`` instead of queueing without end (tens of thousands of waiting logins would
hold their requests, and the memory of each, for minutes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from agora.errors import AppError, ErrorCode

T = TypeVar("T")


class Passwords:
    def __init__(
        self, time_cost: int = 3, memory_kib: int = 64 * 1024, workers: int = 2, queue: int = 8
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self.capacity = workers + queue  # hashes running or waiting
        self.busy = 0
        self.shed = 0  # refused because the pool was full (a metric)
        # Verified against when the user does not exist, so both paths cost the same time.
        self._dummy = self._hasher.hash("agora-timing-equaliser")

    async def _run(self, work: Callable[[], T]) -> T:
        if self.busy >= self.capacity:
            self.shed += 1
            raise AppError(
                ErrorCode.UNAVAILABLE,
                "too many sign-ins at once; try again in a moment",
                headers={"Retry-After": "1"},
            )
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self.busy -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._hasher.hash(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        target = password_hash or self._dummy

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        ok = await self._run(check)
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
