"""Replica bookkeeping without a server: outages, probes, positions and lag.

The health record counts outages, not failed threads; hands out one probe at a
time; and the lag it keeps comes from replication positions, which an idle
primary cannot fake. A fake clock drives every test.
"""

from __future__ import annotations

import json

import pytest

from multipool.health import DOWN, LAGGING, PROBE, UP, ReplicaHealth
from multipool.routing.positions import GtidPosition, Lsn, parse, reached
from multipool.routing.progress import PrimaryProgress
from multipool.routing.replicas import starting_up


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> ReplicaHealth:
    return ReplicaHealth(clock=clock)


# -- outages --------------------------------------------------------------------------


def test_failures_that_arrive_together_count_once(tracker: ReplicaHealth) -> None:
    """Eight threads reading from a replica that stops: one outage, the first back-off."""
    delays = [tracker.mark_down("r", OSError("refused"), backoff=1, backoff_max=5)
              for _ in range(8)]
    assert delays[0] == 1
    assert all(0 < delay <= 1 for delay in delays)
    status = tracker.status("r")["r"]
    assert (status.state, status.failures, status.down_for) == (DOWN, 1, 1.0)


def test_only_failed_probes_lengthen_the_back_off(tracker: ReplicaHealth, clock: Clock) -> None:
    tracker.mark_down("r", OSError("x"), backoff=1, backoff_max=5)
    delays = []
    for _ in range(5):
        clock.now += 10
        assert tracker.check("r") == PROBE
        assert tracker.check("r") == DOWN  # one probe at a time
        tracker.mark_down("r", OSError("x"), backoff=1, backoff_max=5)  # a request: no change
        delays.append(tracker.mark_down("r", OSError("x"), backoff=1, backoff_max=5, probe=True))
    assert delays == [2, 4, 5, 5, 5]
    clock.now += 5
    assert tracker.check("r") == PROBE
    tracker.mark_up("r")
    assert tracker.check("r") == UP and tracker.status("r")["r"].failures == 0


def test_a_replica_starting_up_keeps_the_first_back_off(
    tracker: ReplicaHealth, clock: Clock
) -> None:
    tracker.mark_down("r", OSError("x"), backoff=1, backoff_max=5)
    for _ in range(4):
        clock.now += 1
        assert tracker.check("r") == PROBE
        delay = tracker.mark_down(
            "r", "OperationalError", backoff=1, backoff_max=5, probe=True, transient=True
        )
        assert delay == 1


def test_a_probe_never_reported_is_handed_out_again(tracker: ReplicaHealth, clock: Clock) -> None:
    tracker.mark_down("r", "OperationalError", backoff=1, backoff_max=1)
    clock.now += 1
    assert tracker.check("r", probe_grace=30) == PROBE
    clock.now += 29
    assert tracker.check("r", probe_grace=30) == DOWN
    clock.now += 2
    assert tracker.check("r", probe_grace=30) == PROBE
    tracker.release_probe("r")
    assert tracker.check("r", probe_grace=30) == PROBE


def test_a_forked_child_does_not_wait_for_the_parents_probe(
    tracker: ReplicaHealth, clock: Clock
) -> None:
    tracker.mark_down("r", "OperationalError", backoff=1, backoff_max=1)
    clock.now += 1
    assert tracker.check("r") == PROBE  # the parent's probe thread does not exist in a child
    tracker._after_fork_in_child()
    assert tracker.check("r") == PROBE


@pytest.mark.parametrize(
    "message, transient",
    [
        ("FATAL:  the database system is starting up", True),
        ("FATAL:  the database system is not yet accepting connections", True),
        ("connection refused", False),
        ("password authentication failed", False),
    ],
)
def test_starting_up_is_told_apart(message: str, transient: bool) -> None:
    wrapped = RuntimeError("database alias 'replica1' ...")
    wrapped.__cause__ = OSError(message)
    assert starting_up(wrapped) is transient


# -- positions ------------------------------------------------------------------------


def test_wal_positions_compare_as_numbers() -> None:
    assert Lsn.parse("0/16B3748") < Lsn.parse("0/16B3750") < Lsn.parse("1/0")
    assert str(Lsn.parse("16/b374d848")) == "16/B374D848"
    assert reached(Lsn.parse("1/10"), Lsn.parse("1/10"))
    assert not reached(Lsn.parse("1/F"), Lsn.parse("1/10"))
    assert reached(None, None) and not reached(None, Lsn.parse("0/1"))
    assert reached(Lsn.parse("0/1"), None)


