"""rspnet.ops.timing, the one clock, against a fake one: calls whose cost is
set (the clock advances by it) are counted, and the per-call times, median,
best-of and latency summaries are checked against arithmetic done here; no
real timing is asserted as a number."""
import statistics

import pytest
import torch

from rspnet.ops import timing


class FakeClock:
    """``timing``'s perf_counter (seconds): advanced only by ``cost(ms)``."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def cost(self, ms: float) -> None:
        self.now += ms / 1000


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "perf_counter", c)
    return c


def _run(clock, costs):
    """A call costing ``costs[i]`` ms the i-th time; ``run.calls`` counts."""
    def run():
        clock.cost(costs[run.calls])
        run.calls += 1
    run.calls = 0
    return run


def test_call_times_single_and_batched(clock):
    run = _run(clock, [1, 2, 3, 4, 6, 10])
    assert timing.call_times(run, 2) == pytest.approx([1, 2])
    assert timing.call_times(run, 2, batch=2) == pytest.approx([(3 + 4) / 2, (6 + 10) / 2])
    assert run.calls == 6


def test_median_leaves_the_warmup_out(clock):
    run = _run(clock, [500, 400, 3, 1, 2, 9, 7])
    assert timing.median_ms(run, repeats=5, warmup=2) == pytest.approx(statistics.median([3, 1, 2, 9, 7]))
    assert run.calls == 7


def test_best_is_the_fastest_batch_after_one_warmup(clock):
    run = _run(clock, [1000, 4, 6, 1, 3, 8, 8])
    # one warm-up call, then three batches of two: means 5, 2, 8
    assert timing.best_ms(run, batch=2, repeats=3) == pytest.approx(2)
    assert run.calls == 7


class LayoutCost(torch.nn.Module):
    """A 'network' whose forward costs ``costs[layout]`` ms on the fake clock,
    by its input's layout; it counts its calls per layout."""

    def __init__(self, clock, costs):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)   # a 4-d weight: the module has a layout to convert
        self.clock, self.costs, self.calls = clock, costs, {"contiguous": 0, "channels_last": 0}

    def forward(self, x):
        layout = "contiguous" if x.is_contiguous() else "channels_last"
        self.calls[layout] += 1
        self.clock.cost(self.costs[layout](self.calls[layout]))
        return x


@pytest.mark.parametrize("cheaper", ["contiguous", "channels_last"])
def test_auto_layout_times_the_one_whose_warmup_was_faster(clock, cheaper):
    other = "channels_last" if cheaper == "contiguous" else "contiguous"
    costs = {cheaper: lambda i: 2.0, other: lambda i: 5.0}
    net = LayoutCost(clock, costs)
    r = timing.measure_latency(net, (8, 8), torch.device("cpu"), warmup=3, iters=4)
    assert r["memory_format"] == cheaper
    assert r["warmup_median_ms"] == pytest.approx({cheaper: 2.0, other: 5.0})
    # each layout's 3 warm-up runs, then one run to re-warm the chosen one, then 4 timed
    assert net.calls == {cheaper: 3 + 1 + 4, other: 3}


def test_forced_layout_summaries(clock):
    """A forced layout: ``warmup`` runs, then ``iters`` timed ones whose
    median, p20, p80 and FPS are computed here from the set costs."""
    timed = [9.0, 1.0, 4.0, 7.0, 3.0]
    costs = {"channels_last": lambda i: 100.0 if i <= 2 else timed[i - 3], "contiguous": lambda i: 1e6}
    net = LayoutCost(clock, costs)
    r = timing.measure_latency(net, (8, 8), torch.device("cpu"), warmup=2, iters=5, memory_format="channels_last")
    s = sorted(timed)
    assert r["memory_format"] == "channels_last" and "warmup_median_ms" not in r
    assert r["median_ms"] == pytest.approx(statistics.median(timed))
    assert (r["p20_ms"], r["p80_ms"]) == (pytest.approx(s[1]), pytest.approx(s[4]))
    assert r["fps"] == pytest.approx(1000 / statistics.median(timed))
    assert net.calls == {"channels_last": 7, "contiguous": 0}


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="memory_format: one of auto, contiguous, channels_last"):
        timing.measure_latency(torch.nn.Identity(), (8, 8), torch.device("cpu"), memory_format="nhwc")


def test_device_name_keeps_the_latency_cache_format():
    """``cpu:<model>:threads=<n>``: the key existing latency caches hold."""
    name = timing.device_name(torch.device("cpu"))
    model = name[len("cpu:"):name.rindex(":threads=")]
    assert name == f"cpu:{model}:threads={torch.get_num_threads()}" and model


@pytest.mark.gpu
def test_cuda_events_time_the_calls():
    x = torch.randn(1024, 1024, device="cuda")
    times = timing.call_times(lambda: x @ x, 3, cuda=True, batch=2)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert timing.best_ms(lambda: x @ x, cuda=True) > 0
    assert timing.device_name(torch.device("cuda")) == f"cuda:{torch.cuda.get_device_name()}"
