"""Properties of a search's space (Hypothesis; profiles in conftest.py): any ``search:`` mapping is one UsageError
line or a search, and every value Optuna's samplers draw from it, as the trial trains with it (rounded), lies inside
its declared range, for ranges tiny and huge, of floats, logs and integers; a choice gives only its listed values."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cifarlab.errors import UsageError
from cifarlab.experiments import space

pytestmark = pytest.mark.unit

finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([1e-300, 1e-12, 0.99995, 0.99999, 1.0, 1e300, -1e300]))
integers = st.one_of(st.integers(-10, 10), st.integers(-2**70, 2**70))
numbers = st.one_of(finite, integers)
plain = st.one_of(st.none(), st.booleans(), integers, st.floats(), st.text(max_size=5))
ranges = st.one_of(
    st.tuples(st.sampled_from(["uniform", "log_uniform", "int"]), st.lists(numbers, min_size=2, max_size=2)),
    st.tuples(st.sampled_from(["uniform", "log_uniform"]),
              st.tuples(finite, st.floats(0, 10)).map(lambda t: [t[0], t[0] + abs(t[0]) * t[1] * 1e-12 or 1.0])),
    st.tuples(st.just("choice"), st.lists(plain, min_size=1, max_size=5)),
)
junk = st.one_of(plain, st.lists(plain, max_size=3), st.dictionaries(st.text(max_size=5), plain, max_size=2))


def mapping(kinds: list[tuple[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    return {"space": {f"k{index}": {kind: values} for index, (kind, values) in enumerate(kinds)}, **extra}


@given(st.lists(ranges, min_size=1, max_size=3),
       st.dictionaries(st.sampled_from([*space.KEYS, "other"]), junk, max_size=3))
def test_a_search_section_is_a_search_or_one_line(kinds: list[tuple[str, Any]], extra: dict[str, Any]) -> None:
    try:
        space.read_search(mapping(kinds, {key: value for key, value in extra.items() if key != "space"}), "f")
    except UsageError as error:
        assert len(str(error).splitlines()) == 1, str(error)


def draws(search: space.Search, count: int) -> list[dict[str, Any]]:
    """``count`` trials' settings as the search's sampler draws them (TPE past its random start-up), rounded as the
    trials train with them."""
    study = optuna.create_study(sampler=space.sampler(search), direction=search.direction)
    found = []
    for number in range(count):
        trial = study.ask()
        found.append(space.settings(search, space.suggest(search, trial)))
        study.tell(trial, float(number % 3))
    return found


# Optuna's TPE divides by zero on wide integer ranges inside its own arithmetic; what it samples is still inside.
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
@given(st.lists(ranges, min_size=1, max_size=2), st.sampled_from(space.METHODS), st.integers(0, 2**32))
@example([("uniform", [-1e308, 1e308])], "random", 0)  # found: numpy's OverflowError inside Optuna, a traceback
@example([("int", [0, 10**400])], "random", 0)  # found: math.isfinite's OverflowError while reading the file
@example([("log_uniform", [1e-300, 1.0000000000000625e-300])], "tpe", 0)  # found: Optuna's TPE: NaN, a ValueError
@example([("uniform", [0.0, 1.0]), ("log_uniform", [2377850242137821.0, 2377850242137969.5])], "tpe", 1)  # found:
# exp(log(x)) gave 2377850242137815.0, below the range, and the trial trained with it (now: too narrow a log scale)
@example([("log_uniform", [1e-300, 1e300])], "tpe", 0)
@example([("uniform", [0.99995, 0.99999])], "tpe", 0)
@example([("int", [0, 2**53])], "tpe", 0)
@example([("int", [-9_223_372_036_854_775_809, 0])], "tpe", 0)  # found: a TypeError in Optuna's TPE (numpy's dtype)
@example([("int", [-2**63, -2**63 + 1])], "tpe", 0)  # found: NaN in Optuna's TPE, a ValueError
def test_every_sampled_value_lies_inside_its_range(kinds: list[tuple[str, Any]], method: str, seed: int) -> None:
    try:
        search = space.read_search(mapping(kinds, {"method": method, "seed": seed, "trials": 4}), "f")
    except UsageError:
        return
    for settings in draws(search, 5):
        for param in search.space:
            value = settings[param.key]
            if param.kind == "choice":
                assert repr(value) in {repr(choice) for choice in param.values}
                continue
            low, high = param.values
            assert low <= value <= high and math.isfinite(value), (param, value)
            assert isinstance(value, int) or param.kind != "int", (param, value)


@pytest.mark.parametrize(("low", "high"), [(2377850242137821.0, 2377850242137969.5), (1e-5, 1e-2), (1, 100)])
def test_a_sampled_value_a_few_ulps_outside_its_range_trains_inside_it(low: float, high: float) -> None:
    """Optuna's log scale (exp of a uniform log) can miss the range by a few ulps: the trial trains with the nearest
    value inside (found by the property above: 2377850242137815.0 for [2377850242137821.0, ...])."""
    search = space.Search((space.Param("k", "log_uniform", (low, high)),))
    for outside, end in ((math.nextafter(low, -math.inf), low), (math.nextafter(high, math.inf), high)):
        assert space.settings(search, {"k": outside})["k"] == end
