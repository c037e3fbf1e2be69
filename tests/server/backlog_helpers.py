"""Driving the Redis backlog by hand in server tests (server.jobs.backlog): a claim taken
as a drain job takes it, and a drain against a database that refuses some batches."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.exc import DataError

from server.jobs import backlog, ingest


def claim_as(redis_client: Any, job_id: str, count: int) -> list[bytes]:
    """Claim up to ``count`` pending batches for the drain job ``job_id``, exactly as that
    job would, without storing them (the job is then made to die, or to be retried)."""
    items, _ = redis_client.eval(
        backlog._CLAIM, 4, backlog.PENDING_KEY, backlog.CLAIMED_PREFIX + job_id,
        backlog.CLAIMS_KEY, backlog.QUEUED_KEY, count, time.time() + backlog.LEASE_S, job_id,
        backlog.QUEUED_TTL_S,
    )
    return items


def drain_refusing(
    app: Flask, poisons: Collection[str], error: str, claim_sizes: list[int] | None = None
) -> dict[str, int]:
    """Drain the backlog while the database refuses, with a DataError saying ``error``,
    every store that holds a result of ``poisons``; returns the drain's totals. The size of
    every store asked for is appended to ``claim_sizes``."""
    real_store = ingest.store

    def refuse_poisons(batches: list[ingest.Batch]) -> tuple[int, int]:
        if claim_sizes is not None:
            claim_sizes.append(len(batches))
        if any(r["result_id"] in poisons for _, results in batches for r in results):
            raise DataError("INSERT ...", {}, Exception(error))
        return real_store(batches)

    with app.app_context(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "store", refuse_poisons)
        return backlog.drain()
