"""Plain functions used as tools by the tests (no pipecat, no project imports: what a user writes)."""

from __future__ import annotations

from typing import Literal

CALLS: list[tuple[str, dict]] = []


def lookup_order(order_id: str, detail: Literal["status", "eta"] = "status") -> dict:
    """Look up an order for the caller.

    Args:
        order_id: The order number the caller read out.
        detail: What to report about it.
    """
    CALLS.append(("lookup_order", {"order_id": order_id, "detail": detail}))
    return {"order_id": order_id, "status": "shipped"}


async def book_callback(minutes: int) -> str:
    """Book a callback in some minutes."""
    CALLS.append(("book_callback", {"minutes": minutes}))
    return f"booked in {minutes} minutes"


def untyped(thing):  # type: ignore[no-untyped-def]
    return thing


async def slow_lookup(order_id: str) -> dict:
    """Look up an order in a slow back office."""
    import asyncio

    CALLS.append(("slow_lookup", {"order_id": order_id}))
    await asyncio.sleep(SLOW_SECONDS)
    return {"order_id": order_id, "status": "delayed"}


SLOW_SECONDS = 2.5
