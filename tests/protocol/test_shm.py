"""The sans-I/O half of the same-host fast path: names, references, sweep decisions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import SharedMemoryRefused
from corral.protocol.shm import (
    DEFAULT_THRESHOLD,
    HUB,
    LoneHubLinks,
    SegmentRef,
    Settings,
    decode_refs,
    encode_refs,
    large_buffers,
    link_name,
    named_segments,
    parse_link,
    plan_sweep,
    pool_name,
    reader_metadata,
    reader_of,
)

PREFIX = "corral-0123456789abcdef"
OTHER = "corral-fedcba9876543210"
TOKEN = "ab" * 16


def ref_dict(**changes: Any) -> dict[str, Any]:
    ref = {"index": 1, "size": 4096, "writer": 4242, "token": TOKEN, "hold": True}
    ref.update(changes)
    return ref


def test_names_round_trip_for_writer_and_reader_links() -> None:
    writer = link_name(PREFIX, 4242, TOKEN, None)
    reader = link_name(PREFIX, 4242, TOKEN, 77)
    assert writer == f"{PREFIX}-4242-{TOKEN}-w"
    assert reader == f"{PREFIX}-4242-{TOKEN}-r77"
    assert parse_link(writer) == parse_link(writer) is not None
    parsed = parse_link(reader)
    assert parsed is not None and (parsed.writer, parsed.token, parsed.reader) == (4242, TOKEN, 77)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "corral-0123456789abcdef",
        f"{PREFIX}-0-{TOKEN}-w",  # pid 0
        f"{PREFIX}-42-{TOKEN[:-1]}-w",  # short token
        f"{PREFIX}-42-{TOKEN.upper()}-w",
        f"{PREFIX}-42-{TOKEN}-x",
        f"{PREFIX}-42-{TOKEN}-r",
        f"{PREFIX}-42-{TOKEN}-w/../etc",
        f"../{PREFIX}-42-{TOKEN}-w",
        "psm_1234",
    ],
)
def test_foreign_names_do_not_parse(name: str) -> None:
    assert parse_link(name) is None


def test_a_held_reference_names_the_writer_link_for_every_reader() -> None:
    held = SegmentRef(0, 10, 42, TOKEN, hold=True)
    linked = SegmentRef(0, 10, 42, TOKEN, hold=False)
    assert (
        held.name_for(PREFIX, 7) == held.name_for(PREFIX, 8) == link_name(PREFIX, 42, TOKEN, None)
    )
    assert linked.name_for(PREFIX, 7) == link_name(PREFIX, 42, TOKEN, 7)


def test_references_round_trip() -> None:
    refs = [SegmentRef(1, 4096, 4242, TOKEN, True), SegmentRef(3, 5, 9, "cd" * 16, False)]
    assert decode_refs(encode_refs(refs), [10, 0, 7, 0]) == refs


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ([], "non-empty list"),
        ({"index": 1}, "non-empty list"),
        ([ref_dict(extra=1)], "malformed"),
        ([{k: v for k, v in ref_dict().items() if k != "hold"}], "malformed"),
        ([ref_dict(index=5)], "no such slot"),
        ([ref_dict(index=-1)], "no such slot"),
        ([ref_dict(index=True)], "no such slot"),
        ([ref_dict(), ref_dict()], "no such slot"),
        ([ref_dict(index=0)], "both sent and referenced"),
        ([ref_dict(size=0)], "size"),
        ([ref_dict(size=2**41)], "size"),
        ([ref_dict(size="10")], "size"),
        ([ref_dict(writer=0)], "writer"),
        ([ref_dict(writer=2**40)], "writer"),
        ([ref_dict(token="../../etc/passwd")], "token"),
        ([ref_dict(token=TOKEN.upper())], "token"),
        ([ref_dict(hold=1)], "hold"),
    ],
)
def test_malformed_references_are_refused(value: object, why: str) -> None:
    with pytest.raises(SharedMemoryRefused, match=why):
        decode_refs(value, [3, 0])


@given(
    st.recursive(
        st.none() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_garbage_is_refused_cleanly(value: object) -> None:
    try:
        refs = decode_refs(value, [0, 0, 0])
    except SharedMemoryRefused:
        return
    assert all(isinstance(ref, SegmentRef) for ref in refs)


def test_large_buffers_are_those_at_or_above_the_threshold() -> None:
    assert large_buffers([100, 1000, 999, 5000], 1000) == [1, 3]
    assert large_buffers([100, 10], DEFAULT_THRESHOLD) == []


def test_settings_from_json() -> None:
    settings = Settings(PREFIX, "host", 5000)
    assert Settings.from_json(settings.to_json()) == settings
    assert Settings.from_json(None) is None
    assert Settings.from_json({"prefix": PREFIX}) is None
    assert Settings.from_json({**settings.to_json(), "threshold": 0}) is None
    assert Settings.from_json({**settings.to_json(), "prefix": "/tmp/x"}) is None
    assert Settings.from_json({**settings.to_json(), "threshold": "1"}) is None


def test_reader_metadata_round_trips_and_garbage_means_no_reader() -> None:
    assert reader_of(reader_metadata("h", 12)) == ("h", 12)
    assert reader_of({}) is None
    assert reader_of({"shm_reader": {"host": "h", "pid": -1}}) is None
    assert reader_of({"shm_reader": {"host": 3, "pid": 1}}) is None
    assert reader_of({"shm_reader": "h:1"}) is None


def test_the_hub_link_is_named_for_no_pid() -> None:
    name = link_name(PREFIX, 42, TOKEN, HUB)
    assert name.endswith("-h")
    parsed = parse_link(name)
    assert parsed is not None and parsed.reader == HUB
    assert plan_sweep(PREFIX, [name], lambda pid: pid != HUB) == [name]
    assert plan_sweep(PREFIX, [name], lambda pid: True) == []


def test_sweep_removes_what_only_dead_processes_could_read() -> None:
    alive = {1, 2}
    names = [
        link_name(PREFIX, 1, "a" * 32, None),  # live writer, held: kept
        link_name(PREFIX, 3, "b" * 32, None),  # dead writer, held: gone
        link_name(PREFIX, 3, "c" * 32, None),  # dead writer, not handed off: every link goes
        link_name(PREFIX, 3, "c" * 32, 1),
        link_name(PREFIX, 3, "d" * 32, 2),  # dead writer, handed off, live reader: kept
        link_name(PREFIX, 1, "e" * 32, 4),  # dead reader: its link goes
        link_name(PREFIX, 1, "e" * 32, 2),
        link_name(OTHER, 3, "f" * 32, None),  # another cluster: never touched
        "unrelated-file",
    ]
    asked: list[int] = []

    def is_alive(pid: int) -> bool:
        asked.append(pid)
        return pid in alive

    doomed = plan_sweep(PREFIX, names, is_alive)
    assert sorted(doomed) == sorted([names[1], names[2], names[3], names[5]])
    assert len(asked) == len(set(asked)), "each pid is checked once"


def test_named_segments_reads_writer_and_token_of_well_formed_references_only() -> None:
    """What a reader that will not read a message may unlink: names of well-formed references,
    whatever the buffers (a copy may come without them); anything else is skipped."""
    good = ref_dict(index=7, writer=42, token=TOKEN)
    other = ref_dict(writer=43, token="cd" * 16)
    assert named_segments([good, other]) == [(42, TOKEN), (43, "cd" * 16)]
    bad = [
        "x",
        ref_dict(writer=0),
        ref_dict(writer=True),
        ref_dict(writer="42"),
        ref_dict(token="../etc"),
        ref_dict(token=TOKEN.upper() + "zz"),
    ]
    assert named_segments([*bad, good]) == [(42, TOKEN)]
    assert named_segments(None) == [] and named_segments({"writer": 42}) == []


def test_a_hub_link_alone_and_unmapped_for_the_grace_is_due() -> None:
    """A Hub link that is the last name of its segment (the writer gave it up, no other
    reader links it) is removed once it stayed so ``grace`` seconds and unmapped; one with
    another name beside it, or that the Hub maps, never is."""
    lone = link_name(PREFIX, 4242, "a" * 32, HUB)
    with_writer = [link_name(PREFIX, 4243, "b" * 32, HUB), pool_name(PREFIX, 4243, "b" * 32)]
    with_reader = [link_name(PREFIX, 4244, "c" * 32, HUB), link_name(PREFIX, 4244, "c" * 32, 77)]
    mapped = link_name(PREFIX, 4245, "d" * 32, HUB)
    other_cluster = link_name("corral-" + "f" * 16, 4246, "e" * 32, HUB)
    names = [lone, *with_writer, *with_reader, mapped, other_cluster]
    links = LoneHubLinks(grace=60.0)
    assert links.due(PREFIX, names, {mapped}, now=100.0) == []
    assert links.due(PREFIX, names, {mapped}, now=159.0) == []
    assert links.due(PREFIX, names, {mapped}, now=160.0) == [lone]
    # the one mapped until now is unmapped: its grace starts only now
    assert links.due(PREFIX, names, set(), now=219.0) == [lone]


def test_a_zero_lone_hub_link_grace_is_due_at_once_and_a_negative_one_is_refused() -> None:
    """Zero (a test's setting) still spares a link with company or mapped; no duration is
    refused when made, not at the first sweep."""
    lone = link_name(PREFIX, 4242, "a" * 32, HUB)
    mapped = link_name(PREFIX, 4243, "b" * 32, HUB)
    links = LoneHubLinks(grace=0.0)
    assert links.due(PREFIX, [lone, mapped], {mapped}, now=5.0) == [lone]
    for grace in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="0 or more seconds"):
            LoneHubLinks(grace=grace)


def test_a_hub_link_that_gets_company_again_starts_its_grace_anew() -> None:
    lone = link_name(PREFIX, 4242, "a" * 32, HUB)
    reader = link_name(PREFIX, 4242, "a" * 32, 77)
    links = LoneHubLinks(grace=60.0)
    assert links.due(PREFIX, [lone], set(), now=0.0) == []
    assert links.due(PREFIX, [lone, reader], set(), now=30.0) == []  # an engine maps it now
    assert links.due(PREFIX, [lone], set(), now=70.0) == []
    assert links.due(PREFIX, [lone], set(), now=130.0) == [lone]
