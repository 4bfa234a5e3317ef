#!/usr/bin/env python3
"""A UDP proxy on loopback that drops a share of the packets going back to the clients, for
measuring how the relay recovers from loss (BENCHMARKS.md, "ACK delay").

    python3 benches/lossy-proxy.py LISTEN_PORT RELAY_PORT LOSS [SEED]

Clients connect to 127.0.0.1:LISTEN_PORT; each client socket (address and port) gets a socket
of its own towards the relay at 127.0.0.1:RELAY_PORT, so the relay tells them apart as before.
Packets from the clients all pass; each packet from the relay is dropped with probability LOSS
(0.01 = 1 %), drawn from one generator seeded with SEED (default 7): the share is repeatable,
the exact packets depend on arrival order. A socket towards the relay that carried nothing for
60 s is closed. Every 5 s it prints how many packets came down and how many it dropped. Stop it
with Ctrl-C or kill. Loopback only: it never binds or sends elsewhere.
"""
import asyncio
import random
import sys
import time

IDLE_SECONDS = 60


class ToRelay(asyncio.DatagramProtocol):
    """One client's socket towards the relay: what the relay sends back, minus the losses."""

    def __init__(self, front, client, stats, rng, loss):
        self.front, self.client, self.stats, self.rng, self.loss = front, client, stats, rng, loss
        self.last = time.monotonic()

    def datagram_received(self, data, addr):
        self.last = time.monotonic()
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
            transport, protocol = self.sockets[addr]
            protocol.last = time.monotonic()
            transport.sendto(data)
        elif addr in self.waiting:
            self.waiting[addr].append(data)
        else:
            self.waiting[addr] = [data]
            asyncio.ensure_future(self.open(addr))

    async def open(self, addr):
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: ToRelay(self.transport, addr, self.stats, self.rng, self.loss),
                remote_addr=self.relay,
            )
        except OSError as error:
            # Out of descriptors, say: this client's packets are dropped; it may try again.
            print(f"cannot open a socket for {addr}: {error}", file=sys.stderr, flush=True)
            del self.waiting[addr]
            return
        self.sockets[addr] = (transport, protocol)
        for data in self.waiting.pop(addr):
            transport.sendto(data)

    def close_idle(self):
        now = time.monotonic()
        for addr, (transport, protocol) in list(self.sockets.items()):
            if now - protocol.last > IDLE_SECONDS:
                transport.close()
                del self.sockets[addr]


async def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    listen, relay, loss = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) == 5 else 7)
    stats = {"down": 0, "dropped": 0}
    loop = asyncio.get_running_loop()
    _, front = await loop.create_datagram_endpoint(
        lambda: FromClients(("127.0.0.1", relay), stats, rng, loss),
        local_addr=("127.0.0.1", listen),
    )
    while True:
        await asyncio.sleep(5)
        front.close_idle()
        print(stats, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
