"""args_fast.validation: the number and id checks every layer uses, on their own."""
import math

import numpy
import pytest
import torch

from args_fast.validation import W_LIMIT, as_float, as_int, scalar, token_ids


@pytest.mark.parametrize("value", [3, numpy.int64(3), torch.tensor(3), torch.tensor([3]), numpy.array(3)])
def test_as_int_takes_every_integer_form(value):
    assert as_int("k", value, 1, 10) == 3 and type(as_int("k", value, 1, 10)) is int


@pytest.mark.parametrize("value, why", [(0, "got 0"), (11, "got 11"), (2.0, "got 2.0"), (True, "got True"),
                                        (numpy.bool_(True), "True"), ("3", "got '3'"), (None, "got None"),
                                        (torch.tensor([1, 2]), "got tensor")])
def test_as_int_names_the_argument_and_the_range(value, why):
    with pytest.raises(ValueError, match=r"^k must be an int \[1, 10\], ") as err:
        as_int("k", value, 1, 10)
    assert why in str(err.value)


def test_as_int_without_an_upper_bound():
    assert as_int("n", 10**12, 0) == 10**12
    with pytest.raises(ValueError, match=r"n must be an int >= 0, got -1"):
        as_int("n", -1, 0)


@pytest.mark.parametrize("value", [0.5, numpy.float32(0.5), torch.tensor(0.5), 1, numpy.int8(1)])
def test_as_float_takes_every_number_form(value):
    assert as_float("w", value, -1, 1) == float(scalar(value))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2.0, -2.0, True, "0.5", None, [0.5]])
def test_as_float_refuses_what_is_not_a_finite_number_in_range(value):
    with pytest.raises(ValueError, match=r"^w must be a (finite )?number in \[-1, 1\]"):
        as_float("w", value, -1, 1)


def test_as_float_open_low():
    assert as_float("std", 1e-30, 0.0, 1.0, open_low=True) == 1e-30
    with pytest.raises(ValueError, match=r"std must be a finite number in \(0, 1\], got 0.0"):
        as_float("std", 0.0, 0.0, 1.0, open_low=True)


def test_w_limit_keeps_float32_scores_finite():
    # |logit|, |reward| up to 1e8 with |w| <= W_LIMIT: logit + w * reward is finite in float32 only up to
    # about 3.4e38; the limit is documented as keeping the product of the bounds finite
    assert numpy.isfinite(numpy.float32(W_LIMIT) * numpy.float32(1e8))


@pytest.mark.parametrize("value, want", [(5, [5]), ([1, 2], [1, 2]), ((3,), [3]), (torch.tensor([4, 0]), [4, 0]),
                                         (numpy.array([7]), [7]), ([], [])])
def test_token_ids(value, want):
    assert token_ids("eos_token_id", value, 8) == want


@pytest.mark.parametrize("value", [8, -1, [1, 8], [1.5]])
def test_token_ids_outside_the_vocabulary(value):
    with pytest.raises(ValueError, match=r"eos_token_id must be an int \[0, 7\]"):
        token_ids("eos_token_id", value, 8)
