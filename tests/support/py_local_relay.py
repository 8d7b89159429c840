"""NIP-77 test relay, out of process: the LocalRelay shipped in the PyPI nostr-sdk wheel.

Usage: python py_local_relay.py PORT
Serves on 127.0.0.1:PORT until killed. The rate limit is raised: tests publish fast.
"""
import asyncio
import sys

import nostr_sdk


async def main(port: int) -> None:
    relay = (
        nostr_sdk.LocalRelayBuilder()
        .addr("127.0.0.1")
        .port(port)
        .rate_limit(nostr_sdk.RateLimit(max_reqs=500, notes_per_minute=1_000_000))
        .build()
    )
    await relay.run()
    print(f"listening ws://127.0.0.1:{port}", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
