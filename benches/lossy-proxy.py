#!/usr/bin/env python3
"""A UDP proxy on loopback that drops a share of the packets going back to the clients, for
measuring how the relay recovers from loss (BENCHMARKS.md, "ACK delay").

    python3 benches/lossy-proxy.py LISTEN_PORT RELAY_PORT LOSS [SEED]

Clients connect to 127.0.0.1:LISTEN_PORT; each client address gets its own socket towards the
relay at 127.0.0.1:RELAY_PORT, so the relay sees one address per client. Packets from the
clients all pass; each packet from the relay is dropped with probability LOSS (0.01 = 1 %),
from a seeded generator. Every 5 s it prints how many packets came down and how many it
dropped. Stop it with Ctrl-C or kill. Loopback only: it never binds or sends elsewhere.
"""
import asyncio
import random
import sys


class ToRelay(asyncio.DatagramProtocol):
    """One client's socket towards the relay: what the relay sends back, minus the losses."""

    def __init__(self, front, client, stats, rng, loss):
        self.front, self.client, self.stats, self.rng, self.loss = front, client, stats, rng, loss

    def datagram_received(self, data, addr):
        self.stats["down"] += 1
        if self.rng.random() < self.loss:
            self.stats["dropped"] += 1
            return
        self.front.sendto(data, self.client)


class FromClients(asyncio.DatagramProtocol):
    """The listening socket: forwards each client's packets on that client's own socket."""

    def __init__(self, relay, stats, rng, loss):
        self.relay, self.stats, self.rng, self.loss = relay, stats, rng, loss
        self.sockets, self.waiting = {}, {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if addr in self.sockets:
            self.sockets[addr].sendto(data)
        elif addr in self.waiting:
            self.waiting[addr].append(data)
        else:
            self.waiting[addr] = [data]
            asyncio.ensure_future(self.open(addr))

    async def open(self, addr):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: ToRelay(self.transport, addr, self.stats, self.rng, self.loss),
            remote_addr=self.relay,
        )
        self.sockets[addr] = transport
        for data in self.waiting.pop(addr):
            transport.sendto(data)


async def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    listen, relay, loss = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) == 5 else 7)
    stats = {"down": 0, "dropped": 0}
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: FromClients(("127.0.0.1", relay), stats, rng, loss),
        local_addr=("127.0.0.1", listen),
    )
    while True:
        await asyncio.sleep(5)
        print(stats, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
