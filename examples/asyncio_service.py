"""An asyncio service: the emitter runs as Trio guest on the service's own event loop.

    DATABASE_URL=postgresql://... CHIP_INGRESS_ENDPOINT=chip:50051 python examples/asyncio_service.py
"""

import asyncio
import logging

from actors import EmitterConfig, open_asyncio_emitter


async def handle_request(emitter, request_id: int) -> str:
    """What a request handler does: record what happened, durably, then answer."""
    return await emitter.emit(f'{{"request": {request_id}}}', source="examples.asyncio", type="request.served")


async def main() -> None:
    async with open_asyncio_emitter(EmitterConfig.from_env()) as emitter:
        ids = await asyncio.gather(*(handle_request(emitter, n) for n in range(5)))
        print("committed", len(ids), "events")
        await emitter.flush(timeout=30)
        print("delivered", emitter.statistics().delivered)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
