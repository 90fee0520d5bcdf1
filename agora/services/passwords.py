"""Password hashing with argon2id, off the event loop (argon2 releases the GIL)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 64 * 1024, workers: int = 2) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        # Verified against when the user does not exist, so both paths cost the same time.
        self._dummy = self._hasher.hash("agora-timing-equaliser")

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._hasher.hash, password
        )

    async def verify(self, password_hash: str | None, password: str) -> bool:
        target = password_hash or self._dummy

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        ok = await asyncio.get_running_loop().run_in_executor(self._pool, check)
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
