import pytest

from lbfl_mpi.batching.dynamic import allocate, apply_deadband


def test_proportional_to_throughput_and_sums_to_global():
    assert allocate([1, 1, 1, 3], 120, 1) == [20, 20, 20, 60]
    b = allocate([3.0, 1.0, 1.0, 1.0], 100, 1)
    assert sum(b) == 100 and b[0] == 50 and sorted(b[1:]) == [16, 17, 17]


def test_minimum_is_respected_and_the_rest_redistributed_proportionally():
    # ideal 1000 * [1, 1, 98] / 100 = [10, 10, 980]; min 50 pins two clients, the third gets the rest
    assert allocate([1, 1, 98], 1000, 50) == [50, 50, 900]


def test_maximum_is_respected_and_the_excess_goes_to_the_others():
    # ideal [500, 250, 250]; client 0 capped at 300, the freed 200 split 1:1 among the others
    assert allocate([2, 1, 1], 1000, 1, [300, None, None]) == [300, 350, 350]
    # a second round: capping client 0 pushes client 1 past its own cap
    assert allocate([4, 2, 1], 700, 1, [200, 260, None]) == [200, 260, 240]


def test_rounding_keeps_the_sum_and_bounds():
    for g in range(12, 60):
        b = allocate([1.3, 2.7, 0.9, 5.1], g, 3, [None, 20, None, None])
        assert sum(b) == g and all(x >= 3 for x in b) and b[1] <= 20


def test_infeasible_requests_are_refused():
    with pytest.raises(ValueError, match="minimum"):
        allocate([1, 1], 5, 3)
    with pytest.raises(ValueError, match="maximum"):
        allocate([1, 1], 50, 1, [10, 10])
    with pytest.raises(ValueError, match="positive"):
        allocate([1, 0], 10, 1)


def test_deadband_stops_small_changes():
    assert apply_deadband([32, 32], [34, 30], 0.1) == [32, 32]
    assert apply_deadband([32, 32], [40, 24], 0.1) == [40, 24]
