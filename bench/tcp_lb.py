"""A round-robin TCP load balancer on loopback: what a Kubernetes Service does for the benchmark.

kube-proxy balances *connections*, not requests: each new client connection goes to the next
backend and stays there.  This process does the same for the benchmark's gateway replicas, so two
replicas behind it see the traffic split the way two pods behind one Service would (a client's
keep-alive connection sticks to one replica).  Only 127.0.0.1 is listened on and dialled.

    python bench/tcp_lb.py --port 9000 8001 8002     # 127.0.0.1:9000 -> :8001, :8002, :8001, ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, backends: list[int]) -> None:
    turn = itertools.cycle(backends)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", next(turn))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("backends", type=int, nargs="+", help="backend ports on 127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.backends))


if __name__ == "__main__":
    main()
