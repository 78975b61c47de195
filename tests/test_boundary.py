"""The chunk-boundary arithmetic (vs_uav.core.boundary) on hand-worked cases.

The official windows of n frames start every 6 frames, 8 long, the last one shifted back to
end at frame n (vs_uav.core.tiling.temporal_windows); the cases below work them out by hand.
"""

from __future__ import annotations

import dataclasses

import pytest

from vs_uav.core.boundary import ChunkBoundary, chunk_boundary


def fields(b: ChunkBoundary) -> dict:
    return {**dataclasses.asdict(b), "cut": b.cut, "last": b.last, "lookahead": b.lookahead}


def test_first_chunk_with_lookahead():
    # Frames 0..9 of a scene, continued from frame 8: windows of 10 frames [0, 8), [2, 10);
    # nothing before the chunk; frames 8 and 9 are look-ahead.
    assert fields(chunk_boundary(0, 10, end=8)) == dict(
        start=0, stop=10, end=8, anchor=0, context=0, preceding=0, windows=((0, 8), (2, 10)),
        keep=7, keep_final=2, cut=8, last=7, lookahead=2)


def test_continued_chunk():
    # Frames 8..18 after a state holding frames 1..7. One long chunk's windows of 19 frames are
    # [0, 8), [6, 14), [11, 19), [11, 19); those ending after frame 8 reach back to frame 6:
    # 2 context frames (state frames 5 and 6 of 0..6), 5 state frames before them.
    b = chunk_boundary(8, 11, anchor=0, held=7)
    assert fields(b) == dict(
        start=8, stop=19, end=19, anchor=0, context=2, preceding=5, windows=((0, 8), (5, 13), (5, 13)),
        keep=7, keep_final=2, cut=13, last=10, lookahead=0)


def test_continued_chunk_of_a_later_scene():
    # The scene starts at frame 19: frames 27..34 are laid as frames 8..15 of a scene at 0
    # ([0, 8), [6, 14), [8, 16): the last two end after frame 8, reaching back to frame 6).
    b = chunk_boundary(27, 8, anchor=19, held=7)
    assert (b.context, b.preceding, b.windows, b.keep, b.cut) == (2, 5, ((0, 8), (2, 10)), 7, 10)


def test_end_before_the_last_frame():
    # Frames 12..20, continued from frame 17. Windows of 21 frames: [0, 8), [6, 14), [12, 20),
    # [13, 21); from [6, 14) on they end after frame 12: 6 context frames.
    b = chunk_boundary(12, 9, end=17, anchor=0, held=7)
    assert fields(b) == dict(
        start=12, stop=21, end=17, anchor=0, context=6, preceding=1, windows=((0, 8), (6, 14), (7, 15)),
        keep=7, keep_final=2, cut=11, last=4, lookahead=4)


def test_chunk_shorter_than_the_context_it_hands_on():
    # Frames 14..16, continued from frame 15. Windows of 17 frames: [0, 8), [6, 14), [9, 17):
    # only [9, 17) ends after frame 14, so 5 context frames. Before frame 15 the extended frames
    # hold 6 (cut), fewer than the 7 the next chunk needs: the 7th is the state's last
    # preceding frame (2 of them).
    b = chunk_boundary(14, 3, end=15, anchor=0, held=7)
    assert fields(b) == dict(
        start=14, stop=17, end=15, anchor=0, context=5, preceding=2, windows=((0, 8),),
        keep=7, keep_final=2, cut=6, last=0, lookahead=2)
    assert b.keep - b.cut == 1 <= b.preceding


def test_early_in_a_scene_the_context_is_the_whole_scene_so_far():
    # Frames 2..10 after a 2-frame piece: windows of 11 frames [0, 8), [3, 11), both reaching
    # back to the scene's first frame.
    b = chunk_boundary(2, 9, anchor=0, held=2)
    assert (b.context, b.preceding, b.windows, b.keep, b.keep_final, b.cut) == (2, 0, ((0, 8), (3, 11)), 7, 2, 11)


@pytest.mark.parametrize("frames, keep, keep_final", [(3, 3, 2), (1, 1, 1), (12, 7, 2)])
def test_scene_start(frames, keep, keep_final):
    # A scene starting at frame 20: no context, windows laid from frame 20, and what is handed on
    # is bounded by the frames the scene has so far.
    b = chunk_boundary(20, frames)
    windows = ((0, frames),) if frames <= 8 else ((0, 8), (4, 12))
    assert fields(b) == dict(
        start=20, stop=20 + frames, end=20 + frames, anchor=20, context=0, preceding=0, windows=windows,
        keep=keep, keep_final=keep_final, cut=frames, last=frames - 1, lookahead=0)


def test_windows_cover_the_chunk_and_use_all_the_context():
    # Independent of the hand-worked cases: for every chunk of a scene, the windows lie in the
    # extended frames, cover every frame of the chunk, the first one starts at the first
    # context frame, and each is 8 frames long (all of them when the scene so far is shorter).
    for start in range(0, 30):
        for frames in range(1, 20):
            b = chunk_boundary(start, frames, anchor=0, held=7)
            covered = {f for s, e in b.windows for f in range(s, e)}
            assert b.windows[0][0] == 0 and covered >= set(range(b.context, b.context + frames))
            assert max(e for _, e in b.windows) == b.context + frames
            assert all(e - s == min(8, start + frames) for s, e in b.windows)
            assert 0 <= b.context <= 7 and b.preceding == 7 - b.context


@pytest.mark.parametrize("end", [8, 7, 20])
def test_end_outside_the_chunk_is_refused(end):
    with pytest.raises(ValueError, match=rf"^end={end}; accepted: a frame in \[9, 19\]$"):
        chunk_boundary(8, 11, end=end, anchor=0, held=7)


def test_a_state_holding_too_little_context_is_refused():
    with pytest.raises(ValueError, match=r"^state holds 1 context frames; accepted: 2 or more$"):
        chunk_boundary(8, 11, anchor=0, held=1)


def test_it_is_a_value():
    b = chunk_boundary(8, 11, anchor=0, held=7)
    assert b == chunk_boundary(8, 11, anchor=0, held=7) and hash(b) == hash(chunk_boundary(8, 11, anchor=0, held=7))
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.end = 12
