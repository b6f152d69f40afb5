"""compiler.pipeline: where a tile's vector steps land among the next tile's MATMULs, and the ACC slots."""

from __future__ import annotations

from intvit.compiler.isa import Memory
from intvit.compiler.pipeline import Step, TileSlots, VectorPipe


def run(pipe: VectorPipe, log: list, matmuls: int, beats: int = 100) -> None:
    for _ in range(matmuls):
        log.append(f"mm{sum(name.startswith('mm') for name in log)}")
        pipe.matmul(beats)


def steps(log: list, cycles: list[int], tile: int = 0, drain: int = 10, waits=None) -> list[Step]:
    waits = waits or [0] * len(cycles)
    return [Step(lambda name=f"t{tile}s{i}": log.append(name), c, tile, wait=w, drain=drain if i == 0 else 0)
            for i, (c, w) in enumerate(zip(cycles, waits))]


def test_steps_follow_the_matmul_during_which_they_can_start():
    log: list = []
    pipe = VectorPipe()
    run(pipe, log, 2)                                    # the tile's own MATMULs: array clock 200
    pipe.queue(steps(log, [150, 50, 120]))
    run(pipe, log, 6)
    # The first step reads the tile's rows: it follows the second MATMUL after them (whose start
    # proves them delivered: no drain), starting at 300 as mm3 issues; the second at 450 and the
    # third at 500, both after mm4 (ends at 500); none holds a MATMUL back.
    assert log == ["mm0", "mm1", "mm2", "mm3", "t0s0", "mm4", "t0s1", "t0s2", "mm5", "mm6", "mm7"]


def test_a_step_that_waits_for_a_store_lands_later():
    log: list = []
    pipe = VectorPipe()
    run(pipe, log, 1)
    pipe.queue(steps(log, [50, 300], waits=[0, 250]))
    run(pipe, log, 5)
    # The first step runs 200..250 (behind mm2); the second may start 250 later (500): after mm4.
    assert log == ["mm0", "mm1", "mm2", "t0s0", "mm3", "mm4", "t0s1", "mm5"]


def test_flush_keeps_only_the_latest_tile():
    log: list = []
    pipe = VectorPipe()
    pipe.queue(steps(log, [1000, 1000], tile=0))
    pipe.queue(steps(log, [1000], tile=1))
    pipe.flush(keep=1)
    assert log == ["t0s0", "t0s1"]
    pipe.flush()
    assert log == ["t0s0", "t0s1", "t1s0"]
    # Flushed steps hold the array back: the next MATMUL is estimated after them.
    assert pipe.array >= 2000


def test_slots_keep_loads_off_stored_words():
    slots = TileSlots(acc_words=1024, chunk=64, words=192)
    assert len(slots) == 5 and slots.bases == [0, 192, 384, 576, 768]
    role: dict[int, str] = {}                            # the last role of each slot
    previous: tuple = ()
    for tile in range(24):
        (x, x_keys), (y, y_keys) = slots.take(tile)
        assert x != y and x not in previous and y not in previous
        assert x_keys == tuple((Memory.ACC, c) for c in range(x // 64, (x + 191) // 64 + 1))
        if tile >= 2:
            assert role[y] == "x"                        # loaded only into words no STORE read
            assert role.get(x, "y") == "y"               # the stored slots go to the MATMULs
        role[x], role[y] = "x", "y"
        previous = (x, y)


def test_slots_need_not_all_be_distinct_from_older_tiles():
    slots = TileSlots(acc_words=4 * 64, chunk=64, words=64)
    taken = [slots.take(t) for t in range(6)]
    for t in range(1, 6):
        assert {taken[t][0][0], taken[t][1][0]}.isdisjoint({taken[t - 1][0][0], taken[t - 1][1][0]})
