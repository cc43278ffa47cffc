"""A Trio program that emits a few events durably.

    DATABASE_URL=postgresql://... CHIP_INGRESS_ENDPOINT=chip:50051 python examples/trio_program.py
"""

import logging

import trio

from actors import EmitterConfig, open_emitter


async def main() -> None:
    config = EmitterConfig.from_env()  # DATABASE_URL, CHIP_INGRESS_*, DURABLE_EMITTER_*
    async with open_emitter(config) as emitter:
        for n in range(3):
            event_id = await emitter.emit(f"tick {n}", source="examples.trio", type="tick",
                                          attributes={"beholder_data_schema": "/examples/tick/v1"})
            print("committed", event_id)  # durable now: it survives a crash from here on
        await emitter.flush(timeout=30)  # delivered to Chip and deleted from the table
        print("delivered", emitter.statistics().delivered)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # the library logs through `logging`; you choose where
    trio.run(main)
