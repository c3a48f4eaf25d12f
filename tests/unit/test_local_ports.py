"""Where a local hub's ports come from: below the kernel's ephemeral range, so no outgoing
connection on the machine can be handed one between choosing it and the hub binding it."""

from __future__ import annotations

import socket

import pytest

from tasks.local_hub import EPHEMERAL_RANGE, LocalHubError, _free_ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(20):
        ports = _free_ports(3)
        assert len(set(ports)) == 3
        assert all(1024 <= p < low for p in ports), (ports, low)
        for port in ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))  # free: binding it works


def test_a_port_in_use_is_never_chosen() -> None:
    [free] = _free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalHubError, match=rf"no 1 free loopback ports found in {port}-"):
            _free_ports(1, range(port, port + 1))
        assert _free_ports(1, range(free, free + 1)) == [free]