def test_gtid_positions_compare_domain_by_domain() -> None:
    replica = GtidPosition.parse("0-1-100,1-2-7")
    assert reached(replica, GtidPosition.parse("0-1-100"))
    assert reached(replica, GtidPosition.parse("0-3-99,1-2-7"))  # server ids do not matter
    assert not reached(replica, GtidPosition.parse("0-1-101"))
    assert not reached(replica, GtidPosition.parse("2-1-1"))  # a domain it has not seen
    assert reached(replica, GtidPosition.parse(""))  # nothing written yet
    assert str(GtidPosition.parse(" 1-2-7 , 0-1-100 ")) == "0-1-100,1-2-7"
    assert not reached(replica, Lsn.parse("0/1"))  # another vendor's position


@pytest.mark.parametrize(
    "text", ["0/XYZ", "1/2/3", "0-1", "0-1-2-3", "a-b-c", "0-1-2;DROP", "9" * 30 + "-1-1"]
)
def test_malformed_positions_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_positions_round_trip_through_their_text() -> None:
    for text in ("0/16B3748", "AB/CD", "0-1-100,1-2-7"):
        assert str(parse(text)) == text


def test_the_position_of_a_replica_is_read_once_per_interval(
    tracker: ReplicaHealth, clock: Clock
) -> None:
    assert tracker.position("r") == (None, float("inf"))
    assert tracker.position_due("r", 0.25) and not tracker.position_due("r", 0.25)
    tracker.record_position("r", Lsn.parse("0/10"))
    clock.now += 0.1
    assert tracker.position("r") == (Lsn.parse("0/10"), pytest.approx(0.1))
    assert not tracker.position_due("r", 0.25)
    clock.now += 0.2
    assert tracker.position_due("r", 0.25)


# -- lag from positions ---------------------------------------------------------------


def test_an_idle_primary_cannot_fake_lag(clock: Clock) -> None:
    """Nothing written for an hour: a replica at the primary's position has no lag."""
    progress = PrimaryProgress(clock=clock)
    progress.record("p", Lsn.parse("0/500"))
    clock.now += 3600
    progress.record("p", Lsn.parse("0/500"))
    assert progress.lag("p", Lsn.parse("0/500")) == 0.0


def test_lag_is_the_time_since_the_first_sample_the_replica_misses(clock: Clock) -> None:
    progress = PrimaryProgress(clock=clock)
    for step, lsn in enumerate(("0/100", "0/200", "0/300", "0/400")):
        clock.now = 100.0 + 5 * step
        progress.record("p", Lsn.parse(lsn))
    clock.now = 116.0
    assert progress.lag("p", Lsn.parse("0/400")) == 0.0
    assert progress.lag("p", Lsn.parse("0/250")) == pytest.approx(6.0)  # misses 0/300 (t=110)
    assert progress.lag("p", Lsn.parse("0/50")) == pytest.approx(16.0)  # behind every sample
    assert progress.lag("p", None) is None
    assert progress.lag("other", Lsn.parse("0/1")) is None


def test_the_primary_is_sampled_once_per_interval(clock: Clock) -> None:
    progress = PrimaryProgress(clock=clock)
    assert progress.sample_due("p", 5) and not progress.sample_due("p", 5)
    clock.now += 5
    assert progress.sample_due("p", 5)


def test_status_is_json_ready(tracker: ReplicaHealth, clock: Clock) -> None:
    tracker.record_position("r", GtidPosition.parse("0-1-9"))
    tracker.record_lag("r", 12.0, 10.0)
    status = tracker.status()["r"]
    assert status.state == LAGGING
    as_dict = json.loads(json.dumps(tracker.as_dict()))
    assert as_dict["r"] == status.as_dict()
    assert as_dict["r"]["position"] == "0-1-9" and as_dict["r"]["lag"] == 12.0


def test_the_primarys_position_steps_back_over_a_page_header() -> None:
    """After a record that ends on a page boundary, the insert position is past the
    next page's header; the replica's replay position stops at the boundary."""
    from multipool.routing.positions import _end_of_inserted_wal

    block, segment = 8192, 16 * 1024 * 1024
    assert _end_of_inserted_wal(Lsn(3 * block + 24), block, segment) == Lsn(3 * block)
    assert _end_of_inserted_wal(Lsn(segment + 40), block, segment) == Lsn(segment)
    assert _end_of_inserted_wal(Lsn(3 * block + 100), block, segment) == Lsn(3 * block + 100)
