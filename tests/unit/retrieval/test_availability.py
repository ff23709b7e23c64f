"""The pure parts of `aisle index push-availability`: reading the updates, finding every replica, batching."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.availability import (
    MAX_REPORTED_ERRORS,
    InvalidUpdates,
    Replica,
    batches,
    push_availability,
    read_updates,
    resolve_replicas,
    split_target,
)


def test_lines_become_updates_with_the_protos_field_names():
    text = [
        '{"item_id": "I1", "stock": 0}\n',
        "\n",  # blank lines are skipped
        '{"item_id": "I2", "stock": 7, "set_regions": true, "sold_in_regions": ["GB", "DE"]}\n',
        '  {"item_id": "I3", "stock": -1, "set_regions": true, "sold_in_regions": []}  \n',  # sold nowhere
        '{"item_id": "I4", "stock": 2, "set_regions": false}',
    ]
    assert read_updates(text) == [
        pb.AvailabilityUpdate(item_id="I1", stock=0),
        pb.AvailabilityUpdate(item_id="I2", stock=7, set_regions=True, sold_in_regions=["GB", "DE"]),
        pb.AvailabilityUpdate(item_id="I3", stock=-1, set_regions=True),
        pb.AvailabilityUpdate(item_id="I4", stock=2),
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", "line 1: not a JSON object"),
        ('["I1", 0]', "line 1: not a JSON object"),
        ('{"stock": 0}', "line 1: item_id: required"),
        ('{"item_id": "", "stock": 0}', "line 1: item_id: must not be empty"),
        ('{"item_id": 12, "stock": 0}', "line 1: item_id: must be a string"),
        ('{"item_id": "' + "x" * 257 + '", "stock": 0}', "line 1: item_id: must be at most 256 characters"),
        ('{"item_id": "a\\tb", "stock": 0}', "line 1: item_id: must contain printable characters only"),
        ('{"item_id": "I1"}', "line 1: stock: required"),
        ('{"item_id": "I1", "stock": "3"}', "line 1: stock: must be an integer"),
        ('{"item_id": "I1", "stock": 2.5}', "line 1: stock: must be an integer"),
        ('{"item_id": "I1", "stock": true}', "line 1: stock: must be an integer"),
        ('{"item_id": "I1", "stock": 9223372036854775808}', "line 1: stock: out of range"),
        ('{"item_id": "I1", "stock": 1, "set_regions": "yes"}', "line 1: set_regions: must be true or false"),
        ('{"item_id": "I1", "stock": 1, "set_regions": true}', "line 1: sold_in_regions: required"),
        ('{"item_id": "I1", "stock": 1, "sold_in_regions": ["GB"]}', "line 1: set_regions: must be true"),
        (
            '{"item_id": "I1", "stock": 1, "set_regions": true, "sold_in_regions": "GB"}',
            "line 1: sold_in_regions: must be a list of region names",
        ),
        (
            '{"item_id": "I1", "stock": 1, "set_regions": true, "sold_in_regions": ["GB", ""]}',
            "line 1: sold_in_regions[1]: must be a non-empty string",
        ),
        ('{"item_id": "I1", "stok": 1}', "line 1: stok: unknown field"),
    ],
)
def test_a_bad_line_is_named_with_its_field(line, error):
    with pytest.raises(InvalidUpdates) as failure:
        read_updates([line])
    [message] = failure.value.errors
    assert message.startswith(error), message


def test_every_bad_line_is_reported_up_to_a_limit_and_then_counted():
    good = json.dumps({"item_id": "I1", "stock": 1})
    text = [good, '{"item_id": "I2"}', good] + ['{"stock": 1}'] * (MAX_REPORTED_ERRORS + 5)
    with pytest.raises(InvalidUpdates) as failure:
        read_updates(text)
    assert failure.value.errors[0].startswith("line 2: stock: required")
    assert failure.value.errors[1] == "line 4: item_id: required"
    assert len(failure.value.errors) == MAX_REPORTED_ERRORS and failure.value.total == MAX_REPORTED_ERRORS + 6
    assert str(failure.value).splitlines()[-1] == "... and 6 more bad lines"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("retrieval:50061", ("retrieval", 50061)),
        ("retrieval.aisle.svc.cluster.local:50061", ("retrieval.aisle.svc.cluster.local", 50061)),
        ("dns:///retrieval:50061", ("retrieval", 50061)),  # as the services' targets are written
        ("10.0.0.7:50061", ("10.0.0.7", 50061)),
        ("[fd00::7]:50061", ("fd00::7", 50061)),
    ],
)
def test_targets_are_host_and_port(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["retrieval", "retrieval:", ":50061", "retrieval:grpc", "retrieval:70000", "::1"])
def test_a_target_without_a_usable_port_is_refused(target):
    with pytest.raises(ValueError, match="host:port"):
        split_target(target)


def addrinfo(*addresses: str, port: int = 50061):
    """What socket.getaddrinfo answers for ``addresses`` (one entry per socket type, as it does)."""
    rows = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            rows.append((family, kind, 0, "", sockaddr))
    return rows


def test_a_name_resolves_to_every_replica_once():
    answers = {
        "retrieval": addrinfo("10.0.0.7", "10.0.0.8", "10.0.0.7"),
        "10.0.0.8": addrinfo("10.0.0.8"),  # named again explicitly
        "fd00::9": addrinfo("fd00::9"),
    }
    seen = []

    def getaddrinfo(host, port, family=0, type=0):
        seen.append((host, port, family, type))
        return answers[host]

    resolution = resolve_replicas(["retrieval:50061", "10.0.0.8:50061", "[fd00::9]:50061"], getaddrinfo=getaddrinfo)
    assert resolution.replicas == [
        Replica("10.0.0.7:50061", "retrieval:50061"),
        Replica("10.0.0.8:50061", "retrieval:50061"),
        Replica("[fd00::9]:50061", "[fd00::9]:50061"),
    ]
    assert resolution.failures == []
    assert seen[0] == ("retrieval", 50061, socket.AF_UNSPEC, socket.SOCK_STREAM)


def test_one_family_only_and_names_that_do_not_resolve_are_failures():
    def getaddrinfo(host, port, family=0, type=0):
        if host == "nowhere":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        rows = addrinfo("10.0.0.7", "fd00::7")
        return [row for row in rows if family in (socket.AF_UNSPEC, row[0])]

    resolution = resolve_replicas(["retrieval:50061", "nowhere:50061"], family="ipv4", getaddrinfo=getaddrinfo)
    assert resolution.replicas == [Replica("10.0.0.7:50061", "retrieval:50061")]
    assert resolution.failures == [("nowhere:50061", "cannot resolve: Name or service not known")]


def test_batches_hold_at_most_the_count_and_bytes_given_in_order():
    updates = [pb.AvailabilityUpdate(item_id=f"I{i:05d}", stock=i + 1) for i in range(25)]  # one size each
    by_count = batches(updates, size=10)
    assert [len(b.updates) for b in by_count] == [10, 10, 5]
    assert [u for b in by_count for u in b.updates] == updates
    one_size = updates[0].ByteSize() + 2  # each update's bytes on the wire, framed as a repeated field
    by_bytes = batches(updates, size=10, max_bytes=3 * one_size)
    assert [len(b.updates) for b in by_bytes] == [3] * 8 + [1]
    assert all(b.ByteSize() <= 3 * one_size for b in by_bytes)
    assert batches([], size=10) == []


def test_the_command_refuses_a_batch_larger_than_a_server_accepts_and_a_target_without_a_port(tmp_path):
    updates = tmp_path / "updates.jsonl"
    updates.write_text('{"item_id": "I1", "stock": 0}\n')
    runner = CliRunner()
    too_big = runner.invoke(push_availability, [str(updates), "--target", "127.0.0.1:1", "--batch-size", "10001"])
    assert too_big.exit_code == 2 and "at most 10000" in too_big.output
    no_port = runner.invoke(push_availability, [str(updates), "--target", "retrieval"])
    assert no_port.exit_code == 2 and "expected host:port" in no_port.output


def test_an_empty_input_sends_nothing(tmp_path):
    updates = tmp_path / "updates.jsonl"
    updates.write_text("\n")
    result = CliRunner().invoke(push_availability, [str(updates), "--target", "127.0.0.1:1"])
    assert result.exit_code == 0 and "nothing to send" in result.output
