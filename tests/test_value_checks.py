"""xlstm_jax._validation: the shared value checks and their one message format."""

from __future__ import annotations

import math

import pytest

from xlstm_jax._validation import check_bool, check_choice, check_int, check_known_keys, check_number


@pytest.mark.parametrize("value", [True, 1.5, "3", None, -1, 11])
def test_check_int_refuses(value):
    with pytest.raises(ValueError, match=r"^train\.steps must be an integer >= 0 and <= 10, got "):
        check_int("train.steps", value, 0, 10)


def test_check_int_accepts_and_optional():
    check_int("n", 0, 0, 10)
    check_int("n", None, 1, optional=True)
    with pytest.raises(ValueError, match="must be an integer >= 1 or None, got 0"):
        check_int("n", 0, 1, optional=True)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, "1e-3", 0.0])
def test_check_number_refuses_non_finite_and_out_of_range(value):
    with pytest.raises(ValueError, match=r"^optim\.lr must be a finite number > 0, got "):
        check_number("optim.lr", value, 0, low_open=True)


def test_check_number_inf_only_when_allowed():
    check_number("cap", math.inf, 0, low_open=True, allow_inf=True)
    with pytest.raises(ValueError, match="cap must be a number > 0, got nan"):
        check_number("cap", math.nan, 0, low_open=True, allow_inf=True)
    check_number("x", 3, 0, 5)
    check_number("x", None, optional=True)


def test_check_number_open_upper_bound():
    check_number("fraction", 0.999, 0.0, 1.0, high_open=True)
    with pytest.raises(ValueError, match=r"fraction must be a finite number >= 0.0 and < 1.0, got 1.0"):
        check_number("fraction", 1.0, 0.0, 1.0, high_open=True)


def test_check_bool_choice_keys_and_error_type():
    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match="remat must be True or False, got 1"):
        check_bool("remat", 1, error=MyError)
    with pytest.raises(ValueError, match="schedule must be one of 'cosine', 'linear', got 'exp'"):
        check_choice("schedule", "exp", ("cosine", "linear"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) optim\.lrr; known: b1, lr"):
        check_known_keys("optim", {"lrr": 1, "lr": 2}, ["lr", "b1"])
