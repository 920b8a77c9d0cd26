"""The per-subscriber allocation: priorities, rounds, caps, pausing, hysteresis."""

from __future__ import annotations

from media.allocator import HEADROOM, PAUSED, RESUME_MARGIN, UP_MARGIN, Demand, allocate

THREE = ((0, 150_000.0), (1, 500_000.0), (2, 1_500_000.0))


def camera(key: str, **kwargs: object) -> Demand:
    return Demand(key=key, kind="video", layers=THREE, **kwargs)  # type: ignore[arg-type]


def audio(key: str, rate: float = 40_000.0) -> Demand:
    return Demand(key=key, kind="audio", layers=((0, rate),))


def budget(bits: float) -> float:
    """The estimate that leaves ``bits`` to share out."""
    return bits / HEADROOM


def test_no_estimate_gives_every_track_its_highest_allowed_layer() -> None:
    got = allocate(None, [camera("a"), camera("b", cap=1), camera("c", cap=PAUSED), audio("x")])
    assert got == {"a": 2, "b": 1, "c": PAUSED}


def test_plenty_gives_everyone_the_top_layer() -> None:
    assert allocate(10_000_000, [camera("a"), camera("b")]) == {"a": 2, "b": 2}


def test_lower_layers_for_everyone_before_higher_for_anyone() -> None:
    # 150 + 150 for the lowest layers, then +350 fits once: the first camera goes up.
    got = allocate(budget(150_000 * 2 + 350_000 * UP_MARGIN), [camera("a"), camera("b")])
    assert got == {"a": 1, "b": 0}
    # Not enough for one more raise: both stay on their lowest layer.
    assert allocate(budget(400_000), [camera("a"), camera("b")]) == {"a": 0, "b": 0}


def test_audio_comes_off_the_estimate_first() -> None:
    # 190 kbit/s: one camera's lowest layer fits only without the audio.
    demands = [camera("a"), audio("x", 50_000)]
    assert allocate(budget(190_000), demands) == {"a": PAUSED}
    assert allocate(budget(190_000), [camera("a")]) == {"a": 0}


def test_screen_shares_before_cameras() -> None:
    screen = Demand(key="s", kind="video", layers=((0, 300_000.0), (1, 1_000_000.0)), screen=True)
    got = allocate(budget(450_000), [camera("a"), screen])
    assert got == {"s": 0, "a": 0}
    got = allocate(budget(400_000), [camera("a"), screen])
    assert got == {"s": 0, "a": PAUSED}  # the camera is paused, not the screen


def test_caps_are_never_exceeded_and_a_hidden_tile_gets_nothing() -> None:
    got = allocate(10_000_000, [camera("a", cap=0), camera("b", cap=PAUSED)])
    assert got == {"a": 0, "b": PAUSED}
    # A cap below every arriving layer: the lowest arriving one rather than nothing.
    upper = Demand(key="u", kind="video", layers=((1, 500_000.0), (2, 1.5e6)), cap=0)
    assert allocate(10_000_000, [upper]) == {"u": 1}


def test_pause_when_the_lowest_layer_does_not_fit_and_resume_with_a_margin() -> None:
    assert allocate(budget(100_000), [camera("a")]) == {"a": PAUSED}
    # Paused: the lowest layer must fit RESUME_MARGIN times over to resume.
    just = budget(150_000 * (RESUME_MARGIN - 0.1))
    assert allocate(just, [camera("a", current=PAUSED)]) == {"a": PAUSED}
    assert allocate(just, [camera("a", current=None)]) == {"a": 0}
    assert allocate(budget(150_000 * RESUME_MARGIN), [camera("a", current=PAUSED)]) == {"a": 0}


def test_hysteresis_keeps_a_layer_that_still_fits_but_needs_a_margin_to_go_up() -> None:
    exactly = budget(500_001)  # the middle layer fits with no margin
    assert allocate(exactly, [camera("a", current=1)]) == {"a": 1}  # kept
    assert allocate(exactly, [camera("a", current=0)]) == {"a": 0}  # not raised
    assert allocate(budget(500_000 * UP_MARGIN), [camera("a", current=0)]) == {"a": 1}


def test_only_arriving_layers_are_given_and_unmeasured_ones_cost_a_default() -> None:
    upper_only = Demand(key="a", kind="video", layers=((2, 1_500_000.0),))
    assert allocate(budget(2_000_000), [upper_only]) == {"a": 2}
    unmeasured = Demand(key="b", kind="video", layers=((0, 0.0), (1, 0.0)))
    assert allocate(budget(100_000), [unmeasured]) == {"b": PAUSED}
    assert allocate(10_000_000, [unmeasured]) == {"b": 1}
    assert allocate(10_000_000, [Demand(key="c", kind="video", layers=())]) == {"c": PAUSED}


def test_a_track_keeping_its_layer_goes_before_one_moving_up_to_it() -> None:
    # Room for one camera on the middle layer: the one that has it keeps it, whatever
    # the order, so two cameras do not swap it at every allocation.
    room = budget(150_000 * 2 + 350_000 * UP_MARGIN)
    assert allocate(room, [camera("a", current=0), camera("b", current=1)]) == {"a": 0, "b": 1}
    assert allocate(room, [camera("a", current=1), camera("b", current=0)]) == {"a": 1, "b": 0}
    # Screens still come first.
    screen = Demand(key="s", kind="video", layers=THREE, screen=True, current=0)
    assert allocate(room, [camera("a", current=1), screen]) == {"a": 0, "s": 1}


def test_a_paused_track_resumes_on_its_lowest_layer_then_climbs() -> None:
    plenty = 10_000_000
    assert allocate(plenty, [camera("a", current=PAUSED)]) == {"a": 0}
    assert allocate(plenty, [camera("a", current=0)]) == {"a": 2}
